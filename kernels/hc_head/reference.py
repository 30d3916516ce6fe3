"""hc_head: the final 4 -> 1 stream collapse before the last RMSNorm and lm_head (spec 2.4, F9).

Like mhc_pre's ``pre`` branch with a scalar scale and no post/comb/Sinkhorn. When ``norm_weight``
is given the model's final RMSNorm is applied to the bf16 collapse (same rounding as mhc_pre: the
norm sees the bf16-rounded values, one final bf16 rounding).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fusegraph.kernels.mhc_pre.reference import rms_norm
from fusegraph.ops import fused_op


def hc_head_math(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                 rms_eps: float, hc_eps: float, norm_eps: float,
                 acc_dtype: torch.dtype = torch.float32) -> Tensor:
    T, C, D = residual.shape
    x = residual.flatten(1).to(acc_dtype)
    rinv = torch.rsqrt(x.square().mean(-1, keepdim=True) + rms_eps)
    mixes = F.linear(x, fn.to(acc_dtype)) * rinv
    pre = torch.sigmoid(mixes * scale.to(acc_dtype)[0] + base.to(acc_dtype)) + hc_eps
    h = (pre.unsqueeze(-1) * x.view(T, C, D)).sum(1).to(residual.dtype)
    if norm_weight is not None:
        h = rms_norm(h, norm_weight, norm_eps, acc_dtype).to(residual.dtype)
    return h


@fused_op("hc_head")
def hc_head(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
            rms_eps: float, hc_eps: float, norm_eps: float) -> Tensor:
    """residual bf16[T,C,D], fn f32[C,C*D], scale f32[1], base f32[C], norm_weight [D] or None -> bf16[T,D].

    ``p = sigmoid((x @ fn^T) * rsqrt(mean(x^2) + rms_eps) * scale[0] + base) + hc_eps``,
    ``h = bf16(sum_c p[c] * x[c])``, then the final RMSNorm when ``norm_weight`` is given.
    """
    return hc_head_math(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, torch.float32)
