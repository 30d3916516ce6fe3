"""Triton provider of mhc_pre: split-K prenorm GEMM, then the mixes and the weighted collapse.

Two implementations chosen by the token count (``triton_kernels.default_path``): the streaming
kernels of ``triton_jit.py`` (T = 1 and T > 64) and the one-finisher-per-token kernels of
``triton_token.py`` (2..64 tokens). Launch sizing is in ``triton_kernels.py`` (shared with
mhc_post, mhc_post_pre and hc_head); this file only declares where the provider runs and which
arguments it takes.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre import gates
from fusegraph.kernels.mhc_pre.reference import mhc_pre


def supports(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
             rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float) -> Optional[str]:
    return (gates.check_pre_args(residual, fn, scale, base, norm_weight, gates.NUM_MIX, 3)
            or tc.interpreter_too_large(residual, fn))


@mhc_pre.provider("triton", targets=tc.provider_targets(), priority=20, available=tc.triton_missing,
                  supports_args=supports)
def mhc_pre_triton(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                   rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    from fusegraph.kernels.mhc_pre import triton_kernels

    return triton_kernels.mhc_pre_forward(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps,
                                          sinkhorn_iters, post_mult)
