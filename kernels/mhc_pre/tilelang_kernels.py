"""TileLang kernels of the mHC family for Hopper (sm90), their compile cache and their launchers.

Imported only once ``import tilelang`` worked (``tilelang.py`` of each op checks that first). Three
kernels, each JIT-compiled once per (hidden size, variant) and cached (``compile_key``); the token
count and the split count are dynamic dimensions, so no T ever triggers a recompile:

``gemm_sqsum`` (kernel 1 of mhc_pre, spec 2.6)
    Split-K ``x [T, 4D] bf16 @ fn [24, 4D]^T`` on TF32 tensor cores plus the sum of squares of
    the same x tile. Grid ``(ceil(T / 32), S)``; split ``s`` owns a contiguous range of 64-wide
    k-blocks (the first ``nKB % S`` splits one more, the engines' partition). The bf16 tile goes
    global -> shared (``cp.async``, the next k-block issued before this one's MMA) -> registers,
    is widened to fp32 there (exact: bf16 is a subset of TF32) and feeds both the MMA and the squares. fn is a 32-row tile
    of which 24 rows exist: rows past 24 only reach output columns 24..31, which nobody reads.
    Writes partials ``part [S, T, 32]`` and ``sq [S, T]``; nothing is reduced here.
``big_fuse`` (kernel 2)
    One CTA per token. All warps reduce the token's S partial rows (thread ``tx`` takes mix column
    ``tx % 32`` of splits ``tx // 32, + G, ...``, every load issued up front: S <= MAX_SPLITS, so
    the loop is unrolled and predicated), a shared-memory pass folds the G groups; then every
    thread derives rinv and the four ``pre`` weights, thread 0 computes ``post`` and the
    20-iteration Sinkhorn on sixteen registers (one reciprocal per row / column), and all threads
    stream the weighted collapse of the 4 streams into a register row, round it to bf16 and,
    with a norm weight, apply the model's RMSNorm to the rounded row (block reduction) - the
    reference's rounding, ``kernels/mhc_pre/reference.py``.
``post_mix`` (mhc_post, spec 2.3)
    ``out[t, k] = bf16(post[t, k] f[t] + sum_j comb[t, j, k] residual[t, j])``: grid
    ``(T, ceil(D / 1024))``, 1024 columns per CTA (vector loads), the 20 per-token mixes staged
    in shared memory.

mhc_post_pre is ``post_mix`` then mhc_pre's two kernels on the new residual (what the Triton
provider does outside 2..64 tokens, measured faster there than fusing the GEMM into the post).

PDL (kernel-anchors section 5): every kernel calls ``T.pdl_sync()`` before its first read of
anything a predecessor wrote and ``T.pdl_trigger()`` after its last store; TileLang then launches
it with the programmatic-serialization attribute. ``FUSEGRAPH_PDL=0`` compiles variants without.

Compile target: ``{"kind": "cuda", "arch": "sm_90a"}`` on Hopper; ``lower_sources()`` lowers every
kernel to CUDA C++ for a given arch without a GPU (the compile-only test feeds that to nvcc).
Pass configs follow the published TileLang mHC kernels: no TMA lowering, no warp specialization
(plain ``cp.async`` pipelines; the tiles are small).

No ``from __future__ import annotations`` here: TileLang evaluates the kernels' tensor annotations,
which name closure variables (K, D), at definition time.
"""
import functools
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

import torch
from torch import Tensor

import tilelang
import tilelang.language as T

from fusegraph.kernels.mhc_pre import host
from fusegraph.kernels.mhc_pre.gates import HC_MULT, NUM_MIX

MIX_PAD = 32          # GEMM tile width: the 24 mixes, padded (partials are [S, T, 32])
BLOCK_M = 32          # tokens per GEMM CTA (mma.sync m16n8k8 TF32 on a 2 x 2 warp grid)
BLOCK_K = 64          # k-block (the engines' partition unit; K = 4D is a multiple of 64)
GEMM_THREADS = 128
# TileLang 0.1.15 mis-lowers a 2-stage pipeline over a runtime trip count (``wait_group(1 - kb)``
# fails codegen); with 1 stage it still issues the next k-block's copies before the current MMA.
GEMM_STAGES = 1
MIN_KB_PER_SPLIT = 4  # each split keeps >= 4 k-blocks (engine rule nKB // 4)
PROGRAMS_PER_SM = 2
MAX_SPLITS = 128      # the fuse kernel's unrolled split reduction covers at most this many
VEC = 8               # bf16 per 16-byte vector
POST_COLS = 1024      # columns per post CTA
MAX_D = 8192          # register row of the fuse kernel: at most 32 fp32 per thread (256 threads)

