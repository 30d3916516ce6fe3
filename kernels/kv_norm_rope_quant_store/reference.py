"""kv_norm_rope_quant_store: the whole KV write path of a DSV4 layer in one op (spec 4.3, F5).

Literally ``store_fp8_paged(cache, loc, *kv_norm_rope_quant(kv, weight, cos, sin, eps, quant_eps),
page_size, quant_eps)``: weighted RMSNorm, RoPE on the last 64 channels, FP8 quant-dequant of the
first 448, then quantization of that (already FP8-exact) row into the paged cache at slots ``loc``
(< 0 skipped). Re-quantizing gives back the same values; the bytes can differ from a single
quantization of the normed row, because a tile whose largest value rounded down to ``224 * scale``
re-quantizes with half the scale. The fused kernel quantizes twice as well, so it is exact.
"""
from __future__ import annotations

from torch import Tensor

from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM
from fusegraph.kernels.kv_norm_rope_quant.reference import kv_norm_rope_quant
from fusegraph.kernels.store_fp8_paged.reference import check_args as check_store_args
from fusegraph.kernels.store_fp8_paged.reference import store_fp8_paged
from fusegraph.ops import fused_op


def check_args(kv: Tensor, cache: Tensor, loc: Tensor, page_size: int) -> None:
    if kv.dim() != 2 or kv.shape[1] != NOPE_DIM + ROPE_DIM:
        raise ValueError(f"kv must be [T, {NOPE_DIM + ROPE_DIM}], got {tuple(kv.shape)}")
    check_store_args(cache, loc, kv[:, :NOPE_DIM], kv[:, NOPE_DIM:], page_size)


@fused_op("kv_norm_rope_quant_store", mutates_args=("cache",))
def kv_norm_rope_quant_store(kv: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float, quant_eps: float,
                             cache: Tensor, loc: Tensor, page_size: int) -> None:
    """RMSNorm + RoPE + FP8 quantization of ``kv [T, 512]``, stored at slots ``loc`` of the paged cache."""
    check_args(kv, cache, loc, page_size)
    k_nope, k_rope = kv_norm_rope_quant.reference(kv, weight, cos, sin, eps, quant_eps)
    store_fp8_paged.reference(cache, loc, k_nope, k_rope, page_size, quant_eps)
