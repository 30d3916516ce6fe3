"""Triton jit code of the mHC family's streaming path (launchers and dispatch: ``triton_kernels.py``).

Used for T = 1 and T > 64 tokens by mhc_pre and hc_head (and by mhc_post_pre after mhc_post);
2..64 tokens take ``triton_token.py``'s one-finisher-per-token kernels. Spec 2.1-2.6,
kernel-anchors sections 1-3, 11. Kernels:

``_split_fn_kernel`` (T > 64)
    ``fn`` fp32 -> bf16 hi + lo rows, once per call (3 MB at flash size: ~1 us).
``_prenorm_gemm_kernel`` (kernel 1)
    Split-K GEMM of the bf16 residual row ``[T, 4D]`` with ``fn^T`` plus the sum of squares;
    program ``pid`` is token block ``pid // S``, split ``pid % S``. In the streaming mode
    (``MMA="bf16x2pre", SQ_MODE=2``) the k-loop is only asynchronous copies and three tensor-core
    products from shared memory: x @ fn_hi^T, x @ fn_lo^T and x @ x^T, whose diagonal is the sum of
    squares (x never goes through registers: converting it there made the loop issue-bound).
    Each split stores its partials mix-major (``part[s, n, t]``, ``sq[s, t]``); then the *last
    split to arrive* at a token block (an atomic ticket per block, reset by that program: no
    memset launch; the split sum keeps a fixed order, so results are deterministic) reduces the
    block's partials and computes, one token per thread, the RMS factor, the sigmoids and the
    20-iteration Sinkhorn (16 scalars per token, no cross-thread traffic). It writes ``post``,
    ``comb`` and a ``pre [T, 4]`` workspace.
``_collapse_kernel`` (kernel 2)
    A pure stream: ``out[t] = bf16(sum_c pre[t, c] * x[t, c])`` (+ RMSNorm), one token per
    program, tokens in reverse order (rows kernel 1 read last are the likeliest L2 hits). With
    ``ROW_EARLY`` the row is requested *before* the PDL wait (kernel 1 only reads the residual,
    and it releases kernel 2 only after its own wait: the residual's producer has finished), so
    the row's latency overlaps kernel 1's tail. Measured at 94 % of the copy bandwidth.

GEMM modes (``MMA``): ``"bf16x2pre"`` (above), ``"bf16x2"`` (fn split per k-step in-kernel),
``"tf32"`` (x converted to fp32 in registers; T = 1, where the GEMM is a few k-steps per
program) and ``"ieee"`` (exact fp32: the interpreter and non-NVIDIA targets). hi + lo carries
fn to ~2^-17 relative, more than TF32's 2^-11.

PDL: every kernel waits before its first read of anything a predecessor wrote and releases its
dependents after its last store, or right after the wait with ``EARLY_TRIGGER`` (only when the
whole grid is resident at once: kernel 2 then launches while kernel 1 runs and prefetches).
"""
from __future__ import annotations

import triton
import triton.language as tl

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre.triton_parts import norm_stored_row, split_program, store_chunk, store_row


# ---------------------------------------------------------------------------------------------
# per-token math of the finishing program (tokens along threads, everything elementwise)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _softmax4(a, b, c, d, eps):
    m = tl.maximum(tl.maximum(a, b), tl.maximum(c, d))
    a = tl.exp(a - m)
    b = tl.exp(b - m)
    c = tl.exp(c - m)
    d = tl.exp(d - m)
    r = 1.0 / (a + b + c + d)
    return a * r + eps, b * r + eps, c * r + eps, d * r + eps


@triton.jit
def _scale4(a, b, c, d, eps):
    """Divide four values by their sum + eps (one division, four products)."""
    r = 1.0 / (a + b + c + d + eps)
    return a * r, b * r, c * r, d * r


@triton.jit
def _scale_rows16(m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33, eps):
    """Row normalization of 4x4 matrices held as 16 vectors, row j = ``mj0..mj3`` (passed in
    column-major order, the same call normalizes the columns)."""
    m00, m01, m02, m03 = _scale4(m00, m01, m02, m03, eps)
    m10, m11, m12, m13 = _scale4(m10, m11, m12, m13, eps)
    m20, m21, m22, m23 = _scale4(m20, m21, m22, m23, eps)
    m30, m31, m32, m33 = _scale4(m30, m31, m32, m33, eps)
    return m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33


