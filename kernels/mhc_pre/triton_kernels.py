"""Launchers of the mHC Triton kernels (mhc_pre, mhc_post, mhc_post_pre, hc_head) and the ops.

Two implementations, chosen by the token count (``default_path``; measured on an H200, see
``benchmarks/results/mhc_tuning_notes.md``):

* ``"stream"`` (T = 1 and T > 64; ``triton_jit.py``): kernel 1 is a split-K GEMM whose last split
  per token block computes pre / post / comb; kernel 2 is a pure weighted-collapse stream
  (+ RMSNorm). For T > 64 kernel 1 reads a bf16 hi/lo copy of fn made by a small prepass.
  mhc_post_pre on this path runs mhc_post, then mhc_pre's two kernels on the new residual (faster
  than fusing the GEMM into the post kernel: 179 vs 244 us at flash size, T = 4096).
* ``"token"`` (2 <= T <= 64; ``triton_token.py``): the first-generation kernels with one finisher
  program per token (the last-split finishing serializes a block's tokens on one SM). mhc_post
  always uses its ``_post_mix_kernel``.

Launch sizing lives in small frozen configs (``GemmConfig``, ``CollapseConfig``) chosen from the
token count and the SM count; ``benchmarks/mhc_tune.py`` passes its own to sweep them. Every
forward takes ``path`` ("stream" / "token") to force an implementation (tests cover both at any
size). Outputs and workspaces come from ``empty`` (tests replace it to poison every buffer); the
split tickets come from ``split_tickets`` (zeroed once, reset by the kernels themselves, one
buffer per device and stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre import host
from fusegraph.kernels.mhc_pre import triton_token as tt
from fusegraph.kernels.mhc_pre.gates import HC_MULT, NUM_MIX
from fusegraph.kernels.mhc_pre.triton_jit import _collapse_kernel, _prenorm_gemm_kernel, _split_fn_kernel
from fusegraph.kernels.mhc_pre.triton_token import (BLOCK_K, HEAD_PAD, MAX_ROW_BLOCK, MIN_KB_PER_SPLIT, MIX_PAD,
                                                    gemm_block_m, make_plan, split_count)

FINISH_REGS = 96       # registers per thread for the finishing program's partial tiles
MIX_W = 32             # row of the finishing workspace: the mixes, the sum of squares last
SPLIT_FN_BLOCK = 256   # k-columns per program of the fn hi/lo split
PREPASS_MIN_T = 65     # from here on kernel 1 reads a bf16 hi/lo copy of fn (one extra small launch)
TOKEN_PATH_MAX_T = 64  # 2..64 tokens: one finisher program per token (triton_token.py)
DECODE_SPLITS = 128    # T = 1: fn (1.5 / 2.75 MB) is the bulk of the bytes, spread over 128 programs
MIN_TICKETS = 1 << 14


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Allocation of every output and workspace (a seam for tests that poison buffers)."""
    return torch.empty(shape, dtype=dtype, device=device)


def default_path(T: int) -> str:
    return "token" if 2 <= T <= TOKEN_PATH_MAX_T else "stream"


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
# launch plans (stream path)
# ---------------------------------------------------------------------------------------------
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
class CollapseConfig:
    block_d: int
    num_chunks: int
    num_warps: int