PASS_CONFIGS = {
    tilelang.PassConfigKey.TL_DISABLE_WARP_SPECIALIZED: True,
    tilelang.PassConfigKey.TL_DISABLE_TMA_LOWER: True,
}

F32 = "float32"
BF16 = "bfloat16"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# kernel builders (pure: shapes in, PrimFunc out; no GPU needed)
# ---------------------------------------------------------------------------------------------
def gemm_sqsum_func(D: int, n_mix: int = NUM_MIX, use_pdl: bool = True):
    """Kernel 1: split-K ``x @ fn^T`` (TF32) + sum of squares -> ``part [S, T, 32]``, ``sq [S, T]``."""
    K = HC_MULT * D
    n_kb = K // BLOCK_K
    assert K % BLOCK_K == 0 and n_mix <= MIX_PAD
    num_tokens = T.dynamic("num_tokens")
    num_splits = T.dynamic("num_splits")

    @T.prim_func
    def mhc_gemm_sqsum(
        x: T.Tensor((num_tokens, K), BF16),
        fn: T.Tensor((n_mix, K), F32),
        part: T.Tensor((num_splits, num_tokens, MIX_PAD), F32),
        sq: T.Tensor((num_splits, num_tokens), F32),
    ):
        with T.Kernel(T.ceildiv(num_tokens, BLOCK_M), num_splits, threads=GEMM_THREADS) as (bm, bs):
            x_shared = T.alloc_shared((BLOCK_M, BLOCK_K), BF16)
            fn_shared = T.alloc_shared((MIX_PAD, BLOCK_K), F32)
            x_bf16 = T.alloc_fragment((BLOCK_M, BLOCK_K), BF16)
            x_f32 = T.alloc_fragment((BLOCK_M, BLOCK_K), F32)
            squares = T.alloc_fragment((BLOCK_M, BLOCK_K), F32)
            acc = T.alloc_fragment((BLOCK_M, MIX_PAD), F32)
            sq_rows = T.alloc_fragment((BLOCK_M,), F32)
            T.clear(acc)
            T.clear(squares)
            per_split = n_kb // num_splits
            extra = n_kb % num_splits
            kb_begin = bs * per_split + T.min(bs, extra)
            kb_count = per_split + T.if_then_else(bs < extra, 1, 0)
            if use_pdl:
                T.pdl_sync()
            for kb in T.Pipelined(kb_count, num_stages=GEMM_STAGES):
                T.copy(x[bm * BLOCK_M, (kb_begin + kb) * BLOCK_K], x_shared)
                T.copy(fn[0, (kb_begin + kb) * BLOCK_K], fn_shared)
                T.copy(x_shared, x_bf16)
                T.copy(x_bf16, x_f32)  # bf16 -> fp32 is exact (and exact in TF32)
                for i, j in T.Parallel(BLOCK_M, BLOCK_K):
                    squares[i, j] += x_f32[i, j] * x_f32[i, j]
                T.gemm(x_f32, fn_shared, acc, transpose_B=True)
            T.reduce_sum(squares, sq_rows, dim=1)
            for i in T.Parallel(BLOCK_M):
                if bm * BLOCK_M + i < num_tokens:
                    sq[bs, bm * BLOCK_M + i] = sq_rows[i]
            for i, j in T.Parallel(BLOCK_M, MIX_PAD):
                if bm * BLOCK_M + i < num_tokens:
                    part[bs, bm * BLOCK_M + i, j] = acc[i, j]
            if use_pdl:
                T.pdl_trigger()

    return mhc_gemm_sqsum


def fuse_threads(D: int) -> int:
    return 256 if D > 4096 else 128 if D >= 1024 else 32


def fuse_block_d(D: int) -> int:
    """The register row: D rounded up to 4-wide vectors over all threads (== D at DSV4 sizes)."""
    unit = fuse_threads(D) * 4
    return cdiv(D, unit) * unit