@triton.jit
def _sinkhorn16(m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33, iters, eps):
    """Sinkhorn (spec 2.1 step 5) on 4x4 matrices held as 16 same-layout vectors (one entry of
    every token's matrix each): row softmax + eps, column normalization, then ``iters - 1``
    row/column rounds. Row j is ``mj0..mj3``; column k is ``m0k..m3k``."""
    m00, m01, m02, m03 = _softmax4(m00, m01, m02, m03, eps)
    m10, m11, m12, m13 = _softmax4(m10, m11, m12, m13, eps)
    m20, m21, m22, m23 = _softmax4(m20, m21, m22, m23, eps)
    m30, m31, m32, m33 = _softmax4(m30, m31, m32, m33, eps)
    # columns: the rows of the transpose (the names in column-major order)
    m00, m10, m20, m30, m01, m11, m21, m31, m02, m12, m22, m32, m03, m13, m23, m33 = _scale_rows16(
        m00, m10, m20, m30, m01, m11, m21, m31, m02, m12, m22, m32, m03, m13, m23, m33, eps)
    for _ in range(iters - 1):
        m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33 = _scale_rows16(
            m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33, eps)
        m00, m10, m20, m30, m01, m11, m21, m31, m02, m12, m22, m32, m03, m13, m23, m33 = _scale_rows16(
            m00, m10, m20, m30, m01, m11, m21, m31, m02, m12, m22, m32, m03, m13, m23, m33, eps)
    return m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33


@triton.jit
def _logits4(g_ptr, b_ptr, J0: tl.constexpr, s, mask):
    """Logits ``J0 .. J0 + 3`` of every token's comb: ``g[j] * s + base[j]``."""
    return (tl.load(g_ptr + J0, mask=mask, other=0.0) * s + tl.load(b_ptr + J0),
            tl.load(g_ptr + (J0 + 1), mask=mask, other=0.0) * s + tl.load(b_ptr + (J0 + 1)),
            tl.load(g_ptr + (J0 + 2), mask=mask, other=0.0) * s + tl.load(b_ptr + (J0 + 2)),
            tl.load(g_ptr + (J0 + 3), mask=mask, other=0.0) * s + tl.load(b_ptr + (J0 + 3)))


@triton.jit
def _store4(p, J0: tl.constexpr, a, b, c, d, mask):
    tl.store(p + J0, a, mask=mask)
    tl.store(p + (J0 + 1), b, mask=mask)
    tl.store(p + (J0 + 2), c, mask=mask)
    tl.store(p + (J0 + 3), d, mask=mask)


