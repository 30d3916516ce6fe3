"""Interleaved RoPE on real cos/sin tables (spec 4.1, F4 form).

Each attention layer owns a `RotaryTable` with fp32 buffers `cos`, `sin` of shape
`[max_pos, rope_dim/2]` (non-persistent: they are not in checkpoints). Ratio-0 layers use base
`rope_theta` (10000) without YaRN; layers with compress ratio > 0 use `compress_rope_theta`
(160000) with YaRN (factor 16, original length 65536, beta 32 / 1). No YaRN mscale anywhere.

Rows are gathered per position (`cos = table.cos[positions]`) and `apply_rope` rotates the
channel pairs (2i, 2i+1): `x0 = x[..., 0::2]`, `x1 = x[..., 1::2]`,
`(x0 cos - x1 sin, x0 sin + x1 cos)`, re-interleaved with `stack(-1).flatten(-2)`. The inverse
rotation is the same call with `-sin`. No complex numbers (Inductor does not fuse them).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class YarnScaling:
    factor: float
    original_seq_len: int
    beta_fast: float
    beta_slow: float


def rope_frequencies(rope_dim: int, base: float, yarn: Optional[YarnScaling] = None) -> Tensor:
    """f_i = base^(-2i/rope_dim), i < rope_dim/2, optionally YaRN-blended (official precompute_freqs_cis)."""
    freqs = 1.0 / (base ** (torch.arange(0, rope_dim, 2, dtype=torch.float32, device="cpu") / rope_dim))
    if yarn is not None:

        def correction_dim(n_rot: float) -> float:
            return rope_dim * math.log(yarn.original_seq_len / (n_rot * 2 * math.pi)) / (2 * math.log(base))

        lo = max(math.floor(correction_dim(yarn.beta_fast)), 0)
        hi = min(math.ceil(correction_dim(yarn.beta_slow)), rope_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(rope_dim // 2, dtype=torch.float32, device="cpu") - lo) / (hi - lo)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / yarn.factor * (1 - smooth) + freqs * smooth
    return freqs


@functools.lru_cache(maxsize=8)
def _cpu_tables(rope_dim: int, max_pos: int, base: float, yarn: Optional[YarnScaling]) -> tuple[Tensor, Tensor]:
    freqs = rope_frequencies(rope_dim, base, yarn)
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32, device="cpu"), freqs)
    return angles.cos(), angles.sin()


class RotaryTable(nn.Module):
    """Precomputed fp32 cos/sin tables `[max_pos, rope_dim/2]` (angles in fp32 like the official code).

    Tables are computed once on the CPU (cached) and copied to the default device; on the meta
    device only the shapes exist."""

    def __init__(self, rope_dim: int, max_pos: int, base: float, yarn: Optional[YarnScaling] = None) -> None:
        super().__init__()
        self.rope_dim = rope_dim
        device = torch.get_default_device()
        if device.type == "meta":
            cos = torch.empty(max_pos, rope_dim // 2, device=device)
            sin = torch.empty(max_pos, rope_dim // 2, device=device)
        else:
            cos, sin = (t.to(device, copy=True) for t in _cpu_tables(rope_dim, max_pos, base, yarn))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x's last dim (fp32 result). cos/sin broadcast against x[..., ::2]."""
    x = x.float()
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack([y0, y1], -1).flatten(-2)


def apply_inverse_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Undo apply_rope (rotation by -theta)."""
    return apply_rope(x, cos, -sin)
