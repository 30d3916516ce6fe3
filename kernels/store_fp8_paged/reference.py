"""store_fp8_paged: quantize KV rows to FP8 and store them into DSV4's paged cache (spec 4.3, F5/F6).

For every ``i`` with ``loc[i] >= 0`` (negative slots are padding and are skipped), slot
``loc[i]`` = page ``loc // page_size``, row ``loc % page_size`` of ``cache uint8 [num_pages,
bytes_per_page]`` receives ``k_nope[i]`` as 448 e4m3 bytes (tiles of 64, ue8m0 scales, the rule of
``kernels/_fp8.py``) followed by ``k_rope[i]`` as 64 bf16 values, and its 7 scale bytes plus one
zero pad byte in the page's scale area (layout: ``kernels/_fp8.PagedLayout``). Nothing else of
the cache is written. Padding rows are skipped without a data-dependent shape, as in
``set_mla_kv_buffer``'s reference (they rewrite the first valid row's bytes to its own slot).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._fp8 import (NOPE_DIM, ROPE_DIM, ROW_BYTES, SCALE_BYTES, PagedLayout,
                                    check_paged_cache, quantize_tiles, scale_bytes)
from fusegraph.kernels.set_mla_kv_buffer.reference import padded_scatter_plan
from fusegraph.ops import fused_op


def check_args(cache: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor, page_size: int) -> None:
    """Shape/dtype rules shared by the reference and the providers (raises on violation)."""
    check_paged_cache(cache, page_size)
    T = loc.shape[0]
    if loc.dim() != 1 or loc.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"loc must be int32/int64 [T], got {loc.dtype} {tuple(loc.shape)}")
    if tuple(k_nope.shape) != (T, NOPE_DIM) or tuple(k_rope.shape) != (T, ROPE_DIM):
        raise ValueError(f"expected k_nope [{T}, {NOPE_DIM}] and k_rope [{T}, {ROPE_DIM}], "
                         f"got {tuple(k_nope.shape)} and {tuple(k_rope.shape)}")


@fused_op("store_fp8_paged", mutates_args=("cache",))
def store_fp8_paged(cache: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor, page_size: int,
                    quant_eps: float) -> None:
    """Quantize ``k_nope`` to FP8 and store it with ``k_rope`` and the scales at slots ``loc`` (< 0 skipped)."""
    check_args(cache, loc, k_nope, k_rope, page_size)
    if loc.shape[0] == 0:
        return
    layout = PagedLayout(page_size)
    valid, first, slot = padded_scatter_plan(loc)
    page, row = layout.slot(slot)
    q, exponent = quantize_tiles(k_nope, quant_eps)
    row_bytes = torch.cat([q.view(torch.uint8), k_rope.to(torch.bfloat16).contiguous().view(torch.uint8)], -1)
    tail = torch.cat([scale_bytes(exponent), torch.zeros_like(exponent[:, :1], dtype=torch.uint8)], -1)
    row_cols = (row * ROW_BYTES)[:, None] + torch.arange(ROW_BYTES, device=cache.device)
    tail_cols = (layout.scales_offset + row * SCALE_BYTES)[:, None] + torch.arange(SCALE_BYTES, device=cache.device)
    for cols, data in ((row_cols, row_bytes), (tail_cols, tail)):
        # padding rows write what the first valid row writes (without any: the bytes already there)
        fill = torch.where(valid[first, None], data[first], cache[page[first, None], cols[first]])
        cache[page[:, None], cols] = torch.where(valid[:, None], data, fill)
