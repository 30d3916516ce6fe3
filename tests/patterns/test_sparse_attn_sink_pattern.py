"""The sparse-attention-with-sink patterns (``sparse_attn_sink``, ``sparse_attn_sink_swa``; spec 4.4-4.5, F8).

* ``tiny``: every attention layer is fused (ratio 0 -> ``sparse_attn_sink_swa``, ratio 4 and 128 ->
  ``sparse_attn_sink``), in a decode-shaped graph (T = 1: the ratio-128 layer has no block yet, so its
  compressed list is empty, and the ratio-4 indexer returns only -1) with every pattern, and a
  prefill (T = 130: one ratio-128 block, 32 ratio-4 blocks for 16 top-k entries) with these two.
  The fused model equals the eager one and the model compiled without patterns. At T = 1 the
  attention runs through the Triton provider (under TRITON_INTERPRET), at T = 130 through the
  reference (``INTERPRET_MAX_STEPS``; the other ops' kernels would take a minute in the interpreter).
* ``AttnCore`` blocks: the attention core written other ways than ``fusegraph.models``' -- rows
  gathered per slot with ``index_select`` and a softmax over the scores with the sink logit appended
  as a column (``cat`` + ``softmax`` + drop it); one pool of both dequantized caches indexed with
  ``torch.gather`` by the joint list (compressed slots shifted past the window's) and the sink folded
  in by hand (``torch.maximum``, ``exp``, ``sum``) -- each fused into one ``sparse_attn_sink`` call.
* the same block with other semantics is not rewritten and says why: softmax scale ``448^-0.5``,
  the sink missing from the denominator, no inverse RoPE of the output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fusegraph
from fusegraph.kernels._fp8 import NOPE_DIM, ROW_BYTES, SCALE_BYTES
from fusegraph.kernels.gather_dequant.reference import dequantize_slots
from fusegraph.kernels.sparse_attn_sink.reference import gather_rows, sparse_attn_sink
from fusegraph.match.values import rel_l2
from fusegraph.models import attention as model_attention
from fusegraph.models.kv_cache import gather_fp8_paged
from fusegraph.models.presets import build_model, example_inputs
from fusegraph.models.rope import apply_inverse_rope, apply_rope
from fusegraph.patterns.sparse_attn_sink import fp8_cache

ATTN_PATTERNS = ("sparse_attn_sink", "sparse_attn_sink_swa")
CLASSIFIED = {"literal", "semantics", "dtype form", "view form"}
HEAD = 512
ROPE = 64


def assert_close(got: Tensor, want: Tensor, what: str, rel: float = 2 ** -7) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert torch.isfinite(got.float()).all(), f"{what}: non-finite values"
    err = rel_l2(got, want)
    assert err <= rel, f"{what}: rel L2 {err:.3g} > {rel:.3g}"


# -- tiny ------------------------------------------------------------------------------------------
def _attention_sites(compiled) -> dict[str, int]:
    return {k: v for k, v in compiled.report.counts().items() if k in ATTN_PATTERNS}


def test_tiny_decode_every_attention_layer_fused_and_equal():
    """All patterns (the attention reads q from the fused q_norm_rope call), against the model
    compiled without any pattern and the eager model."""
    model = build_model("tiny")
    inputs = example_inputs(model, 1)
    fused = fusegraph.compile(model, example_inputs=inputs, target="cpu")
    plain = fusegraph.compile(model, example_inputs=inputs, target="cpu", patterns=[])
    assert _attention_sites(fused) == {"sparse_attn_sink": 2, "sparse_attn_sink_swa": 1}
    assert not any(p in fused.report.shortfall() for p in ATTN_PATTERNS)  # the expected set counts them
    assert fused.report.expected["sparse_attn_sink"] == 2 and fused.report.expected["sparse_attn_sink_swa"] == 1
    assert _attention_sites(plain) == {}
    sites = [s for s in fused.report.sites if s.op == "sparse_attn_sink"]
    assert {s.module for s in sites} == {"layers.0.attn", "layers.1.attn", "layers.2.attn"}
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU CI: Triton serves T = 1 there
    assert all(s.selection.provider == ("triton" if interpreting else "torch") for s in sites)
    for site in sites:  # the op reads the caches themselves, and q from the fused q_norm_rope call
        assert "window_cache" in site.inputs["swa_cache"] and site.inputs["q"].startswith("q_norm_rope")
    with torch.no_grad():
        want = model(*inputs)
        got = fused(*inputs)
        without = plain(*inputs)
    assert_close(got, want, "tiny T=1 fused vs eager", rel=1e-2)
    assert_close(got, without, "tiny T=1 fused vs compiled without patterns", rel=1e-2)


def test_tiny_prefill_every_attention_layer_fused_and_equal():
    model = build_model("tiny")
    inputs = example_inputs(model, 130)
    fused = fusegraph.compile(model, example_inputs=inputs, target="cpu", patterns=list(ATTN_PATTERNS))
    assert _attention_sites(fused) == {"sparse_attn_sink": 2, "sparse_attn_sink_swa": 1}
    by_module = {s.module: s for s in fused.report.sites}
    assert by_module["layers.0.attn"].pattern == "sparse_attn_sink_swa"
    with torch.no_grad():
        want = model(*inputs)
        got = fused(*inputs)
    assert_close(got, want, "tiny T=130 fused vs eager", rel=1e-2)
    calls = [n for n in fused.fused.graph.nodes if str(n.target).startswith("fusegraph.sparse_attn_sink")]
    assert len(calls) == 3


# -- the attention core in other spellings -------------------------------------------------------
@dataclass(frozen=True)
class Spelling:
    name: str
    gather: str = "model"         # model | index_select | pool_gather
    softmax: str = "model"        # model | cat_softmax | maximum
    rope: str = "model"           # model | unbind
    scale: float = HEAD ** -0.5   # semantics: the softmax scale
    sink_in_den: bool = True      # semantics: exp(sink - m) in the denominator
    inverse_rope: bool = True     # semantics: the output's rope channels rotated back


class AttnCore(nn.Module):
    """q RoPE (the caller's, so cos/sin are read before the attention too) + sparse attention with
    sink over two paged FP8 caches + inverse RoPE, in one ``Spelling``. T = 5 tokens, 2 heads, window
    lists of 9 entries, compressed lists of 6, pages of 16 tokens (caches of 2 and 1 pages)."""

    T, H, KW, KC, PAGE = 5, 2, 9, 6, 16

    def __init__(self, spelling: Spelling, seed: int = 0):
        super().__init__()
        self.s = spelling
        g = torch.Generator().manual_seed(seed)
        page_bytes = -(-self.PAGE * (ROW_BYTES + SCALE_BYTES) // ROW_BYTES) * ROW_BYTES
        self.register_buffer("swa_cache", fp8_cache((2, page_bytes), torch.uint8, g, {}))
        self.register_buffer("cmp_cache", fp8_cache((1, page_bytes), torch.uint8, g, {}))
        self.sink = nn.Parameter(torch.randn(self.H, generator=g) + 2.5)

    def example_inputs(self, seed: int = 1) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        T, H = self.T, self.H
        q = (torch.randn(T, H, HEAD, generator=g) * 1.5).to(torch.bfloat16)
        angles = torch.rand(T, ROPE // 2, generator=g) * 6.3
        swa = torch.randint(0, 2 * self.PAGE, (T, self.KW), generator=g)
        swa[torch.rand(T, self.KW, generator=g) < 0.3] = -1
        swa[:, -1] = torch.arange(T)  # the token itself
        cmp = torch.randint(0, self.PAGE, (T, self.KC), generator=g)
        cmp[torch.rand(T, self.KC, generator=g) < 0.3] = -1
        return q, angles.cos(), angles.sin(), swa, cmp

    # spelled pieces ---------------------------------------------------------------------------
    def _rows(self, cache: Tensor, idx: Tensor) -> Tensor:
        if self.s.gather == "model":
            return gather_fp8_paged(cache, idx.clamp_min(0), self.PAGE)
        # per slot: its page picked with index_select, then its 576 row bytes and 7 scale bytes with
        # torch.gather at the slot's byte offsets in the page
        flat = torch.where(idx >= 0, idx, 0).reshape(-1)
        page, row = torch.div(flat, self.PAGE, rounding_mode="floor"), flat % self.PAGE
        pages = cache.index_select(0, page)                                       # [n, bytes per page]
        cols = (row * ROW_BYTES).unsqueeze(1) + torch.arange(ROW_BYTES, device=idx.device)
        rows = torch.gather(pages, 1, cols)
        scale_cols = (self.PAGE * ROW_BYTES + row * SCALE_BYTES).unsqueeze(1) + torch.arange(7, device=idx.device)
        scales = torch.gather(pages, 1, scale_cols).to(torch.float32)
        nope = rows[:, :NOPE_DIM].view(torch.float8_e4m3fn).to(torch.float32).reshape(-1, 7, 64)
        nope = (nope * torch.pow(2.0, scales - 127).unsqueeze(-1)).reshape(-1, NOPE_DIM).to(torch.bfloat16)
        rope = rows[:, NOPE_DIM:].contiguous().view(torch.bfloat16)
        return torch.cat([nope, rope], -1).reshape(idx.size(0), idx.size(1), HEAD)

    def _pool_rows(self, swa_idx: Tensor, cmp_idx: Tensor) -> tuple[Tensor, Tensor]:
        """One pool of both dequantized caches, indexed by the joint list with torch.gather."""
        whole_w = gather_fp8_paged(self.swa_cache, torch.arange(2 * self.PAGE, device=swa_idx.device), self.PAGE)
        whole_c = gather_fp8_paged(self.cmp_cache, torch.arange(self.PAGE, device=swa_idx.device), self.PAGE)
        pool = torch.cat([whole_w, whole_c], 0)                                   # [32 + 16, 512]
        joint = torch.cat([swa_idx, torch.where(cmp_idx >= 0, cmp_idx + whole_w.shape[0], -1)], 1)
        index = joint.clamp(min=0).unsqueeze(-1).expand(-1, -1, HEAD)
        rows = torch.gather(pool.unsqueeze(0).expand(joint.shape[0], -1, -1), 1, index)
        return rows, joint

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.s.rope == "model":
            return apply_rope(x, cos.unsqueeze(-2), sin.unsqueeze(-2))
        x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], -1).flatten(-2)

    def _attend(self, q: Tensor, rows: Tensor, idx: Tensor) -> Tensor:
        s = self.s
        if s.softmax == "model" and s.sink_in_den:
            return model_attention.sparse_attn_sink(q, rows, idx, self.sink, s.scale)
        kv = rows.float()
        scores = torch.matmul(q.float(), kv.transpose(-1, -2)) * s.scale        # [T, H, K]
        valid = (idx >= 0).unsqueeze(1)
        sink = self.sink.view(1, -1, 1)
        if s.softmax == "cat_softmax":
            scores = torch.where(valid, scores, float("-inf"))
            logits = torch.cat([scores, sink.expand(scores.shape[0], -1, 1)], -1)
            p = F.softmax(logits, dim=-1)[..., :-1]
        else:  # max including the sink, exp and sum by hand, invalid entries zeroed after exp
            m = torch.maximum(scores.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True), sink)
            e = torch.where(valid, torch.exp(scores - m), 0.0)
            den = e.sum(-1, keepdim=True)
            if s.sink_in_den:
                den = den + torch.exp(sink - m)
            p = e / den
        return torch.matmul(p, kv).to(torch.bfloat16)

    def forward(self, q: Tensor, cos: Tensor, sin: Tensor, swa_idx: Tensor, cmp_idx: Tensor) -> Tensor:
        q = torch.cat([q[..., :-ROPE], self._rope(q[..., -ROPE:], cos, sin).to(q.dtype)], -1)
        if self.s.gather == "pool_gather":
            rows, idx = self._pool_rows(swa_idx, cmp_idx)
        else:
            rows = torch.cat([self._rows(self.swa_cache, swa_idx), self._rows(self.cmp_cache, cmp_idx)], 1)
            idx = torch.cat([swa_idx, cmp_idx], 1)
        o = self._attend(q, rows, idx)
        if not self.s.inverse_rope:
            return o
        if self.s.rope == "model":
            o_rope = apply_inverse_rope(o[..., -ROPE:], cos.unsqueeze(-2), sin.unsqueeze(-2)).to(o.dtype)
        else:
            o_rope = self._rope(o[..., -ROPE:], cos, -sin).to(o.dtype)
        return torch.cat([o[..., :-ROPE], o_rope], -1)

    def reference(self, q: Tensor, cos: Tensor, sin: Tensor, swa_idx: Tensor, cmp_idx: Tensor) -> Tensor:
        """The fused op's reference on the block's caches (the math every spelling must compute)."""
        q_rope = apply_rope(q[..., -ROPE:], cos.unsqueeze(-2), sin.unsqueeze(-2)).to(q.dtype)
        q = torch.cat([q[..., :-ROPE], q_rope], -1)
        return sparse_attn_sink.reference(q, self.swa_cache, swa_idx, self.cmp_cache, cmp_idx, self.sink.detach(),
                                          cos, sin, HEAD ** -0.5, self.PAGE, self.PAGE)


SPELLINGS = [
    Spelling("model"),
    Spelling("index_select-cat_softmax-unbind_rope", gather="index_select", softmax="cat_softmax", rope="unbind"),
    Spelling("pool_torch.gather-maximum_exp_sum", gather="pool_gather", softmax="maximum"),
]
REJECTIONS = [
    Spelling("scale_448^-0.5", softmax="maximum", scale=448 ** -0.5),
    Spelling("sink_not_in_denominator", softmax="maximum", sink_in_den=False),
    Spelling("no_inverse_rope", inverse_rope=False),
]


def _compile(block: AttnCore):
    return fusegraph.compile(block, example_inputs=block.example_inputs(), target="cpu", patterns=list(ATTN_PATTERNS))


@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: s.name)
def test_spelling_fuses_into_one_call(spelling: Spelling):
    block = AttnCore(spelling)
    with torch.no_grad():  # the spelling computes the op's math (else a miss would not be the matcher's)
        for seed in (1, 2):
            inputs = block.example_inputs(seed)
            assert_close(block(*inputs), block.reference(*inputs), f"{spelling.name} eager vs op reference")
    compiled = _compile(block)
    misses = [(m.pattern, m.kind, m.reason) for m in compiled.report.near_misses]
    assert compiled.report.counts() == {"sparse_attn_sink": 1}, misses
    (site,) = compiled.report.sites
    assert site.inputs["swa_cache"] == "swa_cache" and site.inputs["cmp_cache"] == "cmp_cache"
    assert not any(n.target is torch.gather or n.target == "index_select" for n in compiled.fused.graph.nodes)
    with torch.no_grad():
        for seed in (3, 4):
            inputs = block.example_inputs(seed)
            assert_close(compiled(*inputs), block(*inputs), f"{spelling.name} fused vs eager")


@pytest.mark.parametrize("spelling", REJECTIONS, ids=lambda s: s.name)
def test_other_semantics_not_rewritten(spelling: Spelling):
    block = AttnCore(spelling)
    with torch.no_grad():  # the case tests something: its math differs from the op's
        inputs = block.example_inputs(1)
        assert rel_l2(block(*inputs), block.reference(*inputs)) > 0.02
    compiled = _compile(block)
    listing = [(m.pattern, m.kind, m.reason) for m in compiled.report.near_misses]
    assert compiled.report.counts() == {}, listing
    explained = [m for m in compiled.report.near_misses if m.pattern in ATTN_PATTERNS]
    assert explained, listing
    assert all(m.kind in CLASSIFIED and m.reason.strip() for m in explained), listing
    with torch.no_grad():
        assert_close(compiled(*inputs), block(*inputs), f"{spelling.name} compiled vs eager", rel=0.0)


# -- the op's own pieces -----------------------------------------------------------------------------
def test_reference_gather_is_gather_dequant_bit_for_bit():
    """The reference reads rows per slot or through a dequantized table (whichever is cheaper);
    both are gather_dequant's values exactly, with zero rows for invalid slots."""
    g = torch.Generator().manual_seed(5)
    cache = fp8_cache((2, 37440), torch.uint8, g, {})
    cache[0, 448:576] = 0xFF  # slot 0 rope NaN: only invalid slots point there
    for shape in [(3, 7), (40, 9), (0, 4)]:  # fewer / more pairs than the cache's 128 rows, none
        slots = torch.randint(1, 128, shape, generator=g)
        slots[torch.rand(shape, generator=g) < 0.3] = -1
        want = dequantize_slots(cache, slots, 64)
        assert torch.equal(gather_rows(cache, slots, 64).view(torch.int16), want.view(torch.int16))


def test_window_only_call_equals_an_empty_compressed_list():
    """cmp_cache/cmp_idx None (ratio-0 layers) is the op with an empty compressed list."""
    block = AttnCore(Spelling("model"))
    q, cos, sin, swa, _ = block.example_inputs(7)
    args = (block.sink.detach(), cos, sin, HEAD ** -0.5, block.PAGE)
    none = sparse_attn_sink(q, block.swa_cache, swa, None, None, *args, 0)
    empty = sparse_attn_sink(q, block.swa_cache, swa, block.cmp_cache, swa[:, :0], *args, block.PAGE)
    assert torch.equal(none, empty)
    ref_none = sparse_attn_sink.reference(q, block.swa_cache, swa, None, None, *args, 0)
    ref_empty = sparse_attn_sink.reference(q, block.swa_cache, swa, block.cmp_cache, swa[:, :0], *args, block.PAGE)
    assert torch.equal(ref_none, ref_empty)
    assert_close(none, ref_none, "window-only call vs reference")
