"""CUDA provider of store_fp8_paged (Hopper/Blackwell): quantize in registers, persistent warps, PDL.

The kernel (``store_fp8_paged.cu``, comments there; the parts it shares with set_mla_kv_buffer are
in ``kernels/_cuda/kv_writer.cuh`` and ``kernels/_kv_writers.py``) has each warp load the 448 nope
and 64 rope bf16 values of 1 to 4 tokens and their slots, then quantize each token's nope tiles to
e4m3 with ue8m0 scales in registers (the exact rule of ``kernels/_fp8.py``, bit-identical to the
reference) while the later tokens' loads are in flight, and write the 576-byte row (448 FP8 bytes
+ 64 bf16 rope) either straight from the lanes (``"vector"``) or staged in shared memory and
written with one ``cp.async.bulk.global.shared::cta`` (``"bulk"``, sm90+); the 8 scale bytes (not
16-byte aligned) go with one plain 8-byte store. Slots ``loc < 0`` are skipped.

Dispatch: ``DISPATCH`` (one line, below) from the measurement it cites; ``FUSEGRAPH_CUDA_COPY``
forces a copy (see ``kernels/_kv_writers.py``). ``supports_args`` leaves to Triton what the kernel
does not take: other dtypes or widths, rows or pages not 16-byte aligned, ``quant_eps`` below 1e-30
(the scale would leave the fp32 normal range).
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _kv_writers as kw
from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM
from fusegraph.kernels.store_fp8_paged.reference import check_args, store_fp8_paged

# Which writer from which row count. Source: H200, 2026-11-21, the previous one-warp-per-token kernel
# (benchmarks/results/ops_hopper_writers_h200_97af41c.log): its vector copy took 4.17 / 11.84 us at
# 4096 / 16384 rows vs Triton's 6.88 / 22.18 us, at 128 rows 1.67 vs 1.57 us; bulk never won.
# Re-measure the persistent kernels with `bash benchmarks/gpu_batch.sh WRITERS` and update this line.
DISPATCH = kw.Dispatch(((0, "vector"),), source="H200 2026-11-21, benchmarks/results/writers_h200_2026-11-21.log: "
                       "vector faster than Triton at 1..16384 rows (16384: 11.0 vs 21.5 us)")

PRIORITY = DISPATCH.priority()
COPY_ENV, VARIANTS, TARGETS = kw.COPY_ENV, kw.VARIANTS, kw.TARGETS
MIN_QUANT_EPS = 1e-30
ALIGN = 16
MAX_ROWS_PER_TASK = 4


def available() -> str | None:
    return kw.available()


def _supports(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float) -> str | None:
    try:
        check_args(cache, loc, k_nope, k_rope, page_size)
    except (ValueError, TypeError) as exc:
        return str(exc)
    for name, t, width in (("k_nope", k_nope, NOPE_DIM), ("k_rope", k_rope, ROPE_DIM)):
        if t.dtype != torch.bfloat16 or t.stride(1) != 1:
            return f"{name} must be bf16 with contiguous rows, got {t.dtype}"
        if (t.stride(0) * 2) % ALIGN or not jit.aligned(t, ALIGN):
            return f"{name} rows do not start on {ALIGN}-byte boundaries"
    if cache.stride(1) != 1 or cache.stride(0) % ALIGN or not jit.aligned(cache, ALIGN):
        return f"cache pages must be contiguous and start on {ALIGN}-byte boundaries"
    if loc.numel() > 1 and loc.stride(0) != 1:
        return "loc must be contiguous"
    if not quant_eps >= MIN_QUANT_EPS:
        return f"quant_eps {quant_eps} below {MIN_QUANT_EPS} (scales would leave the fp32 normal range)"
    if page_size >= 2 ** 31:
        return f"page_size {page_size} does not fit 32 bits"
    devices = {t.device for t in (cache, loc, k_nope, k_rope)}
    return None if len(devices) == 1 else "tensors on several devices"


def _measured(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float) -> str | None:
    return kw.measured_reason(DISPATCH, loc.shape[0])


def copy_variant(rows: int) -> str:
    """The copy a launch of ``rows`` rows uses (``DISPATCH``; ``FUSEGRAPH_CUDA_COPY`` overrides)."""
    return kw.copy_variant(DISPATCH, rows)


def launch(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float, variant: str | None = None,
           rows_per_task: int | None = None) -> None:
    """Run the CUDA writer (``variant``: "vector" or "bulk", default :func:`copy_variant`;
    ``rows_per_task``: 1, 2 or 4, default :func:`kernels._kv_writers.plan`'s choice)."""
    rows = loc.shape[0]
    variant = variant or copy_variant(rows)
    module = kw.extension(cache.device, variant)
    if rows == 0:
        return
    p = kw.plan(rows, kw.num_sms(cache.device), MAX_ROWS_PER_TASK, rows_per_task)
    module.store_fp8_paged(cache, loc, k_nope, k_rope, int(page_size), float(quant_eps), p.rows_per_task,
                           variant == "bulk", p.warps, jit.pdl_enabled(cache.device))


@store_fp8_paged.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available,
                          supports_args=_supports, measured=_measured)
def store_fp8_paged_cuda(cache, loc, k_nope, k_rope, page_size, quant_eps):
    launch(cache, loc, k_nope, k_rope, page_size, quant_eps)
