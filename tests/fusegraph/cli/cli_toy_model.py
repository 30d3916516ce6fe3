"""A small mHC-only model for the CLI tests: ``layers.N`` each run hc_pre -> linear -> hc_post twice.

It uses the reference model's own functions (``fusegraph.models.mhc``), so the real compiler
fuses it (mhc_pre, mhc_post and their post+pre composition) while it stays tiny and cache-free.
``make`` is a ``package.module:factory`` for ``fusegraph report/compare``; ``make_with_config``
adds a DSV4-like config so that the expected match set applies (and falls short).
"""
from __future__ import annotations

import torch
from torch import nn

from fusegraph.models.mhc import hc_post, hc_pre

C, ITERS = 4, 20


class Site(nn.Module):
    def __init__(self, dim: int, g: torch.Generator):
        super().__init__()
        n3 = C * (2 + C)
        self.fn = nn.Parameter(torch.randn(n3, C * dim, generator=g) * 0.02)
        self.scale = nn.Parameter(torch.rand(3, generator=g) + 0.5)
        self.base = nn.Parameter(torch.randn(n3, generator=g) * 0.1)
        self.w = nn.Parameter((torch.randn(dim, dim, generator=g) / dim ** 0.5).to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, post, comb = hc_pre(x, self.fn, self.scale, self.base, C, 1e-6, 1e-6, ITERS, 2.0)
        f = torch.nn.functional.linear(h, self.w)
        return hc_post(f, x, post, comb)


class Layer(nn.Module):
    def __init__(self, dim: int, g: torch.Generator):
        super().__init__()
        self.attn = Site(dim, g)
        self.ffn = Site(dim, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x))


class MHCToy(nn.Module):
    def __init__(self, dim: int = 64, n_layers: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(Layer(dim, g) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x.float().sum(1)


def make(tokens: int = 8, seed: int = 0, device: str = "cpu"):
    model = MHCToy(seed=seed).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, C, 64, generator=g).to(torch.bfloat16).to(device)
    return model, (x,)


class _Config:
    """Enough of a DSV4 config for ``fusegraph.expected.expected_sites``: 2 layers, no compression."""

    n_layers = 2
    compress_ratios = (0, 0)
    kv_cache_layout = "bf16"


def make_with_config(tokens: int = 8, seed: int = 0, device: str = "cpu"):
    """The same toy, claiming to be a 2-layer DSV4 model: the expected set cannot be met."""
    model, inputs = make(tokens=tokens, seed=seed, device=device)
    model.config = _Config()
    return model, inputs


WIDE_DIM = 7168  # DSV4-Pro's hidden size: the committed mHC crossover table measured it


def make_wide(tokens: int = 8, seed: int = 0):
    """The same toy at D = 7168, built on the meta device (planning only: nothing is allocated)."""
    with torch.device("meta"):
        model = MHCToy(dim=WIDE_DIM, n_layers=1, seed=seed)
    x = torch.empty(tokens, C, WIDE_DIM, dtype=torch.bfloat16, device="meta")
    return model, (x,)
