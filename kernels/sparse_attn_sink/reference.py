"""sparse_attn_sink: DSV4 sparse MQA decode/prefill attention with an attention sink (spec 4.5, F8).

One softmax per (token, head) over the union of two row sets of the paged FP8 KV caches (the
sliding-window cache and the compressed cache), plus a per-head "sink" logit that has no value,
then the inverse RoPE of the output's rope channels. Written in the F8 form: gather + dequant,
``einsum`` scores, ``masked_fill(-inf)``, max, ``exp``, sum, ``+ exp(sink - m)``, divide,
``einsum`` with the values, bf16, inverse RoPE (F4 form with ``-sin``).

The only departure from the spec's formula is the max: ``m`` includes the sink logit. That is the
same softmax (any ``m`` cancels) but never ``-inf``, so a token whose indices are all invalid gets
``exp(sink - m) / exp(sink - m)`` in the denominator and no value terms: output exactly 0, as
required, without NaN guards.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.kernels._rope import ROPE_DIM, rope_interleaved
from fusegraph.kernels.gather_dequant.reference import HEAD_DIM, dequantize_slots
from fusegraph.ops import fused_op


def sparse_attn_sink_math(q: Tensor, kv_swa: Tensor, swa_idx: Tensor, kv_cmp: Tensor, cmp_idx: Tensor,
                          sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float,
                          acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """The op on already dequantized rows ``kv_* [T, K*, 512]``, math in ``acc_dtype`` (tests: fp64)."""
    T, H, _ = q.shape
    kv = torch.cat([kv_swa, kv_cmp], dim=1).to(acc_dtype)                  # [T, K, 512]
    invalid = torch.cat([swa_idx, cmp_idx], dim=1) < 0                     # [T, K]
    scores = torch.einsum("thd,tkd->thk", q.to(acc_dtype), kv) * softmax_scale
    scores = scores.masked_fill(invalid.unsqueeze(1), float("-inf"))
    sink_logit = sink.to(acc_dtype).view(1, H, 1).expand(T, H, 1)
    m = torch.cat([scores, sink_logit], dim=-1).amax(-1, keepdim=True)    # includes the sink: finite
    p = torch.exp(scores - m)
    den = p.sum(-1, keepdim=True) + torch.exp(sink_logit - m)
    out = torch.einsum("thk,tkd->thd", p / den, kv).to(q.dtype)
    nope, rope = out[..., :HEAD_DIM - ROPE_DIM], out[..., HEAD_DIM - ROPE_DIM:].to(acc_dtype)
    rope = rope_interleaved(rope, cos.to(acc_dtype).unsqueeze(1), -sin.to(acc_dtype).unsqueeze(1))
    return torch.cat([nope, rope.to(q.dtype)], dim=-1)


@fused_op("sparse_attn_sink")
def sparse_attn_sink(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Tensor, cmp_idx: Tensor,
                     sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int,
                     cmp_page_size: int) -> Tensor:
    """Sparse attention with attention sink over two paged FP8 caches, then inverse RoPE.

    q: bf16 ``[T, H, 512]``. swa_cache / cmp_cache: uint8 ``[num_pages, bytes_per_page]`` paged FP8
    caches (spec 4.3) with ``swa_page_size`` / ``cmp_page_size`` tokens per page (the two pools may
    page differently). swa_idx: int32/int64 ``[T, Kw]`` slots of ``swa_cache``; cmp_idx:
    ``[T, Kc]`` slots of ``cmp_cache`` (``Kc`` may be 0, then ``cmp_cache`` is never read);
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
    kv_swa = dequantize_slots(swa_cache, swa_idx, swa_page_size)
    kv_cmp = dequantize_slots(cmp_cache, cmp_idx, cmp_page_size)
    return sparse_attn_sink_math(q, kv_swa, swa_idx, kv_cmp, cmp_idx, sink, cos, sin, softmax_scale)
