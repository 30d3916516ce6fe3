"""DeepGEMM provider of mhc_pre and hc_head: ``deep_gemm.tf32_hc_prenorm_gemm`` + a Triton big fuse.

Kernel 1 is DeepGEMM's split-K prenorm GEMM (spec 2.6, kernel-anchors section 1)::

    deep_gemm.tf32_hc_prenorm_gemm(a, b, d, sqr_sum, num_splits=S)

with ``a = residual.view(T, 4D)`` (bf16, contiguous, K = 4D a multiple of 64), ``b = fn`` (fp32
``[N, K]``, N <= 32 and N % 8 == 0), ``d`` fp32 ``[S, T, N]`` and ``sqr_sum`` fp32 ``[S, T]`` (both
contiguous): split ``s`` writes the partial GEMM and sum of squares of its contiguous range of
64-wide k-blocks; nothing is reduced there.

Kernel 2 (``_finish_kernel``, here) is the "big fuse" of spec 2.6 that the split partials are folded
into: one program per token sums the token's S partial rows of ``d`` (read in DeepGEMM's own
token-major ``[S, T, N]`` layout: no transpose, no copy) and of ``sqr_sum``, then the RMS factor,
the sigmoids, the 20-iteration Sinkhorn (the 4x4 held as four row vectors: no barrier), the
weighted collapse of the 4 streams and the optional RMSNorm. It is this file's own kernel (the whole
row in registers, no chunked variant), built from the Triton token path's jit helpers: the mixes
and Sinkhorn (``triton_token._token_mixes``) and the row epilogue (``triton_parts.store_row``).

* S follows the engines' rule ``max(1, min(SMs // ceil(T/64), nKB // 4))`` (DeepGEMM tiles 64 tokens).
* T = 0: no launch at all; empty outputs.
* hc_head has N = 4 mixes, which DeepGEMM does not take (N % 8); its ``fn`` is zero-padded to 8
  rows per call (a [8, 4D] fp32 copy, 128-224 KB on DSV4) and the finisher reads 4 of the 8.
* The finisher keeps a token's [4, D] row in registers: D <= 8192 (DSV4: 4096 / 7168).

``available`` says "deep_gemm not installed" when the import fails (tried once per process; a
module already in ``sys.modules``, e.g. a test's stand-in, is always found). The provider ranks
below Triton (priority 15 < 20) until ``MEASURED_FASTER`` says a GPU run showed it faster; it runs
on sm90 and sm100, DeepGEMM's architectures here.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Optional

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.hc_head.reference import hc_head
from fusegraph.kernels.mhc_pre import gates, host
from fusegraph.kernels.mhc_pre.reference import mhc_pre

triton, tl = tc.triton, tc.tl

MEASURED_FASTER = False  # set after a GPU run shows DeepGEMM's GEMM beating the Triton split-K GEMM
PRIORITY = 25 if MEASURED_FASTER else 15
TARGETS = frozenset({"sm90", "sm100"})
FUNCTION = "tf32_hc_prenorm_gemm"
BLOCK_M = 64          # DeepGEMM's token tile
BLOCK_K = 64          # ... and k-block
MIN_KB_PER_SPLIT = 4  # engine rule: nKB // 4
MAX_N, N_MULTIPLE = 32, 8
MAX_D = 8192          # the finisher holds a [4, D] row in registers

_import_error: Optional[str] = None  # why ``import deep_gemm`` failed (tried once)


# -- the module ------------------------------------------------------------------------------------
def deep_gemm_module() -> Any:
    """The ``deep_gemm`` module, or None when it cannot be imported."""
    global _import_error
    module = sys.modules.get("deep_gemm")
    if module is not None:
        return module
    if _import_error is not None:
        return None
    try:
        return importlib.import_module("deep_gemm")
    except Exception as exc:  # ImportError, or a broken binary (ABI mismatch: OSError, RuntimeError)
        _import_error = f"deep_gemm not installed ({type(exc).__name__}: {exc})"
        return None


def deep_gemm_missing() -> Optional[str]:
    """``available`` callback: None when ``deep_gemm.tf32_hc_prenorm_gemm`` and Triton can be used."""
    if tc.triton_missing():
        return tc.triton_missing()  # the finisher is a Triton kernel
    module = deep_gemm_module()
    if module is None:
        return _import_error or "deep_gemm not installed"
    if not hasattr(module, FUNCTION):
        return f"deep_gemm has no {FUNCTION} (too old)"
    return None


# -- kernel 2: the big fuse over DeepGEMM's partials -------------------------------------------------
if tc.HAS_TRITON:

    # The split reduction, the mixes with the 4x4 Sinkhorn and the row epilogue are the Triton
    # provider's own (GPU-verified) helpers.
    from fusegraph.kernels.mhc_pre.triton_parts import store_row
    from fusegraph.kernels.mhc_pre.triton_token import _token_mixes

    @triton.jit
    def _finish_kernel(res_ptr, part_ptr, sq_ptr, scale_ptr, base_ptr, norm_w_ptr, out_ptr, post_ptr, comb_ptr,
                       T, D, n_splits, rms_eps, hc_eps, norm_eps, post_mult, sinkhorn_iters,
                       PART_N: tl.constexpr, SPLIT_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                       WITH_POST_COMB: tl.constexpr, HAS_NORM: tl.constexpr, USE_PDL: tl.constexpr):
        t = T - 1 - tl.program_id(0)  # reverse order: the GEMM's last token tiles are the likeliest L2 hits
        t64 = t.to(tl.int64)
        c4 = tl.arange(0, 4)
        ds = tl.arange(0, BLOCK_D)
        d_ok = ds < D
        ss = tl.arange(0, SPLIT_BLOCK)
        s_ok = ss < n_splits
        part_t = part_ptr + (ss.to(tl.int64) * T + t) * PART_N  # [S]: row t of every split of d [S, T, N]

        tc.pdl_wait(USE_PDL)
        x = tl.load(res_ptr + t64 * (4 * D) + c4[:, None] * D + ds[None, :], mask=d_ok[None, :], other=0.0)
        pre = _token_mixes(part_t, sq_ptr, ss, s_ok, t, t64, T, D, scale_ptr, base_ptr, post_ptr, comb_ptr, rms_eps,
                           hc_eps, post_mult, sinkhorn_iters, WITH_POST_COMB)
        # the model's RMSNorm sees the bf16-rounded collapse (reference rounding)
        y = tl.sum(x.to(tl.float32) * pre[:, None], axis=0).to(out_ptr.dtype.element_ty)
        store_row(out_ptr + t64 * D, y, norm_w_ptr, ds, d_ok, D, norm_eps, HAS_NORM)
        tc.pdl_launch_dependents(USE_PDL)


# -- launchers ------------------------------------------------------------------------------------------
def split_count(T: int, K: int, device: torch.device) -> int:
    """``max(1, min(SMs // ceil(T/64), nKB // 4))`` (sglang ``_compute_num_split_for_mhc_pre``)."""
    m_blocks = max(1, tc.cdiv(T, BLOCK_M))
    return max(1, min(tc.num_sms(device) // m_blocks, (K // BLOCK_K) // MIN_KB_PER_SPLIT))


def padded_rows(n: int) -> int:
    return tc.cdiv(n, N_MULTIPLE) * N_MULTIPLE


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    from fusegraph.kernels.mhc_pre import triton_kernels  # its ``empty`` is the tests' poisoning seam

    return triton_kernels.empty(shape, dtype, device)


def prenorm_gemm(x: Tensor, fn: Tensor, n_splits: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """DeepGEMM's split-K ``x [T, K] bf16 @ fn [N, K]^T`` and ``sum(x^2)``: ``([S, T, N'], [S, T])``.

    ``N'`` is N rounded up to a multiple of 8 (fn zero-padded when needed); T > 0.
    """
    T, K = x.shape
    N = fn.shape[0]
    S = max(1, min(n_splits or split_count(T, K, x.device), K // BLOCK_K))  # no empty split
    n_padded = padded_rows(N)
    b = fn if n_padded == N else torch.cat([fn, fn.new_zeros(n_padded - N, K)])
    d = _empty((S, T, n_padded), torch.float32, x.device)
    sqr_sum = _empty((S, T), torch.float32, x.device)
    deep_gemm_module().tf32_hc_prenorm_gemm(x, b.contiguous(), d, sqr_sum, num_splits=S)
    return d, sqr_sum


def finish(residual: Tensor, d: Tensor, sqr_sum: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
           rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
           with_post_comb: bool) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Kernel 2 on the partials ``d [S, T, N]``, ``sqr_sum [S, T]`` -> (out, post, comb)."""
    T, C, D = residual.shape
    dev = residual.device
    out = _empty((T, D), residual.dtype, dev)
    post = _empty((T, C), torch.float32, dev) if with_post_comb else None
    comb = _empty((T, C, C), torch.float32, dev) if with_post_comb else None
    block_d = tc.next_pow2(D)
    n_splits = d.shape[0]
    _finish_kernel[(T,)](
        residual, d, sqr_sum, scale, base, norm_weight if norm_weight is not None else out, out,
        post if post is not None else out, comb if comb is not None else out,
        T, D, n_splits, float(rms_eps), float(hc_eps), float(norm_eps), float(post_mult), int(sinkhorn_iters),
        PART_N=d.shape[2], SPLIT_BLOCK=max(2, tc.next_pow2(n_splits)), BLOCK_D=block_d,
        WITH_POST_COMB=with_post_comb, HAS_NORM=norm_weight is not None, USE_PDL=tc.pdl_enabled(dev),
        num_warps=max(1, min(16, block_d // 512)), **tc.launch_kwargs(dev))
    return out, post, comb


def mhc_pre_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                    n_splits: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    residual, fn, scale, base, norm_weight = host.contiguous(residual, fn, scale, base, norm_weight)
    T, C, D = residual.shape
    dev = residual.device
    if T == 0:  # no launch
        return host.pre_outputs(residual, _empty)
    with tc.device_guard(dev):
        d, sqr_sum = prenorm_gemm(residual.view(T, C * D), fn, n_splits)
        return finish(residual, d, sqr_sum, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters,
                      post_mult, True)


def hc_head_forward(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                    rms_eps: float, hc_eps: float, norm_eps: float, n_splits: Optional[int] = None) -> Tensor:
    residual, fn, scale, base, norm_weight = host.contiguous(residual, fn, scale, base, norm_weight)
    T, C, D = residual.shape
    if T == 0:  # no launch
        return _empty((0, D), residual.dtype, residual.device)
    with tc.device_guard(residual.device):
        d, sqr_sum = prenorm_gemm(residual.view(T, C * D), fn, n_splits)
        out, _, _ = finish(residual, d, sqr_sum, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, 1, 1.0, False)
    return out


# -- argument gates --------------------------------------------------------------------------------------
def _deepgemm_shape_reason(residual: Tensor, n_mix: int) -> Optional[str]:
    K = residual.shape[1] * residual.shape[2]
    if K % BLOCK_K:
        return f"K = {K} is not a multiple of {BLOCK_K} (DeepGEMM)"
    if padded_rows(n_mix) > MAX_N:
        return f"{n_mix} mixes: DeepGEMM takes at most {MAX_N}"
    if residual.shape[2] > MAX_D:
        return f"hidden size {residual.shape[2]} > {MAX_D}: the finisher keeps a token's row in registers"
    return None


def _supports(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
              n_mix: int, n_scale: int) -> Optional[str]:
    return (gates.check_pre_args(residual, fn, scale, base, norm_weight, n_mix, n_scale)
            or _deepgemm_shape_reason(residual, n_mix))


def supports_pre(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                 rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float
                 ) -> Optional[str]:
    return _supports(residual, fn, scale, base, norm_weight, gates.NUM_MIX, 3)


def supports_head(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                  rms_eps: float, hc_eps: float, norm_eps: float) -> Optional[str]:
    return _supports(residual, fn, scale, base, norm_weight, gates.HC_MULT, 1)


@mhc_pre.provider("deepgemm", targets=TARGETS, priority=PRIORITY, available=deep_gemm_missing,
                  supports_args=supports_pre)
def mhc_pre_deepgemm(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                     rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    return mhc_pre_forward(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters,
                           post_mult)


@hc_head.provider("deepgemm", targets=TARGETS, priority=PRIORITY, available=deep_gemm_missing,
                  supports_args=supports_head)
def hc_head_deepgemm(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                     rms_eps: float, hc_eps: float, norm_eps: float) -> Tensor:
    return hc_head_forward(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps)
