"""Shared input specs, generators and regimes of the DSV4 patterns (DSV4 constants: spec section 1)."""
from __future__ import annotations

import math

import torch

from fusegraph.pattern import Dims, Regime, TensorSpec, randn

EPS = 1e-6            # rms_norm_eps = hc_eps = every norm eps in the released models
SINKHORN_ITERS = 20
POST_MULT = 2.0
FP8_AMAX_EPS = 1e-4   # official act_quant clamp
BF16 = (torch.bfloat16,)
F32 = (torch.float32,)
INDEX = (torch.int32, torch.int64)
ROPE_PAIRS = 32       # rope dim 64 = 32 interleaved pairs in every DSV4 RoPE


def fan_in(dim: str, scale: float = 1.0):
    """randn / sqrt(dims[dim]): keeps matmul outputs O(1) whatever the width."""
    def gen(shape, dtype, g, dims: Dims):
        return (torch.randn(shape, generator=g) * scale / math.sqrt(dims[dim])).to(dtype)
    return gen


def unique_rows(rows: str):
    """``T`` distinct row indices in ``[0, dims[rows])`` (a store must not write a row twice)."""
    def gen(shape, dtype, g, dims: Dims):
        return torch.randperm(dims[rows], generator=g)[: shape[0]].to(dtype)
    return gen


def unique_slots(capacity):
    def gen(shape, dtype, g, dims: Dims):
        return torch.randperm(capacity(dims), generator=g)[: shape[0]].to(dtype)
    return gen


def random_bytes(shape, dtype, g, dims):
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(dtype)


def near_one(spread: float = 0.2):
    return randn(spread, 1.0)


def residual_spec() -> TensorSpec:
    return TensorSpec(("T", "C", "D"), BF16)


def rope_specs(rows: str = "T") -> dict[str, TensorSpec]:
    # cos/sin are free inputs to the op: any values test the same arithmetic.
    return {"cos": TensorSpec((rows, ROPE_PAIRS), F32, randn(0.7)), "sin": TensorSpec((rows, ROPE_PAIRS), F32, randn(0.7))}


# Regimes of the mHC ops: tiny residuals make both RMS eps dominate (and residuals of mean square
# ~eps make the exact eps value matter, not only its presence); spread logits make the
# softmax entries tiny so the Sinkhorn +eps terms decide them, and push pre to its hc_eps floor.
MHC_REGIMES = (
    Regime("normal"),
    Regime("tiny", {"residual": randn(1e-4)}),
    Regime("eps", {"residual": randn(1e-3)}),   # mean square ~ eps: a 10x eps change moves rinv ~3x
    Regime("spread", {"scale": randn(0.0), "base": randn(40.0)}),
    Regime("floor", {"base": randn(1.0, -40.0)}),
)


def hc_constraints(dims: Dims, rows: int | None) -> str | None:
    if dims["C"] != 4:
        return f"hc_mult is {dims['C']}; the fused mHC ops take 4"
    if dims["K"] != dims["C"] * dims["D"]:
        return f"fn has {dims['K']} columns, expected hc_mult * hidden = {dims['C'] * dims['D']}"
    if rows is not None and dims.get("N3", rows) != rows:
        return f"fn has {dims.get('N3')} rows, expected hc_mult * (2 + hc_mult) = {rows}"
    return None


def page_size_of(bytes_per_page: int) -> int:
    """Page size P of the DSV4 FP8 layout with this many bytes per page (roundup(P*584, 576))."""
    for p in range(bytes_per_page // 584, 0, -1):
        if -(-p * 584 // 576) * 576 == bytes_per_page:
            return p
    return 0
