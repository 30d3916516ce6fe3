"""compressor_pool: the KV compressor's pooling and post-processing for a prefill from position 0
(spec 3.1-3.3, pattern F7), plain torch.

Inputs are the per-token fp32 outputs of the compressor's two projections, ``kv`` and the gate
``score`` (both ``[T, co*d]``, ``co = 2`` for ratio 4, else 1), the absolute position bias
``ape [r, co*d]``, the RMSNorm weight ``norm_weight [d]`` and the RoPE rows of each block
(``cos/sin [T//r, 32]``, gathered at the block's first position ``j*r``).

Block ``j`` pools a window of tokens independently per channel with a softmax over the window:
- ratio != 4: the ``r`` tokens ``[j*r, (j+1)*r)``;
- ratio == 4 (overlap): ``2r`` entries, the previous block's tokens on channels ``[0, d)`` then the
  block's own tokens on channels ``[d, 2d)``; block 0 has no previous block (kv 0, score -inf).
The scores get ``ape[t mod r]`` added first. The pooled row is rounded to bf16, RMSNorm'd (fp32
math, bf16 out) and RoPE'd on its last 64 channels (fp32 math on the bf16 values, bf16 out), the
official rounding points. ``T % r`` trailing tokens are ignored (their block is incomplete).

A channel whose scores are all -inf pools to 0 (a plain softmax would give NaN); it cannot happen
with finite gate scores, and the kernels implement the same guard.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._rope import ROPE_DIM, rms_norm, rope_last
from fusegraph.ops import fused_op


def overlap(ratio: int) -> bool:
    """Ratio-4 compressors pool overlapping windows of two blocks."""
    return ratio == 4


def pool_windows(kv: Tensor, score: Tensor, ape: Tensor, ratio: int, acc_dtype: torch.dtype) -> Tensor:
    """The per-channel softmax pool of every complete block: ``[T//r, d]`` in ``acc_dtype``."""
    nb = kv.shape[0] // ratio
    kv = kv[:nb * ratio].to(acc_dtype).unflatten(0, (nb, ratio))
    score = score[:nb * ratio].to(acc_dtype).unflatten(0, (nb, ratio)) + ape.to(acc_dtype)
    if overlap(ratio):
        d = kv.shape[-1] // 2
        # previous block's tokens on the first half of the channels; nothing before block 0
        prev_kv = torch.cat([kv.new_zeros(1, ratio, d), kv[:, :, :d]], 0)[:nb]
        prev_score = torch.cat([score.new_full((1, ratio, d), float("-inf")), score[:, :, :d]], 0)[:nb]
        kv = torch.cat([prev_kv, kv[:, :, d:]], 1)
        score = torch.cat([prev_score, score[:, :, d:]], 1)
    top = score.amax(1, keepdim=True)
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)  # all -inf: weights 0, not NaN
    weights = torch.exp(score - top)
    total = weights.sum(1)
    pooled = (weights * kv).sum(1)
    return torch.where(total > 0, pooled / total, torch.zeros_like(pooled))


def compressor_pool_math(kv: Tensor, score: Tensor, ape: Tensor, norm_weight: Tensor, cos: Tensor,
                         sin: Tensor, ratio: int, eps: float, acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """The op's math in ``acc_dtype`` with its inner bf16 rounding points, final result unrounded
    (tests use float64 as the oracle)."""
    pooled = pool_windows(kv, score, ape, ratio, acc_dtype).to(torch.bfloat16)
    normed = rms_norm(pooled.to(acc_dtype), norm_weight.to(acc_dtype), eps).to(torch.bfloat16)
    return rope_last(normed.to(acc_dtype), cos.to(acc_dtype), sin.to(acc_dtype), ROPE_DIM)


@fused_op("compressor_pool")
def compressor_pool(kv: Tensor, score: Tensor, ape: Tensor, norm_weight: Tensor, cos: Tensor, sin: Tensor,
                    ratio: int, eps: float) -> Tensor:
    """bf16 ``[T//ratio, d]``: APE add, (ratio 4: overlapping) per-channel softmax pool, bf16 round,
    RMSNorm, RoPE on the last 64 channels (see the module docstring)."""
    return compressor_pool_math(kv, score, ape, norm_weight, cos, sin, ratio, eps).to(torch.bfloat16)
