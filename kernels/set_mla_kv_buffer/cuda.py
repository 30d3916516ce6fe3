"""CUDA provider of set_mla_kv_buffer (Hopper/Blackwell): a warp row copy, PDL, JIT-built.

The kernel is in ``set_mla_kv_buffer.cu`` (plain CUDA, comments there; the parts it shares with
the FP8 paged store are in ``kernels/_cuda/kv_writer.cuh`` and ``kernels/_kv_writers.py``): warps
each load the rows of their task (1, 2, 4 or 8 rows, 16-byte vectors) and the rows' slots before
storing, written either straight from registers (``"vector"``, with a cache hint) or staged in
shared memory and written with one ``cp.async.bulk.global.shared::cta`` per row (``"bulk"``), or
with no registers at all: bulk copies global -> shared on an mbarrier, then shared -> global
(``"tma"``; rows of 16-byte parts, else the vector copy runs); the grid is persistent or one warp
per task. How a call is launched is a ``kernels._kv_writers.Variant``.

Dispatch: ``DISPATCH`` (one line, below) says which writer runs from which row count, from the
H200 measurement it cites (``benchmarks/ops_hopper.py``); where it says Triton, the ``measured``
gate declines the call and the Triton provider runs. ``FUSEGRAPH_CUDA_COPY=<variant spec>`` forces
a variant. ``supports_args`` leaves to Triton what the kernel does not take (the issue's rules): a
row width not a multiple of 16 bytes, a part width not a multiple of 4, rows wider than 4 KB, a
buffer whose rows do not start on 16-byte boundaries, inputs whose rows do not start on 4-byte ones
(or lie more than 64 MB apart).
"""
from __future__ import annotations

import dataclasses

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _kv_writers as kw
from fusegraph.kernels.set_mla_kv_buffer.reference import check_args, set_mla_kv_buffer

# Which writer from which row count: `bash benchmarks/gpu_batch.sh WRITERS` on an H100, 2026-11-21,
# commit 1327725 (benchmarks/results/writers_h100_1327725.log; every variant byte-exact on the GPU).
# 16384 rows: Triton 8 rows x 2 warps 14.82 us = 85% of copy bandwidth (vector r8/w16 14.83, bulk
# r8/w4 15.23); 1024: tma 2.26 vs Triton 2.50; 4096: vector r4/w4 streaming 4.93 vs Triton 5.03.
DISPATCH = kw.Dispatch(((0, "triton"), (1024, "tma"), (4096, "vector/r4/w4/flat/stream"), (16384, "triton")),
                       source="H100 2026-11-21 commit 1327725, benchmarks/results/writers_h100_1327725.log")

PRIORITY = DISPATCH.priority()
COPY_ENV, VARIANTS, TARGETS = kw.COPY_ENV, kw.VARIANTS, kw.TARGETS
MAX_ROW_BYTES = 4096              # the .cu's kMaxRowBytes (the widest staged row)
CHUNK = {1: 3, 2: 5, 4: 9, 8: 18}  # the .cu's chunk_of: vectors a lane loads per pass, by rows a task
MAX_INPUT_STRIDE = 1 << 26        # the .cu's kMaxInputStride (32-bit offsets inside a task)
BULK_ALIGN, PART_ALIGN = 16, 4


def available() -> str | None:
    return kw.available()


def _parts(kv_buffer, k_nope, k_rope) -> list[tuple[str, torch.Tensor, int]]:
    """(name, tensor, bytes per row) of the inputs that have bytes to read."""
    item = kv_buffer.element_size()
    return [(name, t, t.shape[1] * item) for name, t in (("k_nope", k_nope), ("k_rope", k_rope)) if t.shape[1]]


def vector_bytes(kv_buffer, k_nope, k_rope) -> int:
    """16 when every part width, row stride and row address is 16-byte aligned, else 4."""
    item = kv_buffer.element_size()
    sizes = [kv_buffer.stride(0) * item]
    tensors = [kv_buffer]
    for _, t, width in _parts(kv_buffer, k_nope, k_rope):
        sizes += [width, t.stride(0) * item]
        tensors.append(t)
    for vec in (16, 4):
        if all(s % vec == 0 for s in sizes) and all(jit.aligned(t, vec) for t in tensors):
            return vec
    raise ValueError("rows are not 4-byte aligned (supports_args should have refused them)")


