"""kv_norm_rope_quant: DSV4's KV-path post-processing with FP8 simulation (spec 4.3, pattern F5).

``kv [T, 512]`` (bf16, the ``wkv`` output) gets a weighted RMSNorm (fp32 math, rounded to bf16
like the model's RMSNorm module), then RoPE on its last 64 channels (fp32 on the bf16 values,
bf16 out) and an FP8 e4m3 quant-dequant of its first 448 channels in tiles of 64 with ue8m0
scales (``kernels/_fp8.py``). Returns ``(k_nope [T, 448], k_rope [T, 64])`` in bf16: exactly
what storing the row into the FP8 cache and reading it back gives.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._fp8 import NOPE_DIM, quant_dequant
from fusegraph.kernels._rope import rms_norm, rope_interleaved
from fusegraph.ops import fused_op


def kv_norm_rope_math(kv: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float,
                      acc_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(normed nope [T, 448], roped rope [T, 64])`` before the FP8 step, in ``acc_dtype``: the nope
    part holds the bf16-rounded norm output, the rope part is unrounded (tests use float64 as oracle)."""
    normed = rms_norm(kv.to(acc_dtype), weight, eps).to(torch.bfloat16).to(acc_dtype)
    nope, rope = normed[:, :NOPE_DIM], normed[:, NOPE_DIM:]
    return nope, rope_interleaved(rope, cos.to(acc_dtype), sin.to(acc_dtype))


@fused_op("kv_norm_rope_quant")
def kv_norm_rope_quant(kv: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float,
                       quant_eps: float) -> tuple[Tensor, Tensor]:
    """``(k_nope bf16 [T, 448], k_rope bf16 [T, 64])``: RMSNorm, RoPE, FP8 quant-dequant of the nope part."""
    nope, rope = kv_norm_rope_math(kv, weight, cos, sin, eps)
    return quant_dequant(nope, quant_eps).to(torch.bfloat16), rope.to(torch.bfloat16)
