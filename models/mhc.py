"""Manifold-constrained hyper-connections (spec section 2), official semantics.

The residual is `X bf16 [T, C, D]` (C = hc_mult = 4 streams). Functions, in the plain forms of
spec section 6 so that the compiler can match them:

* `hc_pre` (2.1, F1): RMS factor over all C*D values, 24-wide mix GEMM, `pre = sigmoid + eps`,
  `post = 2 * sigmoid`, `comb` = softmax-first Sinkhorn with `iters` column normalizations,
  collapse `sum_c pre[c] * X[c]` -> bf16. The RMSNorm that follows (attn_norm / ffn_norm) is a
  separate module call in the decoder layer.
* `hc_post` (2.3, F2): `X'[k] = post[k] * F + sum_j comb[j, k] * X[j]` (comb TRANSPOSED).
* `hc_head` (2.4, F9): like hc_pre's `pre` only, scalar scale, no Sinkhorn.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sinkhorn(logits: Tensor, iters: int, eps: float) -> Tensor:
    """Softmax over the last axis, then `iters` column normalizations interleaved with row ones."""
    comb = logits.softmax(-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return comb


def hc_pre(
    x: Tensor,
    fn: Tensor,
    scale: Tensor,
    base: Tensor,
    hc_mult: int,
    rms_eps: float,
    hc_eps: float,
    sinkhorn_iters: int,
    post_mult: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """X bf16 [T,C,D] -> (layer_input bf16 [T,D], post f32 [T,C], comb f32 [T,C,C])."""
    c = hc_mult
    xf = x.flatten(1).float()
    rinv = torch.rsqrt(xf.square().mean(-1, keepdim=True) + rms_eps)
    mixes = F.linear(xf, fn) * rinv
    pre = torch.sigmoid(mixes[:, :c] * scale[0] + base[:c]) + hc_eps
    post = torch.sigmoid(mixes[:, c : 2 * c] * scale[1] + base[c : 2 * c]) * post_mult
    logits = mixes[:, 2 * c :].unflatten(-1, (c, c)) * scale[2] + base[2 * c :].view(c, c)
    comb = sinkhorn(logits, sinkhorn_iters, hc_eps)
    layer_input = (pre.unsqueeze(-1) * xf.view_as(x)).sum(1).to(torch.bfloat16)
    return layer_input, post, comb


def hc_post(f: Tensor, x: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """F bf16 [T,D], X bf16 [T,C,D], post [T,C], comb [T,C,C] -> bf16 [T,C,D]; output stream k reads comb[:, :, k]."""
    out = post.unsqueeze(-1) * f.unsqueeze(-2) + (comb.unsqueeze(-1) * x.unsqueeze(-2)).sum(dim=-3)
    return out.to(torch.bfloat16)


def hc_head(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, rms_eps: float, hc_eps: float) -> Tensor:
    """X bf16 [T,C,D] -> bf16 [T,D] (before the final RMSNorm)."""
    xf = x.flatten(1).float()
    rinv = torch.rsqrt(xf.square().mean(-1, keepdim=True) + rms_eps)
    mixes = F.linear(xf, fn) * rinv
    pre = torch.sigmoid(mixes * scale + base) + hc_eps
    return (pre.unsqueeze(-1) * xf.view_as(x)).sum(1).to(torch.bfloat16)


def hc_expand(e: Tensor, hc_mult: int) -> Tensor:
    """Embedding [T,D] -> residual [T,C,D], every stream a copy."""
    return e.unsqueeze(1).repeat(1, hc_mult, 1)
