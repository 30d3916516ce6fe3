"""CUDA provider of set_mla_kv_buffer (Hopper/Blackwell): a persistent warp copy, PDL, JIT-built.

The kernel is in ``set_mla_kv_buffer.cu`` (plain CUDA, comments there; the parts it shares with
the FP8 paged store are in ``kernels/_cuda/kv_writer.cuh`` and ``kernels/_kv_writers.py``): a
persistent grid of warps, each loading the rows of its task (1 to 4 rows, 16-byte vectors) and
their slots before storing, written either straight from registers (``"vector"``) or staged in
shared memory and written with one ``cp.async.bulk.global.shared::cta`` per row (``"bulk"``).

Dispatch: ``DISPATCH`` (one line, below) says which writer runs from which row count, from the
H200 measurement it cites (``benchmarks/ops_hopper.py``); where it says Triton, the ``measured``
gate declines the call and the Triton provider runs. ``FUSEGRAPH_CUDA_COPY=vector|bulk`` forces a
copy. ``supports_args`` leaves to Triton what the kernel does not take (the issue's rules): a row
width not a multiple of 16 bytes, a part width not a multiple of 4, rows wider than 4 KB, a buffer
whose rows do not start on 16-byte boundaries, inputs whose rows do not start on 4-byte ones.
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _kv_writers as kw
from fusegraph.kernels.set_mla_kv_buffer.reference import check_args, set_mla_kv_buffer

# Which writer from which row count. Source: H200, 2026-11-21, the previous one-warp-per-row kernels
# (benchmarks/results/ops_hopper_writers_h200_97af41c.log): Triton was faster at every row count.
# Re-measure the persistent kernels with `bash benchmarks/gpu_batch.sh WRITERS` and update this line.
DISPATCH = kw.Dispatch(((0, "triton"),), source="H200 2026-11-21, benchmarks/results/writers_h200_2026-11-21.log: "
                       "Triton fastest at 1..16384 rows (16384: 12.4 vs vector 13.5, bulk 13.9 us)")

PRIORITY = DISPATCH.priority()
COPY_ENV, VARIANTS, TARGETS = kw.COPY_ENV, kw.VARIANTS, kw.TARGETS
MAX_ROW_BYTES = 4096              # the .cu's kMaxRowBytes (bulk staging of a one-row task)
MAX_TASK_VECTORS = 32 * 9         # the .cu's 32 * kChunk: vectors of a several-row task
MAX_SLOT_BYTES = 4608             # the .cu's kMaxSlotBytes (bulk staging a warp)
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


def max_rows_per_task(row_bytes: int, vec: int, variant: str) -> int:
    """Most rows a warp task may take: several only with 16-byte vectors, within one pass of the
    warp (288 vectors) and, for the bulk copy, within the warp's staging slot."""
    if vec != 16:
        return 1
    for rows in kw.TASK_ROWS:
        fits_pass = rows * (row_bytes // vec) <= MAX_TASK_VECTORS
        fits_slot = variant != "bulk" or rows * row_bytes <= MAX_SLOT_BYTES
        if rows == 1 or (fits_pass and fits_slot):
            return rows
    return 1


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


def copy_variant(rows: int) -> str:
    """The copy a launch of ``rows`` rows uses (``DISPATCH``; ``FUSEGRAPH_CUDA_COPY`` overrides)."""
    return kw.copy_variant(DISPATCH, rows)


def launch(kv_buffer, loc, k_nope, k_rope, variant: str | None = None, rows_per_task: int | None = None) -> None:
    """Run the CUDA writer (``variant``: "vector" or "bulk", default :func:`copy_variant`;
    ``rows_per_task``: 1, 2 or 4, default :func:`kernels._kv_writers.plan`'s choice)."""
    rows = loc.shape[0]
    variant = variant or copy_variant(rows)
    module = kw.extension(kv_buffer.device, variant)
    if rows == 0:
        return
    vec = vector_bytes(kv_buffer, k_nope, k_rope)
    row_bytes = kv_buffer.shape[1] * kv_buffer.element_size()
    p = kw.plan(rows, kw.num_sms(kv_buffer.device), max_rows_per_task(row_bytes, vec, variant), rows_per_task)
    module.set_mla_kv_buffer(kv_buffer, loc, k_nope, k_rope, vec, p.rows_per_task, variant == "bulk", p.warps,
                             jit.pdl_enabled(kv_buffer.device))


@set_mla_kv_buffer.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available,
                            supports_args=_supports, measured=_measured)
def set_mla_kv_buffer_cuda(kv_buffer, loc, k_nope, k_rope):
    launch(kv_buffer, loc, k_nope, k_rope)