def max_rows_per_task(row_bytes: int, vec: int) -> int:
    """Most rows a warp task may take: several only with 16-byte vectors and within one pass of the
    warp (``rows * vectors a row <= 32 * CHUNK[rows]``: a DSV4 row of 72 vectors fits 8). (A bulk
    copy's staging limit is :func:`kernels._kv_writers.plan`'s.)"""
    if vec != 16:
        return 1
    return next(rows for rows in kw.TASK_ROWS if rows == 1 or rows * (row_bytes // vec) <= 32 * CHUNK[rows])


def alignment_reason(kv_buffer, k_nope, k_rope) -> str | None:
    """Why these rows fail the kernel's alignment rules (None: they pass)."""
    item = kv_buffer.element_size()
    nope_bytes, rope_bytes = k_nope.shape[1] * item, k_rope.shape[1] * item
    total = nope_bytes + rope_bytes
    if total % BULK_ALIGN:
        return f"row of {total} bytes is not a multiple of {BULK_ALIGN} (bulk copy rule)"
    if nope_bytes % PART_ALIGN or rope_bytes % PART_ALIGN:
        return f"nope/rope parts of {nope_bytes}/{rope_bytes} bytes are not multiples of {PART_ALIGN}"
    if total > MAX_ROW_BYTES:
        return f"row of {total} bytes is wider than the {MAX_ROW_BYTES}-byte staging slot"
    if (kv_buffer.stride(0) * item) % BULK_ALIGN or not jit.aligned(kv_buffer, BULK_ALIGN):
        return f"kv_buffer rows do not start on {BULK_ALIGN}-byte boundaries"
    for name, t, _ in _parts(kv_buffer, k_nope, k_rope):
        if (t.stride(0) * item) % PART_ALIGN or not jit.aligned(t, PART_ALIGN):
            return f"{name} rows do not start on {PART_ALIGN}-byte boundaries"
        if not 0 <= t.stride(0) * item <= MAX_INPUT_STRIDE:
            return f"{name} rows lie more than {MAX_INPUT_STRIDE >> 20} MB apart"
    return None


def _supports(kv_buffer, loc, k_nope, k_rope) -> str | None:
    try:
        check_args(kv_buffer, loc, k_nope, k_rope)
    except (ValueError, TypeError) as exc:
        return str(exc)
    for name, t in (("kv_buffer", kv_buffer), ("k_nope", k_nope), ("k_rope", k_rope)):
        if t.shape[1] > 1 and t.stride(1) != 1:
            return f"{name} rows must be contiguous"
    if loc.numel() > 1 and loc.stride(0) != 1:
        return "loc must be contiguous"
    devices = {t.device for t in (kv_buffer, loc, k_nope, k_rope)}
    if len(devices) != 1:
        return "tensors on several devices"
    return alignment_reason(kv_buffer, k_nope, k_rope)


def _measured(kv_buffer, loc, k_nope, k_rope) -> str | None:
    return kw.measured_reason(DISPATCH, loc.shape[0])


def copy_variant(rows: int) -> kw.Variant:
    """The variant a launch of ``rows`` rows uses (``DISPATCH``; ``FUSEGRAPH_CUDA_COPY`` overrides)."""
    return kw.copy_variant(DISPATCH, rows)


def launch(kv_buffer, loc, k_nope, k_rope, variant: "str | kw.Variant | None" = None) -> None:
    """Run the CUDA writer (``variant``: a ``kernels._kv_writers.Variant`` or its spec, e.g.
    ``"vector/r4/w4/flat"``; default :func:`copy_variant`; what it leaves out, ``kw.plan`` picks)."""
    rows = loc.shape[0]
    module, chosen = kw.resolve(DISPATCH, kv_buffer.device, rows, variant)
    if rows == 0:
        return
    vec = vector_bytes(kv_buffer, k_nope, k_rope)
    row_bytes = kv_buffer.shape[1] * kv_buffer.element_size()
    if vec != 16 and chosen.copy == "tma":  # bulk loads need 16-byte parts: the vector copy runs
        chosen = dataclasses.replace(chosen, copy="vector")
    p = kw.plan(rows, kw.num_sms(kv_buffer.device), max_rows_per_task(row_bytes, vec), chosen, row_bytes,
                hints=kw.HINTS if vec == 16 else ("nc",))  # 4-byte vectors: instantiated with nc only
    module.set_mla_kv_buffer(kv_buffer, loc, k_nope, k_rope, vec, *p.args(jit.pdl_enabled(kv_buffer.device)))


@set_mla_kv_buffer.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available,
                            supports_args=_supports, measured=_measured)
def set_mla_kv_buffer_cuda(kv_buffer, loc, k_nope, k_rope):
    launch(kv_buffer, loc, k_nope, k_rope)
