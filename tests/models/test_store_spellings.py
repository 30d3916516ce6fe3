"""The paged FP8 store spelled the ways models skip padding rows, through ``fusegraph.compile``.

``_variants.StoreBlock`` (tests/fusegraph) is the kv path followed by the paged store, padding rows
skipped by ``slot0_fill`` (the reference model's spelling: plain scatters, which Inductor compiles),
``uint8_accumulate`` (the model's earlier spelling: an accumulating scatter of byte deltas, which
Inductor's Triton backend cannot compile but models in the wild may use) or ``int32_words`` (the
same deltas on an int32 view of the cache). Each must be found as ``kv_norm_rope_quant_store``, and
the fused block must leave the cache byte for byte as the eager block does, padding rows included.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fusegraph"))
import fusegraph  # noqa: E402
from _variants import STORE_SITES, assert_close_bf16, reference_forward, store  # noqa: E402  (tests/fusegraph)

SPELLINGS = [
    pytest.param(store("attn-store-slot0_fill"), id="slot0_fill"),
    pytest.param(store("attn-store-uint8_accumulate", skip="uint8_accumulate"), id="uint8_accumulate"),
    pytest.param(store("attn-store-uint8_accumulate-bare_arange", skip="uint8_accumulate_bare"),
                 id="uint8_accumulate_bare_arange"),   # column offsets are tensor constants of the graph
    # the cache viewed as int32 words: capture traces buffers, so the view and the write into it are seen
    pytest.param(store("attn-store-int32_words", skip="int32_words"), id="int32_words"),
]


@pytest.mark.parametrize("variant", SPELLINGS)
def test_store_spelling_is_fused_and_writes_the_eager_bytes(variant):
    block = variant.build()
    x, positions, loc = block.example_inputs()
    assert (loc < 0).any() and (loc == 0).sum() == 1  # padding rows and a valid row at slot 0
    with torch.no_grad():
        assert_close_bf16(block(x, positions, loc), reference_forward(block, x, positions, loc), what=variant.name)
    compiled = fusegraph.compile(block, example_inputs=(x, positions, loc), target="cpu")
    initial = block.pages.clone()
    for seed in (3, 4):
        inputs = block.example_inputs(seed)
        block.pages.copy_(initial)
        with torch.no_grad():
            want = block(*inputs)
        want_pages = block.pages.clone()
        block.pages.copy_(initial)  # the compiled module shares the block's buffers
        with torch.no_grad():
            got = compiled(*inputs)
        assert torch.equal(block.pages, want_pages), f"{(block.pages != want_pages).sum().item()} bytes differ"
        assert torch.equal(got, want)
    counts = compiled.report.counts()
    assert counts == STORE_SITES, f"{counts}; near misses {[(m.pattern, m.reason) for m in compiled.report.near_misses]}"
