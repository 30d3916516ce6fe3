"""Torch helpers shared by the attention-side references: RMSNorm and DSV4's interleaved RoPE.

DSV4 applies RoPE "GPT-J style" (spec 4.1): channel pairs ``(2i, 2i+1)`` of the LAST ``Dr`` = 64
channels of a head are rotated by the angle of row ``i`` of the ``cos``/``sin`` tables, which the
callers pass already gathered at the token (or compressed block) positions as fp32 ``[n, Dr/2]``.
Everything here is written in the real form of spec F4 (no complex numbers) and computes in the
dtype of ``x`` (fp32 in the ops, fp64 in the tests' oracles); callers decide where results are
rounded to bf16, because the ops round at different points.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

ROPE_DIM = 64


def rms_norm(x: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """``x * rsqrt(mean(x^2) + eps) [* weight]`` over the last axis (weight applied last)."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(x.dtype)
    return y


def rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(2i, 2i+1)`` of ``x[..., :2n]`` by ``cos/sin[..., i]`` (broadcast).

    ``y0 = x0*cos - x1*sin``, ``y1 = x0*sin + x1*cos``.
    """
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack([y0, y1], -1).flatten(-2)


def rope_last(x: Tensor, cos: Tensor, sin: Tensor, rope_dim: int = ROPE_DIM) -> Tensor:
    """``x`` with RoPE applied to its last ``rope_dim`` channels; the rest is unchanged."""
    split = x.shape[-1] - rope_dim
    return torch.cat([x[..., :split], rope_interleaved(x[..., split:], cos, sin)], -1)
