"""Sparse attention with attention sink + inverse RoPE (spec 4.4-4.5, pattern F8).

Boundary: from the paged FP8 caches as the model holds them (uint8 ``get_attr`` buffers) and the two
index lists (window slots, compressed slots; ``-1`` = none) to the bf16 attention output after the
inverse RoPE of its rope channels: the fused op's own signature. Everything in between is the
region, however it is spelled: the gather (indexing, ``torch.gather``, ``index_select``; per
gathered row, or dequantize the whole cache then index), the FP8 dequant, the ``clamp_min(0)`` of the
indices, how the two row sets meet (rows and lists concatenated along K, as ``fusegraph.models`` and
sglang's torch fallback do, or one pool of both caches indexed by the joint list with the compressed
slots shifted past the window slots), the scores, the ``-1`` mask, the softmax with the sink
(``exp``/``sum`` by hand, or ``cat`` of the sink logit + ``softmax`` + dropping its column), the
weighted sum and the inverse RoPE. All of these are one function of the caches and the two lists,
so one pattern verifies them all. The fused op reads the FP8 bytes itself (no bf16 copy of rows).

Binding hints (``fusegraph.match.bind``): the index lists are ``source_first`` (models derive a
clamped copy for the gather, a joint list for the mask, maybe shifted copies; the binder must take
the list itself, the value those uses fork from); each cache is ``indexed_by`` its list (both caches
are in reach of either list; a cache goes with the list whose gather reads it) and lies up to 16 ops
behind its readers (``reach``: byte slices, views, dequant, pool); cos/sin are bound ``after`` the
rest (every RoPE of the layer reads them; then the nearest reader is the site's inverse RoPE) and,
if nothing in the site reads them, ``behind`` q (so a missing inverse RoPE is a near miss that says
the output differs, not a bare "missing input").

Two patterns of the op:

* ``sparse_attn_sink`` (ratio 4 and 128 layers): window cache + compressed cache. The compressed list
  may be empty (a ratio-128 layer before its first complete block gathers zero rows), hence ``empty_ok``.
* ``sparse_attn_sink_swa`` (ratio 0 layers): the window cache only (``cmp_cache``/``cmp_idx`` None).

Found from the sink (an ``[H]`` fp32 parameter, one per attention layer; every output depends on it).
Random inputs let the verification see every piece of the math: caches hold finite FP8 rows of unit
magnitude (scores O(1), so ``softmax_scale`` matters), the sink logit is ``log(K)``-sized (its term
is a sizeable share of the denominator), a third of the index entries are ``-1`` (the mask matters),
and every token keeps one valid window entry (code taking the max without the sink would divide 0
by 0 otherwise, which no real window does: it holds the token itself), and q is drawn with spread 2
(``spread_q``).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ._common import BF16, F32, INDEX, page_size_of, rope_specs
from fusegraph.kernels._fp8 import NOPE_DIM, ROW_BYTES, SCALE_BYTES, PagedLayout, quantize_tiles, scale_bytes
from fusegraph.pattern import Dims, Pattern, Regime, TensorSpec

HEAD_DIM = 512
SOFTMAX_SCALE = HEAD_DIM ** -0.5
INVALID_SHARE = 1 / 3


def fp8_cache(shape, dtype, g: torch.Generator, dims: Dims) -> torch.Tensor:
    """A paged FP8 cache whose every row dequantizes to finite values ~N(0, 1); page tails random."""
    pages, page_bytes = shape
    p = page_size_of(page_bytes)
    scales_at = PagedLayout(p).scales_offset
    cache = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    rows = torch.randn(pages * p, HEAD_DIM, generator=g).to(torch.bfloat16)
    q, exps = quantize_tiles(rows[:, :NOPE_DIM], 1e-4)
    data = torch.cat([q.view(torch.uint8), rows[:, NOPE_DIM:].contiguous().view(torch.uint8)], -1)
    cache[:, :p * ROW_BYTES] = data.reshape(pages, p * ROW_BYTES)
    scales = torch.cat([scale_bytes(exps), torch.zeros(pages * p, 1, dtype=torch.uint8)], -1)
    cache[:, scales_at:scales_at + p * SCALE_BYTES] = scales.reshape(pages, p * SCALE_BYTES)
    return cache


def slots(pages: str, page_bytes: str, keep_last: bool):
    """Random slots of the cache ``[pages, page_bytes]``, a third of them -1, duplicates allowed;
    ``keep_last``: the last entry of every row is valid (a window holds the token itself)."""
    def gen(shape, dtype, g, dims: Dims):
        capacity = dims[pages] * page_size_of(dims[page_bytes])
        idx = torch.randint(0, capacity, shape, generator=g)
        idx[torch.rand(shape, generator=g) < INVALID_SHARE] = -1
        if keep_last and shape[-1]:
            idx[..., -1] = torch.randint(0, capacity, shape[:-1], generator=g)
        return idx.to(dtype)
    return gen


def sink_logits(shape, dtype, g, dims: Dims):
    """``log(K) + N(0, 1)``: exp(sink) is comparable to the sum over the ~2K/3 valid entries."""
    k = dims["Kw"] + dims.get("Kc", 0)
    return (math.log(max(k, 1)) + torch.randn(shape, generator=g)).to(dtype)


def spread_q(shape, dtype, g, dims: Dims):
    """q ~ N(0, 2^2): scores of spread ~2 over unit rows, a softmax neither flat nor one-hot, so a
    different scale or a missing sink term moves the output far beyond bf16 rounding."""
    return (2 * torch.randn(shape, generator=g)).to(dtype)


def cache_spec(pages: str, page_bytes: str, index_input: str) -> TensorSpec:
    return TensorSpec((pages, page_bytes), (torch.uint8,), fp8_cache, check=lambda d: page_size_of(d[page_bytes]) > 0,
                      param=True, reach=16, indexed_by=index_input)


def index_spec(tokens: str, entries: str, pages: str, page_bytes: str, keep_last: bool,
               empty_ok: bool = False) -> TensorSpec:
    return TensorSpec((tokens, entries), INDEX, slots(pages, page_bytes, keep_last), empty_ok=empty_ok,
                      source_first=True)


# What the sink logit meets first: ``sink - m``, ``cat([scores, sink])``, ``exp(sink)``,
# ``torch.maximum(m, sink)``, ``logaddexp(lse, sink)`` (unlabelled torch functions label as "None:<name>").
SINK_LABELS = ("sub", "cat", "exp", "stack", "max", "amax", "fn:maximum", "None:maximum", "fn:logaddexp",
               "None:logaddexp")
# One regime: the attention's tensors are [T, K, 512] (flash prefill: 84M elements), every extra
# regime costs seconds of compile time, and these inputs already make each constant visible.
REGIMES = (Regime("normal"),)
WINDOW_INPUTS = {
    "q": TensorSpec(("T", "H", HEAD_DIM), BF16, spread_q),
    "swa_cache": cache_spec("NPw", "Bw", "swa_idx"),
    "swa_idx": index_spec("T", "Kw", "NPw", "Bw", keep_last=True),
}
SINK = TensorSpec(("H",), F32, sink_logits, param=True)


def rope_tables(after: tuple[str, ...]) -> dict[str, TensorSpec]:
    """cos/sin at the query positions. Every RoPE of the layer reads them (q, k, the compressor), so
    they are bound last, when the nearest reader is the site's own inverse RoPE; a site without one
    still finds them behind q (its RoPE read them), so the near miss can say the output differs."""
    return {k: replace(v, after=after, behind=("q",)) for k, v in rope_specs("T").items()}


PATTERN = Pattern(
    name="sparse_attn_sink",
    op="sparse_attn_sink",
    inputs={
        **WINDOW_INPUTS,
        "cmp_cache": cache_spec("NPc", "Bc", "cmp_idx"),
        "cmp_idx": index_spec("T", "Kc", "NPc", "Bc", keep_last=False, empty_ok=True),
        "sink": SINK,
        **rope_tables(("q", "swa_cache", "swa_idx", "cmp_cache", "cmp_idx")),
    },
    literals={"softmax_scale": SOFTMAX_SCALE, "swa_page_size": lambda d: page_size_of(d["Bw"]),
              "cmp_page_size": lambda d: page_size_of(d["Bc"])},
    seed="sink",
    seed_label=SINK_LABELS,
    regimes=REGIMES,
    interchangeable=(("cos", "sin"),),
    priority=30,
    description="FP8 gather + dequant of window and compressed caches, scores, -1 mask, softmax with sink, "
                "weighted sum, inverse RoPE -> sparse_attn_sink",
)