def big_fuse_func(D: int, norm_dtype: Optional[str], use_pdl: bool = True):
    """Kernel 2: split sum, RMS factor, sigmoids, Sinkhorn, collapse (+ RMSNorm), one CTA per token.

    ``norm_dtype``: the norm weight's dtype ("bfloat16" / "float32"), or None without the norm.
    """
    K = HC_MULT * D
    threads = fuse_threads(D)
    groups = threads // 32
    per_thread = cdiv(MAX_SPLITS, groups)  # unrolled, predicated split loads per thread
    block_d = fuse_block_d(D)
    padded = block_d != D
    has_norm = norm_dtype is not None
    w_dtype = norm_dtype or F32
    num_tokens = T.dynamic("num_tokens")
    num_splits = T.dynamic("num_splits")

    @T.macro
    def split_sums(part, sq, t, mix):
        """``mix[n] = sum_s part[s, t, n]`` for n < 31, ``mix[31] = sum_s sq[s, t]`` (shared row)."""
        tx = T.get_thread_binding()
        lane = tx % 32
        group = tx // 32
        col_part = T.alloc_shared((groups, 32), F32)
        sq_part = T.alloc_shared((groups,), F32)
        acc = T.alloc_local((1,), F32)
        sacc = T.alloc_local((1,), F32)
        acc[0] = 0.0
        sacc[0] = 0.0
        for i in T.unroll(per_thread):  # every load issued before the first add needs it
            if group + i * groups < num_splits:
                acc[0] += part[group + i * groups, t, lane]
        for i in T.unroll(cdiv(MAX_SPLITS, threads)):
            if tx + i * threads < num_splits:
                sacc[0] += sq[tx + i * threads, t]
        col_part[group, lane] = acc[0]
        sacc[0] = T.warp_reduce_sum(sacc[0])
        if lane == 0:
            sq_part[group] = sacc[0]
        T.sync_threads()
        if tx < 32:
            acc[0] = 0.0
            for g in T.unroll(groups):
                acc[0] += col_part[g, tx]
            if tx == MIX_PAD - 1:  # column 31 is padding: it carries the sum of squares instead
                acc[0] = 0.0
                for g in T.unroll(groups):
                    acc[0] += sq_part[g]
            mix[tx] = acc[0]
        T.sync_threads()

    @T.macro
    def post_and_sinkhorn(mix, rinv, scale, base, post, comb, t, hc_eps, post_mult, sinkhorn_iters):
        """One thread: post and the Sinkhorn-normalized comb of token t (sixteen registers)."""
        cm = T.alloc_local((16,), F32)
        for c in T.unroll(HC_MULT):
            post[t, c] = T.sigmoid(mix[4 + c] * rinv * scale[1] + base[4 + c]) * post_mult
        for e in T.unroll(16):
            cm[e] = mix[8 + e] * rinv * scale[2] + base[8 + e]
        # softmax over each row (+ eps), then a column normalization
        for j in T.unroll(4):
            m = T.max(T.max(cm[4 * j], cm[4 * j + 1]), T.max(cm[4 * j + 2], cm[4 * j + 3]))
            for k in T.unroll(4):
                cm[4 * j + k] = T.exp(cm[4 * j + k] - m)
            r = 1.0 / (cm[4 * j] + cm[4 * j + 1] + cm[4 * j + 2] + cm[4 * j + 3])
            for k in T.unroll(4):
                cm[4 * j + k] = cm[4 * j + k] * r + hc_eps
        for k in T.unroll(4):
            r = 1.0 / (cm[k] + cm[4 + k] + cm[8 + k] + cm[12 + k] + hc_eps)
            for j in T.unroll(4):
                cm[4 * j + k] = cm[4 * j + k] * r
        for _ in T.serial(sinkhorn_iters - 1):  # the four rows (columns) are independent: ILP 4
            for j in T.unroll(4):
                r = 1.0 / (cm[4 * j] + cm[4 * j + 1] + cm[4 * j + 2] + cm[4 * j + 3] + hc_eps)
                for k in T.unroll(4):
                    cm[4 * j + k] = cm[4 * j + k] * r
            for k in T.unroll(4):
                r = 1.0 / (cm[k] + cm[4 + k] + cm[8 + k] + cm[12 + k] + hc_eps)
                for j in T.unroll(4):
                    cm[4 * j + k] = cm[4 * j + k] * r
        for e in T.unroll(16):
            comb[t, e] = cm[e]

    @T.macro
    def collapse(residual, norm_w, out, t, norm_eps, p0, p1, p2, p3):
        y = T.alloc_fragment((block_d,), F32)
        for d in T.Parallel(block_d):
            if padded:
                y[d] = T.if_then_else(
                    d < D,
                    p0 * T.Cast(F32, residual[t, 0, d]) + p1 * T.Cast(F32, residual[t, 1, d])
                    + p2 * T.Cast(F32, residual[t, 2, d]) + p3 * T.Cast(F32, residual[t, 3, d]),
                    0.0)
            else:
                y[d] = (p0 * T.Cast(F32, residual[t, 0, d]) + p1 * T.Cast(F32, residual[t, 1, d])
                        + p2 * T.Cast(F32, residual[t, 2, d]) + p3 * T.Cast(F32, residual[t, 3, d]))
        if has_norm:
            # the model's RMSNorm sees the bf16-rounded collapse (the reference's rounding)
            squares = T.alloc_fragment((block_d,), F32)
            total = T.alloc_fragment((1,), F32)
            for d in T.Parallel(block_d):
                y[d] = T.Cast(F32, T.Cast(BF16, y[d]))
                squares[d] = y[d] * y[d]
            T.reduce_sum(squares, total, dim=0)
            for d in T.Parallel(block_d):
                if d < D:
                    out[t, d] = T.Cast(BF16, y[d] * T.rsqrt(total[0] / D + norm_eps) * T.Cast(F32, norm_w[d]))
        else:
            for d in T.Parallel(block_d):
                if d < D:
                    out[t, d] = T.Cast(BF16, y[d])

    @T.prim_func
    def mhc_big_fuse(
        part: T.Tensor((num_splits, num_tokens, MIX_PAD), F32),
        sq: T.Tensor((num_splits, num_tokens), F32),
        scale: T.Tensor((3,), F32),
        base: T.Tensor((NUM_MIX,), F32),
        residual: T.Tensor((num_tokens, HC_MULT, D), BF16),
        norm_w: T.Tensor((D,), w_dtype),
        out: T.Tensor((num_tokens, D), BF16),
        post: T.Tensor((num_tokens, HC_MULT), F32),
        comb: T.Tensor((num_tokens, HC_MULT * HC_MULT), F32),
        rms_eps: T.float32,
        hc_eps: T.float32,
        norm_eps: T.float32,
        post_mult: T.float32,
        sinkhorn_iters: T.int32,
    ):
        with T.Kernel(num_tokens, threads=threads) as bt:
            t = num_tokens - 1 - bt  # reverse order: rows kernel 1 read last are the likeliest L2 hits
            mix = T.alloc_shared((MIX_PAD,), F32)
            if use_pdl:
                T.pdl_sync()
            split_sums(part, sq, t, mix)
            rinv = T.rsqrt(mix[MIX_PAD - 1] / K + rms_eps)
            # every thread derives the four pre weights itself: no barrier between mixes and collapse
            p0 = T.sigmoid(mix[0] * rinv * scale[0] + base[0]) + hc_eps
            p1 = T.sigmoid(mix[1] * rinv * scale[0] + base[1]) + hc_eps
            p2 = T.sigmoid(mix[2] * rinv * scale[0] + base[2]) + hc_eps
            p3 = T.sigmoid(mix[3] * rinv * scale[0] + base[3]) + hc_eps
            if T.get_thread_binding() == 0:
                post_and_sinkhorn(mix, rinv, scale, base, post, comb, t, hc_eps, post_mult, sinkhorn_iters)
            collapse(residual, norm_w, out, t, norm_eps, p0, p1, p2, p3)
            if use_pdl:
                T.pdl_trigger()

    return mhc_big_fuse


