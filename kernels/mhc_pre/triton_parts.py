"""Triton jit building blocks shared by the mHC kernels of ``triton_jit.py``, ``triton_token.py``
and the DeepGEMM finisher (``deepgemm.py``). Each is inlined into its caller: the kernels compile
to the same code as when these lines were written out in every kernel.

``split_program(n_splits, per_split, rem)``
    This program's place in a grid of token blocks x splits (``triton_token.SplitPlan``): token
    block, split, first unit (k-block or column block) and unit count.
``store_row(out_row, yb, norm_w_ptr, ds, d_ok, D, norm_eps, HAS_NORM)``
    Store a collapsed row held whole in registers, RMSNorm'd first when ``HAS_NORM``. ``yb`` is
    already rounded to the output dtype: the norm squares the rounded values (the reference's
    rounding, ``reference.py``).
``store_chunk(out_row, d, yb, d_ok, acc, HAS_NORM)`` and ``norm_stored_row(...)``
    The same for a row walked in ``NUM_CHUNKS`` chunks: each chunk is stored rounded (and its
    squares summed into ``acc``), then the norm re-reads the written row and rewrites it.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_program(n_splits, per_split, rem):
    """(token block, split, first unit, unit count); the first ``rem`` splits take one unit more."""
    pid = tl.program_id(0)
    mblk = pid // n_splits
    split = pid % n_splits
    begin = split * per_split + tl.minimum(split, rem)
    count = per_split + (split < rem).to(tl.int32)
    return mblk, split, begin, count


@triton.jit
def store_row(out_row, yb, norm_w_ptr, ds, d_ok, D, norm_eps, HAS_NORM: tl.constexpr):
    if HAS_NORM:
        v = yb.to(tl.float32)
        r = tl.math.rsqrt(tl.sum(v * v, axis=0) / D + norm_eps)
        w = tl.load(norm_w_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)
        yb = (v * r * w).to(out_row.dtype.element_ty)
    tl.store(out_row + ds, yb, mask=d_ok)


@triton.jit
def store_chunk(out_row, d, yb, d_ok, acc, HAS_NORM: tl.constexpr):
    """Store one rounded chunk at columns ``d``; returns ``acc`` plus its squares (unchanged without the norm)."""
    tl.store(out_row + d, yb, mask=d_ok)
    if HAS_NORM:
        v = yb.to(tl.float32)
        acc += v * v
    return acc


@triton.jit
def norm_stored_row(out_row, norm_w_ptr, acc, D, norm_eps, BLOCK_D: tl.constexpr, NUM_CHUNKS: tl.constexpr):
    """RMSNorm in place of the row ``store_chunk`` wrote, ``acc`` holding its squares."""
    ds = tl.arange(0, BLOCK_D)
    r = tl.math.rsqrt(tl.sum(acc, axis=0) / D + norm_eps)
    tl.debug_barrier()  # the bf16 row written above is read back below
    for c in range(NUM_CHUNKS):
        d = c * BLOCK_D + ds
        d_ok = d < D
        v = tl.load(out_row + d, mask=d_ok, other=0.0).to(tl.float32)
        w = tl.load(norm_w_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        tl.store(out_row + d, (v * r * w).to(out_row.dtype.element_ty), mask=d_ok)
