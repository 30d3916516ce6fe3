"""Dense SwiGLU FFN with the DSV4 clamp (stand-in for the MoE, spec section 5).

`w2( silu(min(w1 x, limit)) * clamp(w3 x, -limit, limit) )`, activations in fp32, cast to bf16
before w2 (the official Expert). Checkpoint names `ffn.w1/w2/w3.weight`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusegraph.models.layers import Linear


class FeedForward(nn.Module):
    def __init__(self, dim: int, inter_dim: int, swiglu_limit: float) -> None:
        super().__init__()
        self.limit = swiglu_limit
        self.w1 = Linear(dim, inter_dim)
        self.w2 = Linear(inter_dim, dim)
        self.w3 = Linear(dim, inter_dim)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.w1(x).float().clamp(max=self.limit)
        up = self.w3(x).float().clamp(-self.limit, self.limit)
        return self.w2((F.silu(gate) * up).to(torch.bfloat16))
