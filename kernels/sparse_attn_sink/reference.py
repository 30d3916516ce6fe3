"""sparse_attn_sink: DSV4 sparse MQA decode/prefill attention with an attention sink (spec 4.5, F8).

One softmax per (token, head) over the union of two row sets of the paged FP8 KV caches (the
sliding-window cache and the compressed cache), plus a per-head "sink" logit that has no value,
then the inverse RoPE of the output's rope channels. Written in the F8 form, which is also how torch
models spell it: gather + dequant of the rows at ``idx.clamp_min(0)`` per cache, ``cat`` along K,
``float``, ``einsum`` scores, ``masked_fill(-inf)`` of the invalid entries, max, ``exp``, sum,
``+ exp(sink - m)``, divide, ``einsum`` with the values, bf16, inverse RoPE (F4 form with ``-sin``).
The pattern matcher verifies candidate sites against this function and reports near misses by
aligning its intermediates with the model's, so staying close to the F8 form pays twice.

Two guards, neither changing a value: a token whose indices are all invalid has ``m = -inf``, so
``m`` is replaced by the sink logit there (any finite ``m`` cancels; its output is exactly 0); and the
weighted sum zeroes the rows of invalid entries when one of them is not finite (those entries are
never read: ``0 * NaN`` must not leak). The gather dequantizes each cache once
and indexes it when there are more (token, entry) pairs than cache rows (prefill), else it reads the
pairs' rows; both give ``gather_dequant``'s values bit for bit. The matcher runs this reference at the
model's sizes (flash prefill: 164k pairs), so its cost is compile time.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels._fp8 import NOPE_DIM, NOPE_TILES, QUANT_TILE, ROW_BYTES, SCALE_BYTES, UE8M0_BIAS
from fusegraph.kernels._rope import ROPE_DIM, rope_interleaved
from fusegraph.kernels.gather_dequant.reference import HEAD_DIM
from fusegraph.ops import fused_op


def gather_rows(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    """bf16 ``slots.shape + (512,)`` rows of the paged FP8 ``cache``; slots < 0 give zero rows
    (``gather_dequant``'s values bit for bit)."""
    valid = (slots >= 0).unsqueeze(-1)
    rows = read_rows(cache, slots.clamp_min(0), page_size)
    return torch.where(valid, rows, torch.zeros_like(rows))


def read_rows(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    """bf16 ``slots.shape + (512,)`` dequantized rows at ``slots`` (all >= 0) of the paged FP8 cache.

    The row and scale areas of the pages are viewed as ``[pages * P, 576]`` / ``[pages * P, 8]``. With
    more slots than cache rows every row is dequantized once and the table is indexed; else the
    slots' rows are gathered (one index per slot, not per byte) and dequantized."""
    rows_end = page_size * ROW_BYTES
    row_area = cache[:, :rows_end].unflatten(1, (page_size, ROW_BYTES))
    scale_area = cache[:, rows_end:rows_end + page_size * SCALE_BYTES].unflatten(1, (page_size, SCALE_BYTES))
    if slots.numel() >= cache.shape[0] * page_size:
        table = _dequantize(row_area.flatten(0, 1), scale_area.flatten(0, 1)[:, :NOPE_TILES])
        return table[slots.long()]
    flat = slots.reshape(-1).long()
    page, row = flat // page_size, flat % page_size
    rows = _dequantize(row_area[page, row], scale_area[page, row, :NOPE_TILES])
    return rows.view(*slots.shape, HEAD_DIM)


def _dequantize(row_bytes: Tensor, scale_bytes: Tensor) -> Tensor:
    """bf16 [n, 512] of uint8 rows [n, 576] and their scale bytes [n, 7] (spec 4.4)."""
    n = row_bytes.shape[0]
    nope = row_bytes[:, :NOPE_DIM].view(torch.float8_e4m3fn).to(torch.float32)
    scale = torch.exp2(scale_bytes.to(torch.float32) - UE8M0_BIAS)
    nope = (nope.view(n, NOPE_TILES, QUANT_TILE) * scale.unsqueeze(-1)).view(n, NOPE_DIM)
    rope = row_bytes[:, NOPE_DIM:].contiguous().view(torch.bfloat16)
    return torch.cat([nope.to(torch.bfloat16), rope], dim=-1)


def sparse_attn_sink_math(q: Tensor, kv_swa: Tensor, swa_idx: Tensor, kv_cmp: Tensor, cmp_idx: Tensor,
                          sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float,
                          acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """The op on already dequantized rows ``kv_* [T, K*, 512]``, math in ``acc_dtype`` (tests: fp64)."""
    kv = torch.cat([kv_swa, kv_cmp], dim=1).to(acc_dtype)                  # [T, K, 512]
    invalid = torch.cat([swa_idx, cmp_idx], dim=1) < 0                     # [T, K]
    return attend(q, kv, invalid, sink, cos, sin, softmax_scale)


def attend(q: Tensor, kv: Tensor, invalid: Tensor, sink: Tensor, cos: Tensor, sin: Tensor,
           softmax_scale: float) -> Tensor:
    """Softmax with sink over the rows ``kv [T, K, 512]`` (in the math dtype) not ``invalid [T, K]``,
    weighted sum, bf16, inverse RoPE of the last 64 channels. Rows of invalid entries may hold
    anything (even NaN): their scores are masked and they never reach the weighted sum."""
    T, H, _ = q.shape
    acc_dtype = kv.dtype
    scores = torch.einsum("thd,tkd->thk", q.to(acc_dtype), kv) * softmax_scale
    scores = scores.masked_fill(invalid.unsqueeze(1), float("-inf"))
    sink_logit = sink.to(acc_dtype).view(1, H, 1)
    m = scores.amax(-1, keepdim=True)
    m = torch.where(m == float("-inf"), sink_logit, m)   # no valid entry: any finite m, the output is 0
    p = torch.exp(scores - m)
    den = p.sum(-1, keepdim=True) + torch.exp(sink_logit - m)
    weights = p / den
    out = torch.einsum("thk,tkd->thd", weights, kv)
    if not bool(torch.isfinite(out).all()):  # a non-finite row read by an invalid entry: 0 * NaN
        out = torch.einsum("thk,tkd->thd", weights, kv.masked_fill(invalid.unsqueeze(-1), 0.0))
    out = out.to(q.dtype)
    nope, rope = out[..., :HEAD_DIM - ROPE_DIM], out[..., HEAD_DIM - ROPE_DIM:].to(acc_dtype)
    rope = rope_interleaved(rope, cos.to(acc_dtype).unsqueeze(1), -sin.to(acc_dtype).unsqueeze(1))
    return torch.cat([nope, rope.to(q.dtype)], dim=-1)


def no_compressed(swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor],
                  cmp_idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(cmp_cache, cmp_idx) with ``None`` (a ratio-0 layer) as an empty list over a placeholder cache
    (the providers' view of the op's optional compressed pool)."""
    if cmp_idx is None or cmp_cache is None:
        return swa_cache, swa_idx[..., :0]
    return cmp_cache, cmp_idx


def q_reason(q: Tensor) -> str | None:
    """Why a provider cannot take ``q`` (every kernel reads bf16 ``[T, H, 512]`` rows with contiguous
    channels), or ``None``."""
    if q.dtype != torch.bfloat16 or q.dim() != 3 or q.shape[-1] != HEAD_DIM or q.stride(-1) != 1:
        return f"q must be bf16 [T, H, {HEAD_DIM}] with contiguous channels, got {q.dtype} {tuple(q.shape)}"
    return None


def _shape_only(q: Tensor, *args, **kwargs) -> Tensor:
    """Fake (meta) implementation: the output's shape and dtype."""
    return q.new_empty(q.shape)


@fused_op("sparse_attn_sink", fake=_shape_only)
def sparse_attn_sink(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor],
                     cmp_idx: Optional[Tensor], sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float,
                     swa_page_size: int, cmp_page_size: int) -> Tensor:
    """Sparse attention with attention sink over two paged FP8 caches, then inverse RoPE.

    q: bf16 ``[T, H, 512]``. swa_cache / cmp_cache: uint8 ``[num_pages, bytes_per_page]`` paged FP8
    caches (spec 4.3) with ``swa_page_size`` / ``cmp_page_size`` tokens per page (the two pools may
    page differently). swa_idx: int32/int64 ``[T, Kw]`` slots of ``swa_cache``; cmp_idx:
    ``[T, Kc]`` slots of ``cmp_cache`` (``Kc`` may be 0, then ``cmp_cache`` is never read; both
    ``None``: a layer without compressed entries, ratio 0, and ``cmp_page_size`` is ignored);
    entries < 0 are invalid (padding) and never read. sink: fp32 ``[H]`` logits. cos/sin: fp32
    ``[T, 32]`` at each query's position. softmax_scale: ``512^-0.5`` in DSV4.

    Per token t and head h, over the valid rows e of both index lists (K = V = the row's 512
    dequantized channels, bf16): ``s_e = (q·kv_e) * softmax_scale`` (fp32),
    ``m = max(max_e s_e, sink[h])``, ``den = sum_e exp(s_e - m) + exp(sink[h] - m)``,
    ``o = sum_e exp(s_e - m) / den * kv_e`` rounded to bf16; then the last 64 channels are rotated
    back (interleaved pairs, angle ``-θ``: ``y0 = x0*cos + x1*sin``, ``y1 = x1*cos - x0*sin`` in
    fp32, bf16 result). Duplicated indices count as many times as they appear. A token with no
    valid index gets zeros. Returns bf16 ``[T, H, 512]``.
    """
    lists = [(swa_cache, swa_idx, swa_page_size)]
    if cmp_idx is not None and cmp_cache is not None:  # None: a ratio-0 layer
        lists.append((cmp_cache, cmp_idx, cmp_page_size if cmp_idx.shape[1] else 1))
    kv = torch.cat([read_rows(cache, idx.clamp_min(0), page) for cache, idx, page in lists], dim=1).float()
    invalid = torch.cat([idx for _, idx, _ in lists], dim=1) < 0
    return attend(q, kv, invalid, sink, cos, sin, softmax_scale)