@triton.jit
def _finish_block(part_ptr, sq_ptr, mix_ptr, scale_ptr, base_ptr, pre_ptr, post_ptr, comb_ptr, row0, T, K, n_splits,
                  rms_eps, hc_eps, post_mult, sinkhorn_iters,
                  N: tl.constexpr, N_PAD: tl.constexpr, FIN_M: tl.constexpr, S_CHUNK: tl.constexpr,
                  N_S_CHUNKS: tl.constexpr, MIX_W: tl.constexpr):
    """Reduce the split partials of tokens ``row0 .. row0 + FIN_M`` and write pre (+ post, comb)."""
    toks = row0 + tl.arange(0, FIN_M)
    t_ok = toks < T
    n_idx = tl.arange(0, N_PAD)
    ss = tl.arange(0, S_CHUNK)
    G = tl.zeros((N_PAD, FIN_M), dtype=tl.float32)
    SQ = tl.zeros((S_CHUNK, FIN_M), dtype=tl.float32)
    for c in range(N_S_CHUNKS):  # rolled: an unrolled loop hoists every chunk's loads and spills
        s = c * S_CHUNK + ss
        s_ok = s < n_splits
        offs = (s[:, None, None] * N + n_idx[None, :, None]).to(tl.int64) * T + toks[None, None, :]
        m = s_ok[:, None, None] & (n_idx < N)[None, :, None] & t_ok[None, None, :]
        # .cg: other programs wrote these (L1 is not coherent)
        G += tl.sum(tl.load(part_ptr + offs, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
        SQ += tl.load(sq_ptr + s[:, None].to(tl.int64) * T + toks[None, :], mask=s_ok[:, None] & t_ok[None, :],
                      other=0.0, cache_modifier=".cg")
    # Re-layout through a [T, MIX_W] workspace (mixes, sum of squares in the last slot): one store,
    # a barrier, then one vector per mix with every token's values in one thread. Extracting the
    # rows of G in registers cost a cross-thread reduction each.
    mrow = mix_ptr + toks.to(tl.int64) * MIX_W
    tl.store(mrow[None, :] + n_idx[:, None], G, mask=(n_idx < N)[:, None] & t_ok[None, :])
    tl.store(mrow + (MIX_W - 1), tl.sum(SQ, axis=0), mask=t_ok)
    tl.debug_barrier()
    rinv = tl.math.rsqrt(tl.load(mrow + (MIX_W - 1), mask=t_ok, other=1.0) / K + rms_eps)
    rowp = toks.to(tl.int64) * 4
    s0 = tl.load(scale_ptr)
    for c in tl.static_range(4):
        pre = tl.sigmoid(tl.load(mrow + c, mask=t_ok, other=0.0) * rinv * s0 + tl.load(base_ptr + c)) + hc_eps
        tl.store(pre_ptr + rowp + c, pre, mask=t_ok)
    if N == 24:
        s1 = tl.load(scale_ptr + 1)
        for c in tl.static_range(4):
            g = tl.load(mrow + 4 + c, mask=t_ok, other=0.0)
            tl.store(post_ptr + rowp + c, tl.sigmoid(g * rinv * s1 + tl.load(base_ptr + 4 + c)) * post_mult, mask=t_ok)
        s2 = tl.load(scale_ptr + 2) * rinv
        lg = mrow + 8
        lb = base_ptr + 8
        m00, m01, m02, m03 = _logits4(lg, lb, 0, s2, t_ok)
        m10, m11, m12, m13 = _logits4(lg, lb, 4, s2, t_ok)
        m20, m21, m22, m23 = _logits4(lg, lb, 8, s2, t_ok)
        m30, m31, m32, m33 = _logits4(lg, lb, 12, s2, t_ok)
        m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33 = _sinkhorn16(
            m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33, sinkhorn_iters, hc_eps)
        cp = comb_ptr + toks.to(tl.int64) * 16
        _store4(cp, 0, m00, m01, m02, m03, t_ok)
        _store4(cp, 4, m10, m11, m12, m13, t_ok)
        _store4(cp, 8, m20, m21, m22, m23, t_ok)
        _store4(cp, 12, m30, m31, m32, m33, t_ok)


@triton.jit
def _store_partials_and_finish(acc, sq, part_ptr, sq_ptr, cnt_ptr, mix_ptr, scale_ptr, base_ptr, pre_ptr, post_ptr,
                               comb_ptr, mblk, split, T, K, n_splits, rms_eps, hc_eps, post_mult, sinkhorn_iters,
                               N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               FIN_M: tl.constexpr, S_CHUNK: tl.constexpr, N_S_CHUNKS: tl.constexpr,
                               MIX_W: tl.constexpr):
    """Store this split's partials; the last split of the token block then finishes the block."""
    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < T
    ns = tl.arange(0, BLOCK_N)
    offs = (split * N + ns[None, :]).to(tl.int64) * T + rows[:, None]
    tl.store(part_ptr + offs, acc, mask=row_ok[:, None] & (ns < N)[None, :])
    tl.store(sq_ptr + split.to(tl.int64) * T + rows, sq, mask=row_ok)
    # every thread's stores are issued before the (single-thread, gpu-scope release) ticket;
    # the acquire side is the ticket's acq_rel plus the barrier Triton puts after a scalar atomic
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr + mblk, 1, sem="acq_rel", scope="gpu")
    if ticket == n_splits - 1:
        _finish_block(part_ptr, sq_ptr, mix_ptr, scale_ptr, base_ptr, pre_ptr, post_ptr, comb_ptr, mblk * BLOCK_M,
                      T, K, n_splits, rms_eps, hc_eps, post_mult, sinkhorn_iters, N, N_PAD, FIN_M, S_CHUNK,
                      N_S_CHUNKS, MIX_W)
        tl.atomic_xchg(cnt_ptr + mblk, 0, sem="relaxed", scope="gpu")  # ready for the next launch


# ---------------------------------------------------------------------------------------------
# kernel 1: split-K prenorm GEMM (+ finishing)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _split_fn_kernel(fn_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """``fn`` fp32 [N, K] -> bf16 [2, BLOCK_N, K]: hi = bf16(fn), lo = bf16(fn - hi), rows >= N zero.

    hi + lo carries fn to ~2^-17 relative (TF32 keeps 2^-11), and both halves feed bf16 MMAs
    straight from shared memory."""
    ks = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    k_ok = ks < K
    ns = tl.arange(0, BLOCK_N)
    tc.pdl_wait(USE_PDL)
    w = tl.load(fn_ptr + ns[:, None] * K + ks[None, :], mask=(ns < N)[:, None] & k_ok[None, :], other=0.0)
    hi = w.to(tl.bfloat16)
    lo = (w - hi.to(tl.float32)).to(tl.bfloat16)
    tl.store(out_ptr + ns[:, None] * K + ks[None, :], hi, mask=k_ok[None, :])
    tl.store(out_ptr + (BLOCK_N + ns)[:, None] * K + ks[None, :], lo, mask=k_ok[None, :])
    tc.pdl_launch_dependents(USE_PDL)


@triton.jit
def _prenorm_gemm_kernel(x_ptr, w_ptr, part_ptr, sq_ptr, cnt_ptr, mix_ptr, scale_ptr, base_ptr, pre_ptr, post_ptr,
                         comb_ptr, T, K, n_splits, kb_per_split, kb_rem, rms_eps, hc_eps, post_mult, sinkhorn_iters,
                         N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, FIN_M: tl.constexpr, S_CHUNK: tl.constexpr,
                         N_S_CHUNKS: tl.constexpr, MIX_W: tl.constexpr, MMA: tl.constexpr, SQ_MODE: tl.constexpr,
                         USE_PDL: tl.constexpr, EARLY_TRIGGER: tl.constexpr):
    """``MMA``: "tf32" / "ieee" (fp32 fn, x converted in registers), "bf16x2" (fn split into
    bf16 hi + lo per k-step) or "bf16x2pre" (``w_ptr`` is ``_split_fn_kernel``'s output).
    ``SQ_MODE``: 0 reduce x^2 every k-step, 1 keep a 2-D tile and reduce once, 2 on the tensor
    cores as the diagonal of x x^T (bf16 modes only: the x tile then never leaves shared memory)."""
    mblk, split, kb_begin, kb_count = split_program(n_splits, kb_per_split, kb_rem)

    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    # rows past T re-read row T-1 (their results are never stored): the loads need no mask
    x_rows = x_ptr + tl.minimum(rows, T - 1).to(tl.int64)[:, None] * K
    ns = tl.arange(0, BLOCK_N)
    w_cols = w_ptr + ns[None, :] * K
    w_lo = w_ptr + (BLOCK_N + ns)[None, :] * K
    w_mask = (ns < N)[None, :]
    ks = tl.arange(0, BLOCK_K)  # K % BLOCK_K == 0 (D % 16 == 0, gates.D_MULTIPLE): no k mask

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SQ_MODE == 2:
        aat = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    elif SQ_MODE == 1:
        sq2 = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    else:
        sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    tc.pdl_wait(USE_PDL)
    if EARLY_TRIGGER:
        tc.pdl_launch_dependents(USE_PDL)
    for i in range(kb_count):
        k = (kb_begin + i) * BLOCK_K + ks
        a = tl.load(x_rows + k[None, :])
        if MMA == "bf16x2pre":
            # pad rows (n >= N) are masked: zero-filled in shared memory, never fetched
            acc = tl.dot(a, tl.load(w_cols + k[:, None], mask=w_mask, other=0.0), acc)
            acc = tl.dot(a, tl.load(w_lo + k[:, None], mask=w_mask, other=0.0), acc)
        elif MMA == "bf16x2":
            b = tl.load(w_cols + k[:, None], mask=w_mask, other=0.0)
            b_hi = b.to(tl.bfloat16)
            acc = tl.dot(a, b_hi, acc)
            acc = tl.dot(a, (b - b_hi.to(tl.float32)).to(tl.bfloat16), acc)
        else:
            b = tl.load(w_cols + k[:, None], mask=w_mask, other=0.0)
            acc = tl.dot(a.to(tl.float32), b, acc, input_precision=MMA)
        if SQ_MODE == 2:
            aat = tl.dot(a, tl.trans(a), aat)
        elif SQ_MODE == 1:
            af = a.to(tl.float32)
            sq2 += af * af
        else:
            af = a.to(tl.float32)
            sq += tl.sum(af * af, axis=1)
    if SQ_MODE == 2:
        ii = tl.arange(0, BLOCK_M)
        sq = tl.sum(tl.where(ii[:, None] == ii[None, :], aat, 0.0), axis=1)
    elif SQ_MODE == 1:
        sq = tl.sum(sq2, axis=1)

    _store_partials_and_finish(acc, sq, part_ptr, sq_ptr, cnt_ptr, mix_ptr, scale_ptr, base_ptr, pre_ptr, post_ptr,
                               comb_ptr, mblk, split, T, K, n_splits, rms_eps, hc_eps, post_mult, sinkhorn_iters,
                               N, N_PAD, BLOCK_M, BLOCK_N, FIN_M, S_CHUNK, N_S_CHUNKS, MIX_W)
    if not EARLY_TRIGGER:
        tc.pdl_launch_dependents(USE_PDL)


# ---------------------------------------------------------------------------------------------
# kernel 2: weighted collapse of the 4 streams (+ RMSNorm)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_streams(x_row, d, d_ok, D):
    x0 = tl.load(x_row + d, mask=d_ok, other=0.0)
    x1 = tl.load(x_row + D + d, mask=d_ok, other=0.0)
    x2 = tl.load(x_row + 2 * D + d, mask=d_ok, other=0.0)
    x3 = tl.load(x_row + 3 * D + d, mask=d_ok, other=0.0)
    return x0, x1, x2, x3


@triton.jit
def _collapse_kernel(res_ptr, pre_ptr, norm_w_ptr, out_ptr, T, D, norm_eps,
                     BLOCK_D: tl.constexpr, NUM_CHUNKS: tl.constexpr, HAS_NORM: tl.constexpr,
                     ROW_EARLY: tl.constexpr, USE_PDL: tl.constexpr):
    t = T - 1 - tl.program_id(0)  # reverse order: rows kernel 1 read last are still in L2
    t64 = t.to(tl.int64)
    x_row = res_ptr + t64 * (4 * D)
    out_row = out_ptr + t64 * D
    ds = tl.arange(0, BLOCK_D)
    if NUM_CHUNKS == 1:
        d_ok = ds < D
        if ROW_EARLY:  # the predecessor does not write the residual: request the row before the wait
            x0, x1, x2, x3 = _load_streams(x_row, ds, d_ok, D)
            tc.pdl_wait(USE_PDL)
        else:
            tc.pdl_wait(USE_PDL)
            x0, x1, x2, x3 = _load_streams(x_row, ds, d_ok, D)
        p = pre_ptr + t64 * 4
        y = (tl.load(p) * x0.to(tl.float32) + tl.load(p + 1) * x1.to(tl.float32)
             + tl.load(p + 2) * x2.to(tl.float32) + tl.load(p + 3) * x3.to(tl.float32))
        store_row(out_row, y.to(out_ptr.dtype.element_ty), norm_w_ptr, ds, d_ok, D, norm_eps, HAS_NORM)
    else:
        tc.pdl_wait(USE_PDL)
        p = pre_ptr + t64 * 4
        p0 = tl.load(p)
        p1 = tl.load(p + 1)
        p2 = tl.load(p + 2)
        p3 = tl.load(p + 3)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for c in range(NUM_CHUNKS):
            d = c * BLOCK_D + ds
            d_ok = d < D
            x0, x1, x2, x3 = _load_streams(x_row, d, d_ok, D)
            y = p0 * x0.to(tl.float32) + p1 * x1.to(tl.float32) + p2 * x2.to(tl.float32) + p3 * x3.to(tl.float32)
            acc = store_chunk(out_row, d, y.to(out_ptr.dtype.element_ty), d_ok, acc, HAS_NORM)
        if HAS_NORM:
            norm_stored_row(out_row, norm_w_ptr, acc, D, norm_eps, BLOCK_D, NUM_CHUNKS)
    tc.pdl_launch_dependents(USE_PDL)
