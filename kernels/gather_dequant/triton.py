"""Triton provider of gather_dequant: one kernel, a few fixed block sizes chosen by row count.

Each program dequantizes ``rows`` token rows: per row it loads the 448 e4m3 bytes as chunks of
256 + 128 + 64 channels (16-byte loads), its 8 scale bytes as one 8-byte word and the 64 rope
values, all before the first store (stores may alias the loads for the compiler, so interleaving
them serialized four memory round trips per program), and writes the 512-channel bf16 row. The
work is pure data movement, so instead of per-shape autotuning (which would stall the first call
of every new ``n`` and break CUDA-graph capture) buckets pick the block size: small ``n``
(decode) uses tiny blocks to spread rows over many SMs. Measured on an H200 at n = 65536 (graph
µs): 8 rows / 4 warps 29.5 (74% of copy bandwidth), 16 / 4 30.4, 16 / 8 29.4, 32 / 4 41.6,
64 / 8 53.7 (``benchmarks/ops_sparse.py --sweep``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._fp8 import PagedLayout

from .reference import HEAD_DIM, gather_dequant
from .triton_fp8 import fp8_native, page_shift

tl, triton = tc.tl, tc.triton


@dataclass(frozen=True)
class GatherConfig:
    rows: int       # token rows per program
    num_warps: int


# (largest n, config): the first bucket whose bound is >= n wins.
BUCKETS: tuple[tuple[int | None, GatherConfig], ...] = (
    (256, GatherConfig(rows=2, num_warps=2)),
    (None, GatherConfig(rows=8, num_warps=4)),
)


# Benchmarks may force one config for every n (None = by bucket).
CONFIG_OVERRIDE: GatherConfig | None = None


def config_for(n: int) -> GatherConfig:
    if CONFIG_OVERRIDE is not None:
        return CONFIG_OVERRIDE
    for bound, config in BUCKETS:
        if bound is None or n <= bound:
            return config
    raise AssertionError("the last bucket is unbounded")


def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Output allocation (tests replace it to poison outputs)."""
    return torch.empty(shape, dtype=dtype, device=device)


def cache_reason(cache: Tensor, page_size: int, name: str = "cache") -> str | None:
    """Why the Triton kernels cannot read ``cache`` as a paged FP8 cache of ``page_size`` tokens."""
    if not isinstance(cache, Tensor) or cache.dtype != torch.uint8 or cache.dim() != 2:
        return f"{name} must be a uint8 [num_pages, bytes_per_page] tensor"
    if page_size <= 0:
        return f"page_size must be positive, got {page_size}"
    need = PagedLayout(page_size).bytes_per_page
    if cache.shape[1] < need:
        return f"{name} pages hold {cache.shape[1]} bytes, page_size {page_size} needs {need}"
    if cache.stride(1) != 1:
        return f"{name} bytes within a page must be contiguous"
    if cache.stride(0) % 8 or cache.shape[1] % 2 or cache.storage_offset() % 8:
        # bf16 view for the rope values, one 8-byte load for a row's scale bytes
        return f"{name} needs a page stride and offset that are multiples of 8 bytes and an even page size"
    return None


def index_reason(idx: Tensor, name: str) -> str | None:
    if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64):
        return f"{name} must be an int32 or int64 tensor"
    return None


if tc.HAS_TRITON:
    from .triton_fp8 import dequant_chunk, fp8_row_offsets, load_fp8_rows

    @triton.jit
    def _gather_dequant_kernel(cache_ptr, cache_bf16_ptr, page_stride, page_size, page_shift, slots_ptr, out_ptr, n,
                               ROWS: tl.constexpr, POW2_PAGES: tl.constexpr, NATIVE_FP8: tl.constexpr,
                               USE_PDL: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        in_range = rows < n
        tc.pdl_wait(USE_PDL)
        slot = tl.load(slots_ptr + rows, mask=in_range, other=-1).to(tl.int32)
        valid = slot >= 0
        row_off, scale_off = fp8_row_offsets(tl.where(valid, slot, 0), page_stride, page_size, page_shift,
                                             POW2_PAGES)
        # all loads first: one memory round trip per program (stores may alias loads for the
        # compiler, so interleaving them would serialize four round trips)
        raw_a, raw_b, raw_c, rope, word = load_fp8_rows(cache_ptr, cache_bf16_ptr, row_off, scale_off, valid)
        out_row = out_ptr + rows.to(tl.int64)[:, None] * 512
        keep = in_range[:, None]
        tl.store(out_row + tl.arange(0, 256)[None, :], dequant_chunk(raw_a, word, 0, NATIVE_FP8), mask=keep)
        tl.store(out_row + 256 + tl.arange(0, 128)[None, :], dequant_chunk(raw_b, word, 4, NATIVE_FP8), mask=keep)
        tl.store(out_row + 384 + tl.arange(0, 64)[None, :], dequant_chunk(raw_c, word, 6, NATIVE_FP8), mask=keep)
        tl.store(out_row + 448 + tl.arange(0, 64)[None, :], rope, mask=keep)
        tc.pdl_launch_dependents(USE_PDL)


def _supports(cache: Tensor, slots: Tensor, page_size: int) -> str | None:
    reason = cache_reason(cache, page_size) or index_reason(slots, "slots")
    if reason:
        return reason
    if slots.device != cache.device:
        return f"slots on {slots.device}, cache on {cache.device}"
    return None


@gather_dequant.provider("triton", targets=tc.provider_targets(), priority=20,
                         available=tc.triton_missing, supports_args=_supports)
def gather_dequant_triton(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    flat = slots.reshape(-1).contiguous()
    n = flat.numel()
    out = _new_output((n, HEAD_DIM), torch.bfloat16, cache.device)
    if n:
        config = config_for(n)
        device = cache.device
        shift = page_shift(page_size)
        _gather_dequant_kernel[(tc.cdiv(n, config.rows),)](
            cache, cache.view(torch.bfloat16), cache.stride(0), page_size, shift or 0, flat, out, n,
            ROWS=config.rows, POW2_PAGES=shift is not None, NATIVE_FP8=fp8_native(device),
            USE_PDL=tc.pdl_enabled(device),
            num_warps=config.num_warps, **tc.launch_kwargs(device))
    return out.view(*slots.shape, HEAD_DIM)
