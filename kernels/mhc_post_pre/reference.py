"""mhc_post_pre: the post-mix of one sublayer followed by the pre-mix of the next (spec 2.5, F3).

``new_residual = mhc_post(f, residual, post, comb)`` and
``(layer_input, post_next, comb_next) = mhc_pre(new_residual, fn, ...)`` exactly as the two
separate references compute them; the new residual is also returned (it is the next residual).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels.mhc_post.reference import mhc_post_math
from fusegraph.kernels.mhc_pre.reference import mhc_pre_math
from fusegraph.ops import fused_op


def mhc_post_pre_math(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                      base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                      norm_eps: float, sinkhorn_iters: int, post_mult: float,
                      acc_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    new_residual = mhc_post_math(f, residual, post, comb, acc_dtype)
    layer_input, post_next, comb_next = mhc_pre_math(new_residual, fn, scale, base, norm_weight, rms_eps, hc_eps,
                                                     norm_eps, sinkhorn_iters, post_mult, acc_dtype)
    return new_residual, layer_input, post_next, comb_next


@fused_op("mhc_post_pre")
def mhc_post_pre(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
                 norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float, norm_eps: float,
                 sinkhorn_iters: int, post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (new_residual bf16[T,C,D], layer_input bf16[T,D], post_next f32[T,C], comb_next f32[T,C,C])
    = mhc_pre(mhc_post(f, residual, post, comb), fn, scale, base, norm_weight, ...)."""
    return mhc_post_pre_math(f, residual, post, comb, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps,
                             sinkhorn_iters, post_mult, torch.float32)