def post_threads(D: int) -> int:
    return 128 if D >= POST_COLS else 32


def post_mix_func(D: int, use_pdl: bool = True):
    """mhc_post: one CTA per (token, 1024-column chunk)."""
    threads = post_threads(D)
    cols = threads * VEC
    n_chunks = cdiv(D, cols)
    padded = n_chunks * cols != D
    num_tokens = T.dynamic("num_tokens")

    @T.prim_func
    def mhc_post_mix(
        f: T.Tensor((num_tokens, D), BF16),
        residual: T.Tensor((num_tokens, HC_MULT, D), BF16),
        post: T.Tensor((num_tokens, HC_MULT), F32),
        comb: T.Tensor((num_tokens, HC_MULT * HC_MULT), F32),
        out: T.Tensor((num_tokens, HC_MULT, D), BF16),
    ):
        with T.Kernel(num_tokens, n_chunks, threads=threads) as (t, ch):
            tx = T.get_thread_binding()
            w = T.alloc_shared((HC_MULT + HC_MULT * HC_MULT,), F32)  # post[k], then comb[j, k] at 4 + 4j + k
            if use_pdl:
                T.pdl_sync()
            if tx < HC_MULT:
                w[tx] = post[t, tx]
            if tx < HC_MULT * HC_MULT:
                w[HC_MULT + tx] = comb[t, tx]
            T.sync_threads()
            for d in T.Parallel(cols):
                c = ch * cols + d
                if (not padded) or c < D:
                    fv = T.Cast(F32, f[t, c])
                    r0 = T.Cast(F32, residual[t, 0, c])
                    r1 = T.Cast(F32, residual[t, 1, c])
                    r2 = T.Cast(F32, residual[t, 2, c])
                    r3 = T.Cast(F32, residual[t, 3, c])
                    out[t, 0, c] = T.Cast(BF16, w[0] * fv + w[4] * r0 + w[8] * r1 + w[12] * r2 + w[16] * r3)
                    out[t, 1, c] = T.Cast(BF16, w[1] * fv + w[5] * r0 + w[9] * r1 + w[13] * r2 + w[17] * r3)
                    out[t, 2, c] = T.Cast(BF16, w[2] * fv + w[6] * r0 + w[10] * r1 + w[14] * r2 + w[18] * r3)
                    out[t, 3, c] = T.Cast(BF16, w[3] * fv + w[7] * r0 + w[11] * r1 + w[15] * r2 + w[19] * r3)
            if use_pdl:
                T.pdl_trigger()

    return mhc_post_mix


