"""CUDA provider of store_fp8_paged (Hopper/Blackwell): quantize in registers, warp tasks, PDL.

The kernel (``store_fp8_paged.cu``, comments there; the parts it shares with set_mla_kv_buffer are
in ``kernels/_cuda/kv_writer.cuh`` and ``kernels/_kv_writers.py``) has each warp load the 448 nope
and 64 rope bf16 values of 1, 2, 4 or 8 tokens and their slots, then quantize each token's nope tiles to
e4m3 with ue8m0 scales in registers (the exact rule of ``kernels/_fp8.py``, bit-identical to the
reference) while the later tokens' loads are in flight, and write the 576-byte row (448 FP8 bytes
+ 64 bf16 rope) either straight from the lanes (``"vector"``) or staged in shared memory and
written with one ``cp.async.bulk.global.shared::cta`` (``"bulk"``, sm90+); the 8 scale bytes (not
16-byte aligned) go with one 8-byte store. Slots ``loc < 0`` are skipped. The grid (persistent or
one warp per task), rows per task, CTA size and cache hint are a ``kernels._kv_writers.Variant``.

Dispatch: ``DISPATCH`` (one line, below) from the measurement it cites; ``FUSEGRAPH_CUDA_COPY``
forces a variant (see ``kernels/_kv_writers.py``). ``supports_args`` leaves to Triton what the kernel
does not take: other dtypes or widths, rows or pages not 16-byte aligned, ``quant_eps`` below 1e-30
(the scale would leave the fp32 normal range).
"""
from __future__ import annotations

import dataclasses

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _kv_writers as kw
from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM
from fusegraph.kernels.store_fp8_paged.reference import check_args, store_fp8_paged

# Which writer from which row count: `bash benchmarks/gpu_batch.sh WRITERS --ops store_fp8_paged` on an
# H100, 2026-11-21, commit 6dad8d0 (benchmarks/results/writers_h100_6dad8d0_store.log; every variant
# byte-exact on the GPU). 16384 rows: bulk r8/w2 flat 11.11 us = 79% of copy bandwidth with scattered
# slots, 10.99 us = 80% with paged-engine slots (runs of a page: one bulk copy a task); bulk r8/w4 and
# r8/w8 within 0.2 us; the best vector copy 11.27 (r4/w4). 4096 rows: the one-row vector copy (4.21);
# 64-1024: the default vector copy; 1 row: Triton 1.38 vs vector 1.41.
DISPATCH = kw.Dispatch(((0, "triton"), (64, "vector"), (4096, "vector/r1/w4/flat"), (16384, "bulk/r8/w2/flat")),
                       source="H100 2026-11-21 commit 6dad8d0, benchmarks/results/writers_h100_6dad8d0_store.log")

PRIORITY = DISPATCH.priority()
COPY_ENV, VARIANTS, TARGETS = kw.COPY_ENV, kw.VARIANTS, kw.TARGETS
MIN_QUANT_EPS = 1e-30
ALIGN = 16
MAX_ROWS_PER_TASK = 8
ROW_BYTES = 576  # a token's staged row (bulk copy)


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


def copy_variant(rows: int) -> kw.Variant:
    """The variant a launch of ``rows`` rows uses (``DISPATCH``; ``FUSEGRAPH_CUDA_COPY`` overrides)."""
    return kw.copy_variant(DISPATCH, rows)


def launch(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float,
           variant: "str | kw.Variant | None" = None) -> None:
    """Run the CUDA writer (``variant``: a ``kernels._kv_writers.Variant`` or its spec, e.g.
    ``"vector/r8/w4/flat"``; default :func:`copy_variant`; what it leaves out, ``kw.plan`` picks)."""
    rows = loc.shape[0]
    module, chosen = kw.resolve(DISPATCH, cache.device, rows, variant)
    if rows == 0:
        return
    if chosen.copy == "tma":  # rows are quantized in registers: no tma copy, the vector copy runs
        chosen = dataclasses.replace(chosen, copy="vector")
    p = kw.plan(rows, kw.num_sms(cache.device), MAX_ROWS_PER_TASK, chosen, ROW_BYTES)
    module.store_fp8_paged(cache, loc, k_nope, k_rope, int(page_size), float(quant_eps),
                           *p.args(jit.pdl_enabled(cache.device)))


@store_fp8_paged.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available,
                          supports_args=_supports, measured=_measured)
def store_fp8_paged_cuda(cache, loc, k_nope, k_rope, page_size, quant_eps):
    launch(cache, loc, k_nope, k_rope, page_size, quant_eps)
