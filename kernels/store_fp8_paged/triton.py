"""Triton provider of store_fp8_paged: FP8 quantization + paged store in one pass.

The kernel is the FP8 KV kernel of ``kv_norm_rope_quant/triton.py`` without its norm/RoPE stage
(``NORM_ROPE=False, STORE=True``): one program per token row (four rows for large calls) reads the
448 nope and 64 rope bf16 values, quantizes the nope tiles and writes 448 FP8 bytes, 128 rope bytes
and 8 scale bytes at the slot's page and row. Rows whose slot is negative form no address at all.
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM
from fusegraph.kernels.kv_norm_rope_quant.triton import MIN_QUANT_EPS, check_cache, launch
from fusegraph.kernels.store_fp8_paged.reference import store_fp8_paged


def _supports(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float) -> str | None:
    T = loc.shape[0] if loc.dim() == 1 else -1
    for name, t, width in (("k_nope", k_nope, NOPE_DIM), ("k_rope", k_rope, ROPE_DIM)):
        if t.dtype != torch.bfloat16 or t.dim() != 2 or tuple(t.shape) != (T, width) or t.stride(1) != 1:
            return f"{name} must be bf16 [{T}, {width}] with contiguous rows, got {t.dtype} {tuple(t.shape)}"
    if not quant_eps >= MIN_QUANT_EPS:
        return f"quant_eps {quant_eps} below {MIN_QUANT_EPS} (scales would leave the fp32 normal range)"
    reason = check_cache(cache, loc, page_size)
    if reason:
        return reason
    return None if k_nope.device == cache.device == k_rope.device else "tensors on several devices"


@store_fp8_paged.provider("triton", targets=tc.provider_targets(), priority=20,
                          available=tc.triton_missing, supports_args=_supports)
def store_fp8_paged_triton(cache, loc, k_nope, k_rope, page_size, quant_eps):
    launch(nope=k_nope, rope=k_rope, cache=cache, loc=loc, page_size=page_size, quant_eps=quant_eps)
