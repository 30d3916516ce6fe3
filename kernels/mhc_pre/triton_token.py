"""Token-parallel mHC kernels: used for 2 <= T <= 64 tokens, and for every mhc_post.

These are the first-generation kernels (kept unchanged, measured and tested): split-K GEMM with
partials ``[S, T, PAD]``, then ONE FINISHER PROGRAM PER TOKEN (``_mix_finish_kernel``: split sum,
RMS factor, sigmoids, Sinkhorn on four row vectors, weighted collapse, RMSNorm). For a handful of
tokens this beats ``triton_jit``'s last-split finishing, which serializes a whole token block's
mixes on one SM (H200, flash, T = 32: mhc_pre+norm 12.1 vs 16.1 us, hc_head+norm 7.0 vs 8.5 us,
mhc_post_pre+norm 14.1 vs 24.9 us; benchmarks/results/mhc_tuning_notes.md).

``_prenorm_gemm_kernel``
    ``residual.view(T, 4D)`` (bf16) times ``fn^T`` (fp32, 24 or 4 rows) with split-K, plus the
    sum of squares from the same registers; writes ``part[s, t, :]`` and ``sq[s, t]``.
``_post_mix_kernel``
    ``out[t,k,d] = post[t,k] * f[t,d] + sum_j comb[t,j,k] * residual[t,j,d]`` (mhc_post: one token
    and 256/1024 columns per program). With ``FUSE_GEMM`` it also feeds the bf16-rounded new
    residual into the next pre's split-K GEMM (mhc_post_pre at small T).
``_mix_finish_kernel``
    One program per token, tokens in reverse order; the whole [4, D] row is requested up front
    when D <= MAX_ROW_BLOCK, else walked in chunks (the norm then re-reads the written row).

``_token_mixes`` (the per-token mixes and Sinkhorn) is also the DeepGEMM finisher's; the split
prologue and the row epilogue are ``triton_parts.py``'s (shared with ``triton_jit.py``).

All kernels take ``USE_PDL`` (wait before the first dependent load, release after the last
store). Buffers come from ``triton_kernels.empty`` (the seam tests use to poison outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre.gates import HC_MULT
from fusegraph.kernels.mhc_pre.triton_parts import norm_stored_row, split_program, store_chunk, store_row

import triton
import triton.language as tl

MIX_PAD = 32          # GEMM tile width for the 24 mhc_pre mixes (tl.dot needs N >= 16, pow2)
HEAD_PAD = 16         # ... and for the 4 hc_head mixes
BLOCK_K = 64          # k-block of the prenorm GEMM (the spec's DeepGEMM/engine partition)
MIN_KB_PER_SPLIT = 4  # each split keeps >= 4 k-blocks (engine rule: nKB // 4)
PROGRAMS_PER_SM = 2   # split-K target: about two resident programs per SM
MAX_ROW_BLOCK = 8192  # the finisher keeps a [4, D] row in registers up to this D


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``triton_kernels.empty``, looked up at call time (tests replace it to poison buffers)."""
    from fusegraph.kernels.mhc_pre import triton_kernels

    return triton_kernels.empty(shape, dtype, device)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _prenorm_gemm_kernel(x_ptr, w_ptr, part_ptr, sq_ptr, T, K, N, n_splits, kb_per_split, kb_rem,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    mblk, split, kb_begin, kb_count = split_program(n_splits, kb_per_split, kb_rem)

    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < T
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    ns = tl.arange(0, BLOCK_N)
    n_ok = ns < N
    ks = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    tc.pdl_wait(USE_PDL)
    for i in range(kb_count):
        k = (kb_begin + i) * BLOCK_K + ks
        k_ok = k < K
        a = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        b = tl.load(w_ptr + ns[None, :] * K + k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        sq += tl.sum(a * a, axis=1)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    out_rows = split.to(tl.int64) * T + rows
    tl.store(part_ptr + out_rows[:, None] * BLOCK_N + ns[None, :], acc, mask=row_ok[:, None])
    tl.store(sq_ptr + out_rows, sq, mask=row_ok)
    tc.pdl_launch_dependents(USE_PDL)


@triton.jit
def _post_mix_kernel(f_ptr, res_ptr, post_ptr, comb_ptr, out_ptr, w_ptr, part_ptr, sq_ptr,
                     T, D, n_splits, db_per_split, db_rem,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     FUSE_GEMM: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    mblk, split, db_begin, db_count = split_program(n_splits, db_per_split, db_rem)

    row0 = mblk * BLOCK_M
    lrows = tl.arange(0, BLOCK_M)
    rows = row0 + lrows
    row_ok = rows < T
    # 64-bit base pointers per token block, 32-bit offsets inside it (keeps pointer tiles small)
    f_blk = f_ptr + row0.to(tl.int64) * D
    r_blk = res_ptr + row0.to(tl.int64) * (4 * D)
    o_blk = out_ptr + row0.to(tl.int64) * (4 * D)
    f_off = lrows[:, None] * D
    r_off = lrows[:, None] * (4 * D)
    pp = post_ptr + rows.to(tl.int64) * 4
    cp = comb_ptr + rows.to(tl.int64) * 16
    ds = tl.arange(0, BLOCK_D)
    if FUSE_GEMM:
        ns = tl.arange(0, BLOCK_N)
        n_ok = ns < 24
        w_off = ns[None, :] * (4 * D)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        sq = tl.zeros((BLOCK_M,), dtype=tl.float32)

    tc.pdl_wait(USE_PDL)
    for i in range(db_count):
        d = (db_begin + i) * BLOCK_D + ds
        d_ok = d < D
        m2 = row_ok[:, None] & d_ok[None, :]
        f = tl.load(f_blk + (f_off + d[None, :]), mask=m2, other=0.0).to(tl.float32)
        r0 = tl.load(r_blk + (r_off + d[None, :]), mask=m2, other=0.0).to(tl.float32)
        r1 = tl.load(r_blk + (r_off + (D + d)[None, :]), mask=m2, other=0.0).to(tl.float32)
        r2 = tl.load(r_blk + (r_off + (2 * D + d)[None, :]), mask=m2, other=0.0).to(tl.float32)
        r3 = tl.load(r_blk + (r_off + (3 * D + d)[None, :]), mask=m2, other=0.0).to(tl.float32)
        # a rolled loop over the output streams: unrolled, the four tl.dot's doubled the registers
        for k in range(4):
            ck = cp + k  # column k of comb: comb[:, j, k] at ck + 4*j
            o = tl.load(pp + k, mask=row_ok, other=0.0)[:, None] * f + (
                tl.load(ck, mask=row_ok, other=0.0)[:, None] * r0
                + tl.load(ck + 4, mask=row_ok, other=0.0)[:, None] * r1
                + tl.load(ck + 8, mask=row_ok, other=0.0)[:, None] * r2
                + tl.load(ck + 12, mask=row_ok, other=0.0)[:, None] * r3)
            ob = o.to(out_ptr.dtype.element_ty)
            tl.store(o_blk + (r_off + (k * D + d)[None, :]), ob, mask=m2)
            if FUSE_GEMM:
                # the next pre reads the bf16 residual: feed it the rounded values
                ov = ob.to(tl.float32)
                sq += tl.sum(ov * ov, axis=1)
                wk = tl.load(w_ptr + (w_off + (k * D + d)[:, None]), mask=n_ok[None, :] & d_ok[:, None], other=0.0)
                acc = tl.dot(ov, wk, acc, input_precision=PRECISION)

    if FUSE_GEMM:
        out_rows = split.to(tl.int64) * T + rows
        tl.store(part_ptr + out_rows[:, None] * BLOCK_N + ns[None, :], acc, mask=row_ok[:, None])
        tl.store(sq_ptr + out_rows, sq, mask=row_ok)
    tc.pdl_launch_dependents(USE_PDL)


@triton.jit
def _sinkhorn_rows(m0, m1, m2, m3, iters, eps):
    """Sinkhorn on a 4x4 held as its four rows (each a [4] vector over k).

    Softmax over k (+eps), column normalization, then ``iters - 1`` row/column rounds. Keeping
    rows apart makes column sums elementwise adds and row sums 4-wide reductions inside a
    thread: no shuffles or barriers in the 20-iteration loop (a [4, 4] tile split over warps
    cost 3 barriers per iteration).
    """
    m0 = tl.exp(m0 - tl.max(m0, axis=0))
    m1 = tl.exp(m1 - tl.max(m1, axis=0))
    m2 = tl.exp(m2 - tl.max(m2, axis=0))
    m3 = tl.exp(m3 - tl.max(m3, axis=0))
    m0 = m0 / tl.sum(m0, axis=0) + eps
    m1 = m1 / tl.sum(m1, axis=0) + eps
    m2 = m2 / tl.sum(m2, axis=0) + eps
    m3 = m3 / tl.sum(m3, axis=0) + eps
    col = m0 + m1 + m2 + m3 + eps
    m0, m1, m2, m3 = m0 / col, m1 / col, m2 / col, m3 / col
    for _ in range(iters - 1):
        m0 = m0 / (tl.sum(m0, axis=0) + eps)
        m1 = m1 / (tl.sum(m1, axis=0) + eps)
        m2 = m2 / (tl.sum(m2, axis=0) + eps)
        m3 = m3 / (tl.sum(m3, axis=0) + eps)
        col = m0 + m1 + m2 + m3 + eps
        m0, m1, m2, m3 = m0 / col, m1 / col, m2 / col, m3 / col
    return m0, m1, m2, m3


@triton.jit
def _split_sum4(part_t, s_ok, offset):
    """Sum over splits of the 4 partial mixes at ``offset`` of this token's partial rows -> [4]."""
    c4 = tl.arange(0, 4)
    return tl.sum(tl.load(part_t[:, None] + offset + c4[None, :], mask=s_ok[:, None], other=0.0), axis=0)


@triton.jit
def _token_mixes(part_t, sq_ptr, ss, s_ok, t, t64, T, D, scale_ptr, base_ptr, post_ptr, comb_ptr, rms_eps, hc_eps,
                 post_mult, sinkhorn_iters, WITH_POST_COMB: tl.constexpr):
    """Token ``t``'s RMS factor and mixes from its split partials (``part_t``: its partial row per
    split, ``sq_ptr``: the sums of squares ``[S, T]``). Returns ``pre`` [4]; with ``WITH_POST_COMB``
    also stores ``post`` and the Sinkhorn-normalized ``comb``."""
    c4 = tl.arange(0, 4)
    sumsq = tl.sum(tl.load(sq_ptr + ss.to(tl.int64) * T + t, mask=s_ok, other=0.0), axis=0)
    rinv = tl.math.rsqrt(sumsq / (4 * D) + rms_eps)
    g_pre = _split_sum4(part_t, s_ok, 0)
    pre = tl.sigmoid(g_pre * rinv * tl.load(scale_ptr) + tl.load(base_ptr + c4)) + hc_eps

    if WITH_POST_COMB:
        g_post = _split_sum4(part_t, s_ok, 4)
        post = tl.sigmoid(g_post * rinv * tl.load(scale_ptr + 1) + tl.load(base_ptr + 4 + c4)) * post_mult
        tl.store(post_ptr + t64 * 4 + c4, post)
        # comb row j = mixes[8 + 4j : 12 + 4j]
        s2 = tl.load(scale_ptr + 2)
        m0 = _split_sum4(part_t, s_ok, 8) * rinv * s2 + tl.load(base_ptr + 8 + c4)
        m1 = _split_sum4(part_t, s_ok, 12) * rinv * s2 + tl.load(base_ptr + 12 + c4)
        m2 = _split_sum4(part_t, s_ok, 16) * rinv * s2 + tl.load(base_ptr + 16 + c4)
        m3 = _split_sum4(part_t, s_ok, 20) * rinv * s2 + tl.load(base_ptr + 20 + c4)
        m0, m1, m2, m3 = _sinkhorn_rows(m0, m1, m2, m3, sinkhorn_iters, hc_eps)
        comb_t = comb_ptr + t64 * 16 + c4
        tl.store(comb_t, m0)
        tl.store(comb_t + 4, m1)
        tl.store(comb_t + 8, m2)
        tl.store(comb_t + 12, m3)
    return pre


@triton.jit
def _mix_finish_kernel(res_ptr, part_ptr, sq_ptr, scale_ptr, base_ptr, norm_w_ptr, out_ptr, post_ptr, comb_ptr,
                       T, D, n_splits, rms_eps, hc_eps, norm_eps, post_mult, sinkhorn_iters,
                       PART_N: tl.constexpr, SPLIT_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                       NUM_CHUNKS: tl.constexpr, WITH_POST_COMB: tl.constexpr, HAS_NORM: tl.constexpr,
                       USE_PDL: tl.constexpr):
    t = T - 1 - tl.program_id(0)  # reverse order: rows kernel 1 read last are still in L2
    t64 = t.to(tl.int64)
    c4 = tl.arange(0, 4)
    ds = tl.arange(0, BLOCK_D)
    x_row = res_ptr + t64 * (4 * D) + c4[:, None] * D  # [4, 1]: the 4 streams of token t
    out_row = out_ptr + t64 * D
    ss = tl.arange(0, SPLIT_BLOCK)
    s_ok = ss < n_splits
    part_t = part_ptr + (ss.to(tl.int64) * T + t) * PART_N  # [S]: this token's partial row per split

    tc.pdl_wait(USE_PDL)
    if NUM_CHUNKS == 1:  # issue the whole row now; its latency hides behind the mixes below
        d_ok = ds < D
        x = tl.load(x_row + ds[None, :], mask=d_ok[None, :], other=0.0)

    pre = _token_mixes(part_t, sq_ptr, ss, s_ok, t, t64, T, D, scale_ptr, base_ptr, post_ptr, comb_ptr, rms_eps,
                       hc_eps, post_mult, sinkhorn_iters, WITH_POST_COMB)

    if NUM_CHUNKS == 1:
        y = tl.sum(x.to(tl.float32) * pre[:, None], axis=0)
        store_row(out_row, y.to(out_ptr.dtype.element_ty), norm_w_ptr, ds, d_ok, D, norm_eps, HAS_NORM)
    else:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for c in range(NUM_CHUNKS):
            d = c * BLOCK_D + ds
            d_ok = d < D
            xc = tl.load(x_row + d[None, :], mask=d_ok[None, :], other=0.0).to(tl.float32)
            yb = tl.sum(xc * pre[:, None], axis=0).to(out_ptr.dtype.element_ty)
            acc = store_chunk(out_row, d, yb, d_ok, acc, HAS_NORM)
        if HAS_NORM:
            norm_stored_row(out_row, norm_w_ptr, acc, D, norm_eps, BLOCK_D, NUM_CHUNKS)
    tc.pdl_launch_dependents(USE_PDL)


# ---------------------------------------------------------------------------------------------
# launch plans
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitPlan:
    """How a [T, K] pass is cut: token blocks of ``block_m`` times ``n_splits`` contiguous ranges of
    ``n_blocks`` column blocks (the first ``rem`` splits get ``per_split + 1`` blocks)."""

    block_m: int
    n_splits: int
    per_split: int
    rem: int
    m_blocks: int

    @property
    def grid(self) -> tuple[int]:
        return (self.m_blocks * self.n_splits,)


def gemm_block_m(T: int) -> int:
    """Token block of the tl.dot passes (tl.dot needs >= 16 rows)."""
    return 16 if T <= 16 else 32 if T <= 32 else 64


def split_count(T: int, block_m: int, n_blocks: int, min_blocks: int, device: torch.device) -> int:
    """Engine rule ``max(1, min(SMs // m_blocks, nKB // 4))``, aiming at PROGRAMS_PER_SM per SM."""
    m_blocks = tc.cdiv(T, block_m)
    return max(1, min((PROGRAMS_PER_SM * tc.num_sms(device)) // m_blocks, n_blocks // min_blocks))


def make_plan(T: int, block_m: int, n_blocks: int, n_splits: int) -> SplitPlan:
    n_splits = max(1, min(n_splits, n_blocks))
    return SplitPlan(block_m, n_splits, n_blocks // n_splits, n_blocks % n_splits, tc.cdiv(T, block_m))


def _finish_config(D: int, max_block_d: int) -> tuple[int, int, int]:
    block_d = min(tc.next_pow2(D), tc.next_pow2(max_block_d))
    num_warps = max(1, min(16, block_d // 512))
    return block_d, tc.cdiv(D, block_d), num_warps


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def prenorm_gemm(x: Tensor, w: Tensor, block_n: int, n_splits: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Split-K ``x [T, K] bf16 @ w [N, K]^T`` and ``sum(x^2)``: partials ``[S, T, block_n]``, ``[S, T]``."""
    T, K = x.shape
    N = w.shape[0]
    block_m = gemm_block_m(T)
    n_kb = tc.cdiv(K, BLOCK_K)
    S = n_splits or split_count(T, block_m, n_kb, MIN_KB_PER_SPLIT, x.device)
    plan = make_plan(T, block_m, n_kb, S)
    part = empty((plan.n_splits, T, block_n), torch.float32, x.device)
    sq = empty((plan.n_splits, T), torch.float32, x.device)
    _prenorm_gemm_kernel[plan.grid](
        x, w, part, sq, T, K, N, plan.n_splits, plan.per_split, plan.rem,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K, PRECISION=tc.dot_precision(x.device),
        USE_PDL=tc.pdl_enabled(x.device), num_warps=4, num_stages=4 if block_m == 64 else 3,
        **tc.launch_kwargs(x.device))
    return part, sq


def mix_finish(residual: Tensor, part: Tensor, sq: Tensor, scale: Tensor, base: Tensor,
               norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float, norm_eps: float,
               sinkhorn_iters: int, post_mult: float, with_post_comb: bool,
               max_block_d: int = MAX_ROW_BLOCK) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Kernel 2: reduce partials, mixes, (Sinkhorn), collapse, (RMSNorm) -> (out, post, comb)."""
    T, _, D = residual.shape
    dev = residual.device
    out = empty((T, D), residual.dtype, dev)
    post = empty((T, HC_MULT), torch.float32, dev) if with_post_comb else None
    comb = empty((T, HC_MULT, HC_MULT), torch.float32, dev) if with_post_comb else None
    block_d, chunks, num_warps = _finish_config(D, max_block_d)
    n_splits = part.shape[0]
    _mix_finish_kernel[(T,)](
        residual, part, sq, scale, base, norm_weight if norm_weight is not None else out, out,
        post if post is not None else out, comb if comb is not None else out,
        T, D, n_splits, float(rms_eps), float(hc_eps), float(norm_eps), float(post_mult), int(sinkhorn_iters),
        PART_N=part.shape[2], SPLIT_BLOCK=max(2, tc.next_pow2(n_splits)), BLOCK_D=block_d, NUM_CHUNKS=chunks,
        WITH_POST_COMB=with_post_comb, HAS_NORM=norm_weight is not None, USE_PDL=tc.pdl_enabled(dev),
        num_warps=num_warps, **tc.launch_kwargs(dev))
    return out, post, comb


def post_mix(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Optional[Tensor] = None,
             n_splits: Optional[int] = None) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """New residual; with ``fn`` also the next pre's GEMM partials ``[S, T, MIX_PAD]`` and ``[S, T]``."""
    T, _, D = residual.shape
    dev = residual.device
    out = empty((T, HC_MULT, D), residual.dtype, dev)
    fuse = fn is not None
    if fuse:
        block_m, block_d = gemm_block_m(T), 32
        n_db = tc.cdiv(D, block_d)
        S = n_splits or split_count(T, block_m, n_db, 2, dev)
        num_warps, num_stages = (4, 3) if block_m <= 32 else (8, 2)  # ~100-140 registers (ptxas, sm90)
    else:
        # one token per program; narrow column blocks at small T so that more SMs take part
        block_m, block_d = 1, min(tc.next_pow2(D), 1024 if T >= 64 else 256)
        n_db = tc.cdiv(D, block_d)
        S = n_splits or max(1, min(n_db, tc.cdiv(8 * tc.num_sms(dev), T)))
        num_warps, num_stages = max(1, min(8, block_d // 256)), 2
    plan = make_plan(T, block_m, n_db, S)
    part = empty((plan.n_splits, T, MIX_PAD), torch.float32, dev) if fuse else None
    sq = empty((plan.n_splits, T), torch.float32, dev) if fuse else None
    _post_mix_kernel[plan.grid](
        f, residual, post, comb, out, fn if fuse else out, part if fuse else out, sq if fuse else out,
        T, D, plan.n_splits, plan.per_split, plan.rem,
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=MIX_PAD, FUSE_GEMM=fuse, PRECISION=tc.dot_precision(dev),
        USE_PDL=tc.pdl_enabled(dev), num_warps=num_warps, num_stages=num_stages, **tc.launch_kwargs(dev))
    return out, part, sq
