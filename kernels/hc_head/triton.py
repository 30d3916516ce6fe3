"""Triton provider of hc_head: mhc_pre's kernels with 4 rows of fn (tile padded to 16; pad rows
are never fetched) and no post/comb (sigmoid pre, weighted collapse, optional final RMSNorm).

Unlike a one-program-per-token kernel (sglang ``_hc_head_kernel``) the GEMM tiles 16-64 tokens,
so fn [4, 4D] (256 KB / 448 KB) is read from L2 once per token block instead of once per token.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.hc_head.reference import hc_head
from fusegraph.kernels.mhc_pre import gates


def supports(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
             rms_eps: float, hc_eps: float, norm_eps: float) -> Optional[str]:
    return (gates.check_pre_args(residual, fn, scale, base, norm_weight, gates.HC_MULT, 1)
            or tc.interpreter_too_large(residual, fn))


@hc_head.provider("triton", targets=tc.provider_targets(), priority=20, available=tc.triton_missing,
                  supports_args=supports)
def hc_head_triton(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                   rms_eps: float, hc_eps: float, norm_eps: float) -> Tensor:
    from fusegraph.kernels.mhc_pre import triton_kernels

    return triton_kernels.hc_head_forward(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps)
