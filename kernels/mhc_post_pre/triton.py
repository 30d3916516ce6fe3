"""Triton provider of mhc_post_pre.

2..64 tokens: the post kernel also feeds the new residual (bf16-rounded, as the next pre reads
it) into the next pre's split-K GEMM, then one finisher program per token. Otherwise: mhc_post,
then mhc_pre's streaming kernels on the new residual (on an H200 at T = 4096 this beat the fused
post kernel, whose tiles are latency-bound: 179 vs 244 us at flash size). See
``kernels/mhc_pre/triton_kernels.py``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_post.triton import supports as post_supports
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_pre import gates
from fusegraph.kernels.mhc_pre.triton import supports as pre_supports


def supports(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
             norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int,
             post_mult: float) -> Optional[str]:
    return gates.first_reason(
        post_supports(f, residual, post, comb),
        pre_supports(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters, post_mult),
    )


@mhc_post_pre.provider("triton", targets=tc.provider_targets(), priority=20, available=tc.triton_missing,
                       supports_args=supports)
def mhc_post_pre_triton(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                        base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                        norm_eps: float, sinkhorn_iters: int, post_mult: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from fusegraph.kernels.mhc_pre import triton_kernels

    return triton_kernels.mhc_post_pre_forward(f, residual, post, comb, fn, scale, base, norm_weight, rms_eps,
                                               hc_eps, norm_eps, sinkhorn_iters, post_mult)
