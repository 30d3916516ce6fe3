"""Launchers of the mHC Triton kernels (mhc_pre, mhc_post, mhc_post_pre, hc_head) and the ops.

The jit code and its design are in ``triton_jit.py``. Per op:

* mhc_pre / hc_head: ``_prenorm_gemm_kernel`` (split-K GEMM + sum of squares; the last split of
  each token block computes pre / post / comb) then ``_collapse_kernel`` (weighted sum of the
  4 streams + optional RMSNorm). Two passes over the residual (the second partly from L2).
* mhc_post: ``_post_mix_kernel`` alone (one bandwidth-bound pass).
* mhc_post_pre: ``_post_mix_kernel`` with the next pre's GEMM fused, then ``_collapse_kernel``.

Launch sizing lives in small frozen configs (``GemmConfig``, ``PostConfig``, ``CollapseConfig``)
chosen by ``*_config(T, ...)`` from the token count and the SM count; ``benchmarks/mhc_tune.py``
passes its own to sweep them. Outputs and workspaces come from ``empty`` (tests replace it to
poison every buffer); the split tickets come from ``split_tickets`` (zeroed once, reset by the
kernels themselves, one buffer per device and stream).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre.gates import HC_MULT, NUM_MIX
from fusegraph.kernels.mhc_pre.triton_jit import (_collapse_kernel, _post_mix_kernel, _prenorm_gemm_kernel,
                                                  _split_fn_kernel)

MIX_PAD = 32          # GEMM tile width for the 24 mhc_pre mixes (tl.dot needs N >= 16, pow2)
HEAD_PAD = 16         # ... and for the 4 hc_head mixes
BLOCK_K = 64          # k-block of the prenorm GEMM (the spec's DeepGEMM/engine partition)
MIN_KB_PER_SPLIT = 4  # each split keeps >= 4 k-blocks (engine rule: nKB // 4)
PROGRAMS_PER_SM = 2   # split-K target: about two resident programs per SM
MAX_ROW_BLOCK = 8192  # the collapse keeps a [4, D] row in registers up to this D
FINISH_REGS = 96      # registers per thread for the finishing program's partial tiles
MIX_W = 32            # row of the finishing workspace: the mixes, the sum of squares last
SPLIT_FN_BLOCK = 256  # k-columns per program of the fn hi/lo split
PREPASS_MIN_T = 128   # from here on kernel 1 reads a bf16 hi/lo copy of fn (one extra small launch)
MIN_TICKETS = 1 << 14


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Allocation of every output and workspace (a seam for tests that poison buffers)."""
    return torch.empty(shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# split tickets: one int32 per token block, zero between launches
# ---------------------------------------------------------------------------------------------
_TICKETS: dict[tuple[str, int], Tensor] = {}
_RETIRED: list[Tensor] = []  # outgrown buffers stay alive: a captured CUDA graph may still use them


def split_tickets(device: torch.device, n: int) -> Tensor:
    """Zeroed int32 counters for ``n`` token blocks on ``device``, private to the current stream.

    The last split of a block resets its counter, so the buffer is zero again after every launch
    (no memset per call). Concurrent streams get separate buffers.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _TICKETS.get(key)
    if buf is None or buf.numel() < n:
        if buf is not None:
            _RETIRED.append(buf)
        buf = torch.zeros(max(n, MIN_TICKETS), dtype=torch.int32, device=device)
        _TICKETS[key] = buf
    return buf


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


@dataclass(frozen=True)
class FinishPlan:
    """The finishing program's tiles: ``fin_m`` tokens, splits reduced ``s_chunk`` at a time."""

    fin_m: int
    s_chunk: int
    n_chunks: int


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    n_splits: int
    num_warps: int = 4
    num_stages: int = 3
    mma: str = "tf32"          # "tf32" | "bf16x2" | "bf16x2pre" | "ieee" (see _prenorm_gemm_kernel)
    sq_mode: int = 0           # 0 per k-step, 1 2-D tile, 2 tensor cores (bf16 modes)
    early_trigger: bool = False


@dataclass(frozen=True)
class PostConfig:
    block_m: int
    block_d: int
    n_splits: int
    num_warps: int
    num_stages: int
    mma: str = "tf32"
    prefetch: bool = False
    fused: bool = True          # False: mhc_post, then mhc_pre's two kernels on the new residual


@dataclass(frozen=True)
class CollapseConfig:
    block_d: int
    num_chunks: int
    num_warps: int


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


def finish_plan(T: int, block_m: int, n_splits: int, n_pad: int, num_warps: int) -> FinishPlan:
    fin_m = min(block_m, tc.next_pow2(T))
    budget = FINISH_REGS * 32 * num_warps  # elements of one chunk's partial tile
    s_chunk = min(tc.next_pow2(n_splits), max(1, budget // (n_pad * fin_m)))
    s_chunk = 1 << (s_chunk.bit_length() - 1)  # a power of two
    return FinishPlan(fin_m, s_chunk, tc.cdiv(n_splits, s_chunk))


def default_mma(device: torch.device) -> str:
    return tc.dot_precision(device)  # "tf32" on NVIDIA, "ieee" elsewhere


def gemm_config(T: int, K: int, device: torch.device, n_splits: Optional[int] = None) -> GemmConfig:
    block_m = gemm_block_m(T)
    n_kb = tc.cdiv(K, BLOCK_K)
    S = max(1, min(n_splits or split_count(T, block_m, n_kb, MIN_KB_PER_SPLIT, device), n_kb))
    grid = tc.cdiv(T, block_m) * S
    mma, sq_mode = default_mma(device), 0
    if mma == "tf32" and T >= PREPASS_MIN_T:
        # streaming regime: bf16 MMAs on the raw x tile (fn split once per call), x^2 on the tensor cores
        mma, sq_mode = "bf16x2pre", 2
    return GemmConfig(block_m=block_m, n_splits=S, num_warps=4, num_stages=4 if block_m >= 64 else 3,
                      mma=mma, sq_mode=sq_mode, early_trigger=grid <= tc.num_sms(device))


def post_config(T: int, D: int, device: torch.device, fuse: bool, n_splits: Optional[int] = None) -> PostConfig:
    if fuse:
        block_m, block_d = gemm_block_m(T), 32
        S = n_splits or split_count(T, block_m, tc.cdiv(D, block_d), 2, device)
        num_warps, num_stages = (4, 3) if block_m <= 32 else (8, 2)  # ~100-140 registers (ptxas, sm90)
        return PostConfig(block_m, block_d, S, num_warps, num_stages, default_mma(device))
    # one token per program; narrow column blocks at small T so that more SMs take part
    block_d = min(tc.next_pow2(D), 1024 if T >= 64 else 256)
    S = n_splits or max(1, min(tc.cdiv(D, block_d), tc.cdiv(8 * tc.num_sms(device), T)))
    return PostConfig(1, block_d, S, max(1, min(8, block_d // 256)), 2, default_mma(device))


def collapse_config(D: int, max_block_d: int = MAX_ROW_BLOCK) -> CollapseConfig:
    block_d = min(tc.next_pow2(D), tc.next_pow2(max_block_d))
    return CollapseConfig(block_d, tc.cdiv(D, block_d), max(1, min(16, block_d // 512)))


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _pad_of(n_mix: int) -> int:
    return MIX_PAD if n_mix > HEAD_PAD else HEAD_PAD


def split_fn(fn: Tensor, block_n: int) -> Tensor:
    """``fn`` fp32 [N, K] -> bf16 [2 * block_n, K] (hi rows, then lo rows; rows past N zero)."""
    N, K = fn.shape
    out = empty((2 * block_n, K), torch.bfloat16, fn.device)
    _split_fn_kernel[(tc.cdiv(K, SPLIT_FN_BLOCK),)](
        fn, out, N, K, BLOCK_N=block_n, BLOCK=SPLIT_FN_BLOCK, USE_PDL=tc.pdl_enabled(fn.device), num_warps=4,
        **tc.launch_kwargs(fn.device))
    return out


def prenorm_mix(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, rms_eps: float, hc_eps: float,
                post_mult: float, sinkhorn_iters: int, cfg: GemmConfig
                ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Kernel 1 on ``x [T, K]``: ``pre [T, 4]`` (+ ``post``, ``comb`` when ``fn`` has 24 rows)."""
    T, K = x.shape
    N = fn.shape[0]
    dev = x.device
    plan = make_plan(T, cfg.block_m, tc.cdiv(K, BLOCK_K), cfg.n_splits)
    n_pad = tc.next_pow2(N)
    block_n = _pad_of(N)
    fin = finish_plan(T, cfg.block_m, plan.n_splits, n_pad, cfg.num_warps)
    w = split_fn(fn, block_n) if cfg.mma == "bf16x2pre" else fn
    part = empty((plan.n_splits, N, T), torch.float32, dev)
    sq = empty((plan.n_splits, T), torch.float32, dev)
    mix = empty((T, MIX_W), torch.float32, dev)
    pre = empty((T, HC_MULT), torch.float32, dev)
    full = N == NUM_MIX
    post = empty((T, HC_MULT), torch.float32, dev) if full else None
    comb = empty((T, HC_MULT, HC_MULT), torch.float32, dev) if full else None
    tickets = split_tickets(dev, plan.m_blocks)
    _prenorm_gemm_kernel[plan.grid](
        x, w, part, sq, tickets, mix, scale, base, pre, post if full else pre, comb if full else pre,
        T, K, plan.n_splits, plan.per_split, plan.rem, float(rms_eps), float(hc_eps), float(post_mult),
        int(sinkhorn_iters),
        N=N, N_PAD=n_pad, BLOCK_M=cfg.block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K, FIN_M=fin.fin_m,
        S_CHUNK=fin.s_chunk, N_S_CHUNKS=fin.n_chunks, MIX_W=MIX_W, MMA=cfg.mma, SQ_MODE=cfg.sq_mode,
        USE_PDL=tc.pdl_enabled(dev), EARLY_TRIGGER=cfg.early_trigger, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **tc.launch_kwargs(dev))
    return pre, post, comb


def collapse(residual: Tensor, pre: Tensor, norm_weight: Optional[Tensor], norm_eps: float, row_early: bool,
             cfg: CollapseConfig) -> Tensor:
    """Kernel 2: ``bf16(sum_c pre[:, c] * residual[:, c])`` (+ RMSNorm) -> ``[T, D]``."""
    T, _, D = residual.shape
    dev = residual.device
    out = empty((T, D), residual.dtype, dev)
    _collapse_kernel[(T,)](
        residual, pre, norm_weight if norm_weight is not None else out, out, T, D, float(norm_eps),
        BLOCK_D=cfg.block_d, NUM_CHUNKS=cfg.num_chunks, HAS_NORM=norm_weight is not None, ROW_EARLY=row_early,
        USE_PDL=tc.pdl_enabled(dev), num_warps=cfg.num_warps, **tc.launch_kwargs(dev))
    return out


def post_mix(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, cfg: PostConfig,
             fn: Optional[Tensor] = None, scale: Optional[Tensor] = None, base: Optional[Tensor] = None,
             rms_eps: float = 0.0, hc_eps: float = 0.0, post_mult: float = 0.0, sinkhorn_iters: int = 0
             ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """New residual; with ``fn`` also the next pre's ``pre [T, 4]``, ``post`` and ``comb``."""
    T, _, D = residual.shape
    dev = residual.device
    out = empty((T, HC_MULT, D), residual.dtype, dev)
    fuse = fn is not None
    plan = make_plan(T, cfg.block_m, tc.cdiv(D, cfg.block_d), cfg.n_splits)
    fin = finish_plan(T, cfg.block_m, plan.n_splits, MIX_PAD, cfg.num_warps)
    if fuse:
        part = empty((plan.n_splits, NUM_MIX, T), torch.float32, dev)
        sq = empty((plan.n_splits, T), torch.float32, dev)
        mix = empty((T, MIX_W), torch.float32, dev)
        pre = empty((T, HC_MULT), torch.float32, dev)
        post_next = empty((T, HC_MULT), torch.float32, dev)
        comb_next = empty((T, HC_MULT, HC_MULT), torch.float32, dev)
        tickets = split_tickets(dev, plan.m_blocks)
    else:
        part = sq = mix = pre = post_next = comb_next = tickets = None
    dummy = out
    _post_mix_kernel[plan.grid](
        f, residual, post, comb, out, *(t if fuse else dummy for t in (fn, part, sq, tickets, mix, scale, base, pre,
                                                                       post_next, comb_next)),
        T, D, plan.n_splits, plan.per_split, plan.rem, float(rms_eps), float(hc_eps), float(post_mult),
        int(sinkhorn_iters),
        BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d, BLOCK_N=MIX_PAD, FIN_M=fin.fin_m, S_CHUNK=fin.s_chunk,
        N_S_CHUNKS=fin.n_chunks, MIX_W=MIX_W, FUSE_GEMM=fuse, MMA=cfg.mma, PREFETCH=cfg.prefetch,
        USE_PDL=tc.pdl_enabled(dev), num_warps=cfg.num_warps, num_stages=cfg.num_stages, **tc.launch_kwargs(dev))
    return out, pre, post_next, comb_next


# ---------------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------------
def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _empty_pre(residual: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    T, _, D = residual.shape
    dev = residual.device
    return (empty((T, D), residual.dtype, dev), empty((T, HC_MULT), torch.float32, dev),
            empty((T, HC_MULT, HC_MULT), torch.float32, dev))


def mhc_pre_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                    n_splits: Optional[int] = None, max_block_d: int = MAX_ROW_BLOCK,
                    gemm_cfg: Optional[GemmConfig] = None, collapse_cfg: Optional[CollapseConfig] = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    residual, fn, scale, base, norm_weight = map(_c, (residual, fn, scale, base, norm_weight))
    T, C, D = residual.shape
    if T == 0:
        return _empty_pre(residual)
    dev = residual.device
    with tc.device_guard(dev):
        x = residual.view(T, C * D)
        pre, post, comb = prenorm_mix(x, fn, scale, base, rms_eps, hc_eps, post_mult, sinkhorn_iters,
                                      gemm_cfg or gemm_config(T, C * D, dev, n_splits))
        out = collapse(residual, pre, norm_weight, norm_eps, True, collapse_cfg or collapse_config(D, max_block_d))
    return out, post, comb


def mhc_post_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor,
                     n_splits: Optional[int] = None, cfg: Optional[PostConfig] = None) -> Tensor:
    f, residual, post, comb = map(_c, (f, residual, post, comb))
    T, _, D = residual.shape
    if T == 0:
        return empty(tuple(residual.shape), residual.dtype, residual.device)
    with tc.device_guard(residual.device):
        return post_mix(f, residual, post, comb, cfg or post_config(T, D, residual.device, False, n_splits))[0]


def mhc_post_pre_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                         base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                         norm_eps: float, sinkhorn_iters: int, post_mult: float,
                         n_splits: Optional[int] = None, max_block_d: int = MAX_ROW_BLOCK,
                         post_cfg: Optional[PostConfig] = None, collapse_cfg: Optional[CollapseConfig] = None,
                         gemm_cfg: Optional[GemmConfig] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f, residual, post, comb, fn, scale, base, norm_weight = map(
        _c, (f, residual, post, comb, fn, scale, base, norm_weight))
    T, _, D = residual.shape
    if T == 0:
        return (empty(tuple(residual.shape), residual.dtype, residual.device),) + _empty_pre(residual)
    dev = residual.device
    with tc.device_guard(dev):
        cfg = post_cfg or post_config(T, D, dev, True, n_splits)
        col_cfg = collapse_cfg or collapse_config(D, max_block_d)
        if cfg.fused:
            new_residual, pre, post_next, comb_next = post_mix(f, residual, post, comb, cfg, fn, scale, base, rms_eps,
                                                               hc_eps, post_mult, sinkhorn_iters)
            # kernel 1 writes the residual kernel 2 reads: no early row loads
            out = collapse(new_residual, pre, norm_weight, norm_eps, False, col_cfg)
        else:  # three passes: mhc_post, then mhc_pre's kernels on the new residual
            new_residual = post_mix(f, residual, post, comb, post_config(T, D, dev, False))[0]
            pre, post_next, comb_next = prenorm_mix(new_residual.view(T, HC_MULT * D), fn, scale, base, rms_eps,
                                                    hc_eps, post_mult, sinkhorn_iters,
                                                    gemm_cfg or gemm_config(T, HC_MULT * D, dev, n_splits))
            # the post kernel finished before the GEMM's programs released the collapse: early rows are safe
            out = collapse(new_residual, pre, norm_weight, norm_eps, True, col_cfg)
    return new_residual, out, post_next, comb_next


def hc_head_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, n_splits: Optional[int] = None,
                    max_block_d: int = MAX_ROW_BLOCK, gemm_cfg: Optional[GemmConfig] = None,
                    collapse_cfg: Optional[CollapseConfig] = None) -> Tensor:
    residual, fn, scale, base, norm_weight = map(_c, (residual, fn, scale, base, norm_weight))
    T, C, D = residual.shape
    if T == 0:
        return empty((0, D), residual.dtype, residual.device)
    dev = residual.device
    with tc.device_guard(dev):
        x = residual.view(T, C * D)
        pre, _, _ = prenorm_mix(x, fn, scale, base, rms_eps, hc_eps, 1.0, 1,
                                gemm_cfg or gemm_config(T, C * D, dev, n_splits))
        return collapse(residual, pre, norm_weight, norm_eps, True, collapse_cfg or collapse_config(D, max_block_d))


assert NUM_MIX <= MIX_PAD
__all__ = ["empty", "split_tickets", "split_fn", "GemmConfig", "PostConfig", "CollapseConfig", "gemm_config", "post_config",
           "collapse_config", "prenorm_mix", "collapse", "post_mix", "mhc_pre_forward", "mhc_post_forward",
           "mhc_post_pre_forward", "hc_head_forward", "replace"]