def _max_s_chunk(fin_m: int, n_pad: int, num_warps: int) -> int:
    """Largest power-of-two split chunk whose partial tile fits the finishing register budget."""
    fit = max(1, FINISH_REGS * 32 * num_warps // (n_pad * fin_m))
    return 1 << (fit.bit_length() - 1)


def finish_plan(T: int, block_m: int, n_splits: int, n_pad: int, num_warps: int) -> FinishPlan:
    fin_m = min(block_m, tc.next_pow2(T))
    s_chunk = min(tc.next_pow2(n_splits), _max_s_chunk(fin_m, n_pad, num_warps))
    return FinishPlan(fin_m, s_chunk, tc.cdiv(n_splits, s_chunk))


def default_mma(device: torch.device) -> str:
    return tc.dot_precision(device)  # "tf32" on NVIDIA, "ieee" elsewhere


def gemm_config(T: int, K: int, device: torch.device, n_splits: Optional[int] = None,
                n_mix: int = NUM_MIX) -> GemmConfig:
    block_m = gemm_block_m(T)
    n_kb = tc.cdiv(K, BLOCK_K)
    num_warps = 4
    if n_splits:
        S = n_splits
    elif T == 1:
        S = min(DECODE_SPLITS, max(1, n_kb // 2))
    else:
        S = split_count(T, block_m, n_kb, MIN_KB_PER_SPLIT, device)
        # the last split reduces the block's partials: keep that to at most two chunks
        S = min(S, 2 * _max_s_chunk(min(block_m, tc.next_pow2(T)), tc.next_pow2(n_mix), num_warps))
    S = max(1, min(S, n_kb))
    grid = tc.cdiv(T, block_m) * S
    mma, sq_mode = default_mma(device), 0
    if mma == "tf32" and T >= PREPASS_MIN_T:
        # streaming regime: bf16 MMAs on the raw x tile (fn split once per call), x^2 on the tensor cores
        mma, sq_mode = "bf16x2pre", 2
    return GemmConfig(block_m=block_m, n_splits=S, num_warps=num_warps, num_stages=4 if block_m >= 64 else 3,
                      mma=mma, sq_mode=sq_mode, early_trigger=grid <= tc.num_sms(device))


def collapse_config(D: int, max_block_d: int = MAX_ROW_BLOCK) -> CollapseConfig:
    block_d = min(tc.next_pow2(D), tc.next_pow2(max_block_d))
    return CollapseConfig(block_d, tc.cdiv(D, block_d), max(1, min(8, block_d // 1024)))


# ---------------------------------------------------------------------------------------------
# launchers (stream path)
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


def _stream_pre(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                n_splits: Optional[int], max_block_d: int, gemm_cfg: Optional[GemmConfig],
                collapse_cfg: Optional[CollapseConfig]) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Stream path of mhc_pre (24 rows of fn) and hc_head (4 rows): kernel 1, then the collapse."""
    T, C, D = residual.shape
    cfg = gemm_cfg or gemm_config(T, C * D, residual.device, n_splits, fn.shape[0])
    pre, post, comb = prenorm_mix(residual.view(T, C * D), fn, scale, base, rms_eps, hc_eps, post_mult,
                                  sinkhorn_iters, cfg)
    # row_early: kernel 1 only reads the residual (its producer finished before kernel 1 released us)
    out = collapse(residual, pre, norm_weight, norm_eps, True, collapse_cfg or collapse_config(D, max_block_d))
    return out, post, comb


# ---------------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------------
def mhc_pre_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                    n_splits: Optional[int] = None, max_block_d: int = MAX_ROW_BLOCK,
                    gemm_cfg: Optional[GemmConfig] = None, collapse_cfg: Optional[CollapseConfig] = None,
                    path: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor]:
    residual, fn, scale, base, norm_weight = host.contiguous(residual, fn, scale, base, norm_weight)
    T, C, D = residual.shape
    if T == 0:
        return host.pre_outputs(residual, empty)
    with tc.device_guard(residual.device):
        if (path or default_path(T)) == "token":
            part, sq = tt.prenorm_gemm(residual.view(T, C * D), fn, MIX_PAD, n_splits)
            return tt.mix_finish(residual, part, sq, scale, base, norm_weight, rms_eps, hc_eps, norm_eps,
                                 sinkhorn_iters, post_mult, True, max_block_d)
        return _stream_pre(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters,
                           post_mult, n_splits, max_block_d, gemm_cfg, collapse_cfg)


def mhc_post_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor,
                     n_splits: Optional[int] = None) -> Tensor:
    f, residual, post, comb = host.contiguous(f, residual, post, comb)
    if residual.shape[0] == 0:
        return empty(tuple(residual.shape), residual.dtype, residual.device)
    with tc.device_guard(residual.device):
        return tt.post_mix(f, residual, post, comb, None, n_splits)[0]


def mhc_post_pre_forward(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                         base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                         norm_eps: float, sinkhorn_iters: int, post_mult: float,
                         n_splits: Optional[int] = None, max_block_d: int = MAX_ROW_BLOCK,
                         gemm_cfg: Optional[GemmConfig] = None, collapse_cfg: Optional[CollapseConfig] = None,
                         path: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f, residual, post, comb, fn, scale, base, norm_weight = host.contiguous(
        f, residual, post, comb, fn, scale, base, norm_weight)
    T = residual.shape[0]
    if T == 0:
        return (empty(tuple(residual.shape), residual.dtype, residual.device),) + host.pre_outputs(residual, empty)
    with tc.device_guard(residual.device):
        if (path or default_path(T)) == "token":
            # the post kernel also feeds the new residual into the next pre's split-K GEMM
            new_residual, part, sq = tt.post_mix(f, residual, post, comb, fn, n_splits)
            out, post_next, comb_next = tt.mix_finish(new_residual, part, sq, scale, base, norm_weight, rms_eps,
                                                      hc_eps, norm_eps, sinkhorn_iters, post_mult, True,
                                                      max_block_d)
        else:  # mhc_post, then mhc_pre's kernels on the new residual
            new_residual = tt.post_mix(f, residual, post, comb)[0]
            out, post_next, comb_next = _stream_pre(new_residual, fn, scale, base, norm_weight, rms_eps, hc_eps,
                                                    norm_eps, sinkhorn_iters, post_mult, n_splits, max_block_d,
                                                    gemm_cfg, collapse_cfg)
    return new_residual, out, post_next, comb_next


def hc_head_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, n_splits: Optional[int] = None,
                    max_block_d: int = MAX_ROW_BLOCK, gemm_cfg: Optional[GemmConfig] = None,
                    collapse_cfg: Optional[CollapseConfig] = None, path: Optional[str] = None) -> Tensor:
    residual, fn, scale, base, norm_weight = host.contiguous(residual, fn, scale, base, norm_weight)
    T, C, D = residual.shape
    if T == 0:
        return empty((0, D), residual.dtype, residual.device)
    with tc.device_guard(residual.device):
        if (path or default_path(T)) == "token":
            part, sq = tt.prenorm_gemm(residual.view(T, C * D), fn, HEAD_PAD, n_splits)
            return tt.mix_finish(residual, part, sq, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, 1, 1.0,
                                 False, max_block_d)[0]
        return _stream_pre(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, 1, 1.0, n_splits,
                           max_block_d, gemm_cfg, collapse_cfg)[0]


assert NUM_MIX <= MIX_PAD