# ---------------------------------------------------------------------------------------------
# compile cache
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelKey:
    """One compiled kernel: which builder, for which hidden size and variant, for which arch."""

    kind: str                 # "gemm" | "fuse" | "post"
    D: int
    norm_dtype: Optional[str]  # fuse only
    use_pdl: bool
    arch: str                 # e.g. "sm_90a"

    def func(self):
        if self.kind == "gemm":
            return gemm_sqsum_func(self.D, NUM_MIX, self.use_pdl)
        if self.kind == "fuse":
            return big_fuse_func(self.D, self.norm_dtype, self.use_pdl)
        if self.kind == "post":
            return post_mix_func(self.D, self.use_pdl)
        raise ValueError(f"unknown kernel kind {self.kind!r}")


_compiled: dict[KernelKey, Any] = {}
_lock = threading.Lock()


def target_of(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch}


def compile_key(key: KernelKey):
    """Compile (TileLang's own disk cache makes a second process fast) and remember the kernel."""
    kernel = _compiled.get(key)
    if kernel is None:
        kernel = tilelang.compile(key.func(), target=target_of(key.arch), pass_configs=PASS_CONFIGS)
        with _lock:
            kernel = _compiled.setdefault(key, kernel)
    return kernel


@functools.lru_cache(maxsize=None)
def arch_of(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}" + ("a" if major == 9 else "")


def pdl_enabled(device: torch.device) -> bool:
    """PDL on sm90+ unless ``FUSEGRAPH_PDL=0`` (read at every launch, as for the Triton kernels)."""
    if os.environ.get("FUSEGRAPH_PDL", "1") == "0":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _key(kind: str, D: int, device: torch.device, norm_dtype: Optional[str] = None) -> KernelKey:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return KernelKey(kind, D, norm_dtype, pdl_enabled(device), arch_of(index))


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: BF16, torch.float32: F32}[dtype]


def keys_for(D: int, arch: str, norm_dtypes=(BF16, None), use_pdl: bool = True) -> list[KernelKey]:
    """Every kernel mhc_pre / mhc_post / mhc_post_pre need at hidden size D (bf16 norm weight or none)."""
    return ([KernelKey("gemm", D, None, use_pdl, arch), KernelKey("post", D, None, use_pdl, arch)]
            + [KernelKey("fuse", D, nd, use_pdl, arch) for nd in norm_dtypes])


def _compile_seconds(key: KernelKey) -> float:
    import time

    t0 = time.time()
    compile_key(key)
    return time.time() - t0


