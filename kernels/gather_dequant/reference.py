"""gather_dequant: read token rows of the DSV4 paged FP8 cache back as bf16 (spec 4.4, F8a).

The plain torch function below is the op's spec. It follows the F8a decomposition: index the
bytes of each row, ``view`` the nope bytes as FP8 e4m3, multiply by ``2^(scale_byte - 127)`` in
fp32, ``view`` the rope bytes as bf16, ``cat``. An e4m3 value times a power of two is exact in
bf16, so every correct implementation matches this bit for bit.

``dequantize_slots`` is also the gather of the ``sparse_attn_sink`` reference; it is a plain
function (not the registered op) so that reference stays pure torch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._fp8 import (NOPE_DIM, NOPE_TILES, QUANT_TILE, ROPE_DIM, ROW_BYTES, SCALE_BYTES,
                                    UE8M0_BIAS)
from fusegraph.ops import fused_op

HEAD_DIM = NOPE_DIM + ROPE_DIM  # 512
TOKEN_BYTES = ROW_BYTES + SCALE_BYTES  # 584: what one cached token costs in HBM


def dequantize_slots(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    """bf16 ``slots.shape + (512,)`` rows of ``cache`` (spec 4.3 layout); slots < 0 give zero rows."""
    flat = slots.reshape(-1).long()
    valid = flat >= 0
    safe = flat.clamp_min(0)  # invalid slots read row 0, zeroed below
    page = (safe // page_size).unsqueeze(1)
    row = (safe % page_size).unsqueeze(1)
    row_cols = torch.arange(ROW_BYTES, device=cache.device)
    scale_cols = torch.arange(NOPE_TILES, device=cache.device)
    row_bytes = cache[page, row * ROW_BYTES + row_cols]                               # [n, 576]
    scale_bytes = cache[page, page_size * ROW_BYTES + row * SCALE_BYTES + scale_cols]  # [n, 7]
    n = flat.shape[0]
    nope = row_bytes[:, :NOPE_DIM].contiguous().view(torch.float8_e4m3fn).to(torch.float32)
    scale = torch.exp2(scale_bytes.to(torch.float32) - UE8M0_BIAS)
    nope = (nope.view(n, NOPE_TILES, QUANT_TILE) * scale.unsqueeze(-1)).view(n, NOPE_DIM)
    rope = row_bytes[:, NOPE_DIM:].contiguous().view(torch.bfloat16)
    rows = torch.cat([nope.to(torch.bfloat16), rope], dim=-1)
    rows = torch.where(valid.unsqueeze(1), rows, torch.zeros_like(rows))
    return rows.view(*slots.shape, HEAD_DIM)


@fused_op("gather_dequant")
def gather_dequant(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    """Gather rows of the DSV4 paged FP8 cache and dequantize them to bf16.

    cache: uint8 ``[num_pages, bytes_per_page]`` with ``bytes_per_page >= page_size * 584`` (pages
    may be strided; bytes within a page are contiguous). slots: int32/int64 ``[n]`` (any shape
    works: the result is ``slots.shape + (512,)``); slot ``s`` is row ``s % page_size`` of page
    ``s // page_size`` and must be ``< num_pages * page_size`` when valid.

    Returns bf16 ``[n, 512]``: ``out[c] = fp8[c] * 2^(scale_byte[c // 64] - 127)`` for c < 448
    (fp32 multiply, bf16 result), ``out[448:] = rope`` (the stored bf16 bits); rows of slots < 0
    are zero.
    """
    return dequantize_slots(cache, slots, page_size)
