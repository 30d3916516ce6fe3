"""Triton provider of kv_norm_rope_quant_store: RMSNorm + RoPE + FP8 quantization + paged store of
the KV row in one kernel (``NORM_ROPE=True, STORE=True`` of the FP8 KV kernel in
``kv_norm_rope_quant/triton.py``). It reads 1 KB of bf16 per token and writes the 584 cache bytes,
the byte floor of the op; the unfused pair would also write and re-read the bf16 rows.
"""
from __future__ import annotations

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._fp8 import NOPE_DIM
from fusegraph.kernels.kv_norm_rope_quant.triton import check_cache, check_kv_input, launch
from fusegraph.kernels.kv_norm_rope_quant_store.reference import kv_norm_rope_quant_store


def _supports(kv, weight, cos, sin, eps: float, quant_eps: float, cache, loc, page_size: int) -> str | None:
    reason = check_kv_input(kv, weight, cos, sin, quant_eps) or check_cache(cache, loc, page_size)
    if reason:
        return reason
    if loc.shape[0] != kv.shape[0]:
        return f"loc has {loc.shape[0]} rows, kv {kv.shape[0]}"
    return None if kv.device == cache.device else "kv and cache on different devices"


@kv_norm_rope_quant_store.provider("triton", targets=tc.provider_targets(), priority=20,
                                   available=tc.triton_missing, supports_args=_supports)
def kv_norm_rope_quant_store_triton(kv, weight, cos, sin, eps, quant_eps, cache, loc, page_size):
    launch(nope=kv, rope=kv[:, NOPE_DIM:], weight=weight, cos=cos, sin=sin, cache=cache, loc=loc,
           page_size=page_size, eps=eps, quant_eps=quant_eps)
