"""Random mHC arguments at realistic scales, shared by tests and benchmarks.

Scales: residual and sublayer output ~ N(0, 1) in bf16; ``fn ~ N(0, 1/sqrt(K))`` (so that a mix
is O(1)), small ``scale`` and ``base`` (as in trained checkpoints: the activations stay in the
sigmoid's sensitive range); norm weight ~ 1 + N(0, 0.1); ``post`` in (0, 2) and a
Sinkhorn-normalized ``comb`` as a previous mhc_pre would produce them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels.mhc_pre.gates import HC_MULT, NUM_MIX
from fusegraph.kernels.mhc_pre.reference import sinkhorn

# DSV4 constants (spec section 1)
RMS_EPS = 1e-6
HC_EPS = 1e-6
NORM_EPS = 1e-6
SINKHORN_ITERS = 20
POST_MULT = 2.0


@dataclass(frozen=True)
class MixParams:
    fn: Tensor
    scale: Tensor
    base: Tensor


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device`` (large tensors are drawn where they live)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _randn(*shape: int, seed: int, device: torch.device | str) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed, device), device=device)


def residual(T: int, D: int, device: torch.device | str = "cpu", seed: int = 0) -> Tensor:
    return _randn(T, HC_MULT, D, seed=seed, device=device).to(torch.bfloat16)


def activation(T: int, D: int, device: torch.device | str = "cpu", seed: int = 1) -> Tensor:
    return _randn(T, D, seed=seed, device=device).to(torch.bfloat16)


def mix_params(D: int, n_mix: int = NUM_MIX, n_scale: int = 3, device: torch.device | str = "cpu",
               seed: int = 2) -> MixParams:
    g = _gen(seed)
    K = HC_MULT * D
    fn = torch.randn(n_mix, K, generator=g) / K ** 0.5
    scale = 0.5 + 0.5 * torch.rand(n_scale, generator=g)
    base = 0.3 * torch.randn(n_mix, generator=g)
    return MixParams(fn.to(device), scale.to(device), base.to(device))


def norm_weight(D: int, device: torch.device | str = "cpu", seed: int = 3,
                dtype: torch.dtype = torch.bfloat16) -> Tensor:
    return (1.0 + 0.1 * torch.randn(D, generator=_gen(seed))).to(device=device, dtype=dtype)


def post_comb(T: int, device: torch.device | str = "cpu", seed: int = 4) -> tuple[Tensor, Tensor]:
    g = _gen(seed)
    post = 2.0 * torch.sigmoid(torch.randn(T, HC_MULT, generator=g))
    comb = sinkhorn(torch.randn(T, HC_MULT, HC_MULT, generator=g), SINKHORN_ITERS, HC_EPS)
    return post.to(device), comb.to(device)


def mhc_pre_args(T: int, D: int, device: torch.device | str = "cpu", norm: bool = True, seed: int = 0) -> tuple:
    p = mix_params(D, device=device, seed=seed + 2)
    w: Optional[Tensor] = norm_weight(D, device, seed + 3) if norm else None
    return (residual(T, D, device, seed), p.fn, p.scale, p.base, w, RMS_EPS, HC_EPS, NORM_EPS, SINKHORN_ITERS,
            POST_MULT)


def mhc_post_args(T: int, D: int, device: torch.device | str = "cpu", seed: int = 0) -> tuple:
    post, comb = post_comb(T, device, seed + 4)
    return (activation(T, D, device, seed + 1), residual(T, D, device, seed), post, comb)


def mhc_post_pre_args(T: int, D: int, device: torch.device | str = "cpu", norm: bool = True, seed: int = 0) -> tuple:
    return mhc_post_args(T, D, device, seed) + mhc_pre_args(T, D, device, norm, seed + 10)[1:]


def hc_head_args(T: int, D: int, device: torch.device | str = "cpu", norm: bool = True, seed: int = 0) -> tuple:
    p = mix_params(D, n_mix=HC_MULT, n_scale=1, device=device, seed=seed + 2)
    w = norm_weight(D, device, seed + 3) if norm else None
    return (residual(T, D, device, seed), p.fn, p.scale, p.base, w, RMS_EPS, HC_EPS, NORM_EPS)
