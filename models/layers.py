"""Basic layers: Linear, Embedding, RMSNorm.

They are our own modules (not `torch.nn.Linear` / `nn.Embedding`) on purpose: torch.fx treats
`torch.nn.*` modules as leaves, while these trace through to `F.linear` / `F.embedding` with the
weights as `get_attr` nodes, which is what the pattern matcher binds.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Linear(nn.Module):
    """y = x @ weight^T, no bias; weight [out, in] (bf16 where the checkpoint is bf16/fp8)."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim, dtype=dtype))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


def rms_norm(x: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """fp32 math, rounded once to bf16 (spec 2.2): bf16(w * v * rsqrt(mean(v^2) + eps))."""
    v = x.float()
    v = v * torch.rsqrt(v.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        v = v * weight
    return v.to(torch.bfloat16)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)