def prewarm(keys: list[KernelKey], workers: int = 16) -> dict[KernelKey, float]:
    """Compile ``keys`` in worker processes (lowering is single-threaded Python + TVM; nvcc runs in
    subprocesses); TileLang's disk cache hands the results to every later process. Seconds per key."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(keys))),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(keys, pool.map(_compile_seconds, keys)))


def lower_sources(D: int, arch: str = "sm_90a", use_pdl: bool = True) -> dict[str, str]:
    """CUDA C++ of every kernel at hidden size D for ``arch``, lowered without a GPU."""
    from tvm.target import Target

    target = Target(target_of(arch))
    funcs = {
        "gemm": gemm_sqsum_func(D, NUM_MIX, use_pdl),
        "fuse_norm": big_fuse_func(D, BF16, use_pdl),
        "fuse": big_fuse_func(D, None, use_pdl),
        "post": post_mix_func(D, use_pdl),
    }
    out = {}
    with target, tvm_pass_context():
        for name, func in funcs.items():
            out[name] = tilelang.lower(func, target=target).kernel_source
    return out


def tvm_pass_context():
    from tvm import transform

    return transform.PassContext(config=PASS_CONFIGS)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Allocation of every output and workspace (a seam: tests poison buffers through it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def poisoned_outputs() -> ContextManager[list[Tensor]]:
    """While active, every output and workspace the launchers allocate is NaN-filled first (the
    TileLang twin of ``testing.poisoned_outputs``); yields the list of them."""
    return host.poisoned_empty(sys.modules[__name__])


def split_count(T_: int, K: int, device: torch.device) -> int:
    """``min(2 * SMs // ceil(T / 32), nKB // 4)`` splits, at least 1, at most MAX_SPLITS."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    n_kb = K // BLOCK_K
    s = min(PROGRAMS_PER_SM * sms // cdiv(T_, BLOCK_M), n_kb // MIN_KB_PER_SPLIT)
    return max(1, min(s, MAX_SPLITS, n_kb))


def _pre_on(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
            rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
            n_splits: Optional[int]) -> tuple[Tensor, Tensor, Tensor]:
    T_, C, D = residual.shape
    dev = residual.device
    K = C * D
    S = max(1, min(n_splits or split_count(T_, K, dev), MAX_SPLITS, K // BLOCK_K))
    part = empty((S, T_, MIX_PAD), torch.float32, dev)
    sq = empty((S, T_), torch.float32, dev)
    compile_key(_key("gemm", D, dev))(residual.view(T_, K), fn, part, sq)
    out, post, comb = host.pre_outputs(residual, empty)
    norm_dtype = None if norm_weight is None else _dtype_name(norm_weight.dtype)
    fuse = compile_key(_key("fuse", D, dev, norm_dtype))
    fuse(part, sq, scale, base, residual, norm_weight if norm_weight is not None else _dummy_weight(D, dev), out,
         post, comb.view(T_, C * C), float(rms_eps), float(hc_eps), float(norm_eps), float(post_mult),
         int(sinkhorn_iters))
    return out, post, comb


_DUMMIES: dict[tuple[int, str], Tensor] = {}


def _dummy_weight(D: int, device: torch.device) -> Tensor:
    """The no-norm fuse kernel never reads its weight argument; one placeholder per (D, device)."""
    key = (D, str(device))
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros(D, dtype=torch.float32, device=device)
    return _DUMMIES[key]


def mhc_pre_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                    n_splits: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    residual, fn, scale, base, norm_weight = host.contiguous(residual, fn, scale, base, norm_weight)
    if residual.shape[0] == 0:  # no launch
        return host.pre_outputs(residual, empty)
    with torch.cuda.device(residual.device):
        return _pre_on(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters,
                       post_mult, n_splits)


def _post_on(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    T_, C, D = residual.shape
    out = empty((T_, C, D), residual.dtype, residual.device)
    compile_key(_key("post", D, residual.device))(f, residual, post, comb.reshape(T_, C * C), out)
    return out


def mhc_post_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    f, residual, post, comb = host.contiguous(f, residual, post, comb)
    if residual.shape[0] == 0:
        return empty(tuple(residual.shape), residual.dtype, residual.device)
    with torch.cuda.device(residual.device):
        return _post_on(f, residual, post, comb)


def mhc_post_pre_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                         base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                         norm_eps: float, sinkhorn_iters: int, post_mult: float,
                         n_splits: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f, residual, post, comb, fn, scale, base, norm_weight = host.contiguous(
        f, residual, post, comb, fn, scale, base, norm_weight)
    if residual.shape[0] == 0:
        return (empty(tuple(residual.shape), residual.dtype, residual.device),) + host.pre_outputs(residual, empty)
    with torch.cuda.device(residual.device):
        new_residual = _post_on(f, residual, post, comb)
        return (new_residual,) + _pre_on(new_residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps,
                                         sinkhorn_iters, post_mult, n_splits)


assert NUM_MIX <= MIX_PAD - 1  # column 31 of the fuse kernel's shared row carries the sum of squares
