"""mhc_pre: the hyper-connection pre-mix of DSV4 (spec 2.1), optionally followed by the sublayer's
RMSNorm (spec 2.2). Official semantics, plain torch, fp32 math.

Norm rounding (spec 2.2 documents two): this reference follows the *unfused* chain of the model,
``layer_input = bf16(y)`` then ``RMSNorm(layer_input)`` in fp32 with one final bf16 rounding::

    v   = float32(bf16(y))
    out = bf16((v * rsqrt(mean(v^2) + norm_eps)) * float32(w))

i.e. the sum of squares is taken from the bf16-rounded values. A fused rewrite therefore matches
the eager model exactly (up to fp32 summation order); the Triton provider reproduces the same
rounding (it rounds y to bf16 on chip before squaring).

The math lives in ``mhc_pre_math(..., acc_dtype)`` so that tests can run the very same chain in
float64 as an oracle; the op itself is that function at ``acc_dtype = float32``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fusegraph.ops import fused_op

HC_MULT = 4  # C: the contract and the providers fix the number of residual streams


def sinkhorn(logits: Tensor, iters: int, eps: float) -> Tensor:
    """Softmax over the last axis (+eps), a column normalization, then ``iters - 1`` row/column pairs."""
    comb = logits.softmax(-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return comb


def rms_norm(v: Tensor, weight: Tensor, eps: float, acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """The model's RMSNorm on an already-rounded activation: fp32 math, result in ``acc_dtype``."""
    v = v.to(acc_dtype)
    return v * torch.rsqrt(v.square().mean(-1, keepdim=True) + eps) * weight.to(acc_dtype)


def mhc_pre_math(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                 rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float,
                 acc_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """mhc_pre with all math in ``acc_dtype``; layer_input is rounded to the residual dtype."""
    T, C, D = residual.shape
    x = residual.flatten(1).to(acc_dtype)
    rinv = torch.rsqrt(x.square().mean(-1, keepdim=True) + rms_eps)
    mixes = F.linear(x, fn.to(acc_dtype)) * rinv
    scale = scale.to(acc_dtype)
    base = base.to(acc_dtype)
    pre = torch.sigmoid(mixes[:, :C] * scale[0] + base[:C]) + hc_eps
    post = torch.sigmoid(mixes[:, C:2 * C] * scale[1] + base[C:2 * C]) * post_mult
    logits = mixes[:, 2 * C:].view(T, C, C) * scale[2] + base[2 * C:].view(C, C)
    comb = sinkhorn(logits, sinkhorn_iters, hc_eps)
    layer_input = (pre.unsqueeze(-1) * x.view(T, C, D)).sum(1).to(residual.dtype)
    if norm_weight is not None:
        layer_input = rms_norm(layer_input, norm_weight, norm_eps, acc_dtype).to(residual.dtype)
    return layer_input, post.contiguous(), comb.contiguous()


@fused_op("mhc_pre")
def mhc_pre(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
            rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float
            ) -> tuple[Tensor, Tensor, Tensor]:
    """residual bf16[T,C,D], fn f32[C*(2+C), C*D], scale f32[3], base f32[C*(2+C)], norm_weight [D] or None
    -> (layer_input bf16[T,D] (RMSNorm'd when norm_weight is given), post f32[T,C], comb f32[T,C,C]).

    ``x = float(residual).flatten(1)``; ``mixes = (x @ fn^T) * rsqrt(mean(x^2) + rms_eps)``;
    ``pre = sigmoid(mixes[:C]*scale[0] + base[:C]) + hc_eps``;
    ``post = post_mult * sigmoid(mixes[C:2C]*scale[1] + base[C:2C])``;
    ``comb = sinkhorn(mixes[2C:].view(C,C)*scale[2] + base[2C:], sinkhorn_iters, hc_eps)``;
    ``layer_input = bf16(sum_c pre[c] * x[c])`` (then RMSNorm with ``norm_weight``, ``norm_eps``).
    """
    return mhc_pre_math(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps, sinkhorn_iters,
                        post_mult, torch.float32)
