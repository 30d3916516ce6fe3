"""q_norm_rope: DSV4's per-head query normalization and RoPE (spec 4.2, pattern F4), plain torch.

``q [T, H, Dh]`` (bf16, the ``wq_b`` output viewed per head) gets an UNWEIGHTED RMSNorm over each
head's ``Dh`` channels, then interleaved RoPE on the head's last 64 channels with the token's
``cos/sin [T, 32]`` row. All math is fp32 with one final bf16 rounding (the F4 form and sglang's
``fused_q_norm_rope``; the official code rounds to bf16 between the norm and the RoPE, which
differs by at most one bf16 ulp on the rope channels).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._rope import ROPE_DIM, rms_norm, rope_last
from fusegraph.ops import fused_op


def q_norm_rope_math(q: Tensor, cos: Tensor, sin: Tensor, eps: float,
                     acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """The op's math in ``acc_dtype``, unrounded (tests use float64 as the oracle)."""
    normed = rms_norm(q.to(acc_dtype), None, eps)
    out = rope_last(normed, cos.to(acc_dtype).unsqueeze(-2), sin.to(acc_dtype).unsqueeze(-2), ROPE_DIM)
    return out


@fused_op("q_norm_rope")
def q_norm_rope(q: Tensor, cos: Tensor, sin: Tensor, eps: float) -> Tensor:
    """``[T, H, Dh]`` in q's dtype: per-head unweighted RMSNorm, RoPE on the last 64 channels."""
    return q_norm_rope_math(q, cos, sin, eps).to(q.dtype)
