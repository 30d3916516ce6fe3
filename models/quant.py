"""Quantization simulations (quant-dequant, plain torch) used by the KV paths.

* FP8 e4m3 tiles (spec 4.3): per row, tiles of 64 channels, `amax = max(max|x|, eps)`,
  power-of-two (ue8m0) scale `2^ceil(log2(amax/448))`, `q = e4m3(clamp(x/scale, +-448))`,
  dequant `q * scale`. `fp8_quant_dequant` is written in the F5 form.
* FP4 e2m1 tiles of 32 with ue8m0 scales (indexer keys/queries, spec 3.3): amax clamped to
  >= 6 * 2^-126, scale `2^ceil(log2(amax/6))`, round-to-nearest-even onto the e2m1 grid.
* Walsh-Hadamard rotation (Sylvester order) scaled by `n^-0.5`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

FP8_MAX = 448.0
FP4_MAX = 6.0


def fp8_quant_dequant(x: Tensor, eps: float, tile: int = 64) -> Tensor:
    """bf16 result of FP8 e4m3 tile quantization with power-of-two scales (official act_quant ue8m0)."""
    tiles = x.float().unflatten(-1, (-1, tile))
    amax = tiles.abs().amax(-1, keepdim=True).clamp(min=eps)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    q = (tiles / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    return (q * scale).to(torch.bfloat16).flatten(-2)


def round_to_e2m1(v: Tensor) -> Tensor:
    """Round fp32 values in [-6, 6] to the e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even."""
    mag = v.abs()
    # Spacing of the grid around |v|: 0.5 below 2 (subnormal + first binade), then 2^(e-1).
    exponent = torch.floor(torch.log2(mag.clamp(min=1.0)))
    step = torch.exp2(exponent - 1)
    return torch.sign(v) * torch.round(mag / step) * step


def fp4_quant_dequant(x: Tensor, tile: int = 32) -> Tensor:
    """fp32 result of FP4 e2m1 tile quantization with ue8m0 scales."""
    tiles = x.float().unflatten(-1, (-1, tile))
    amax = tiles.abs().amax(-1, keepdim=True).clamp(min=FP4_MAX * 2.0**-126)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP4_MAX)))
    q = round_to_e2m1((tiles / scale).clamp(-FP4_MAX, FP4_MAX))
    return (q * scale).flatten(-2)


def hadamard_matrix(n: int, device=None) -> Tensor:
    """Sylvester Hadamard matrix H_n (entries +-1), fp32; n a power of two (built on the CPU)."""
    if n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float32, device="cpu")
    for _ in range(int(math.log2(n))):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device if device is not None else torch.get_default_device())
