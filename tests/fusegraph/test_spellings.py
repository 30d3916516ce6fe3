"""Acceptance: ``fusegraph.compile`` fuses DSV4 blocks however their math is spelled.

Each case is a small DSV4-like block (``_variants``: mHC pre+norm / post / hc_head+norm, the q and
kv paths of attention, the compressor pooling at ratio 4 and 128) written in a spelling other than
``fusegraph.models``' (the ``model`` cases are the control). A case passes when

* the eager block computes the models' math (``reference_forward``): the case is a spelling, not a
  different computation (cheap, no compile);
* the compiled block has exactly the expected sites (``report.counts()``);
* the compiled block equals the eager one within bf16 tolerance on fresh inputs.

Spellings that should match and do not are kept as ``xfail(strict=True)`` with the near-miss (or
the failure) the compiler gave: fixing the matcher turns them into XPASS, which fails the run until
the mark is removed.
"""
from __future__ import annotations

import pytest
import torch

import fusegraph

from _variants import Variant, assert_close_bf16, attn, mhc, pool, reference_forward


def ok(variant: Variant):
    return pytest.param(variant, id=variant.name)


def xfail(variant: Variant, reason: str):
    return pytest.param(variant, id=variant.name, marks=pytest.mark.xfail(strict=True, reason=reason))


SPELLINGS = [
    # -- mHC: pre + attn-norm, post, hc_head + final norm ------------------------------------------
    ok(mhc("mhc-model")),
    ok(mhc("mhc-to_f32-x*x-sum_div-1/sqrt", arith=dict(cast="to", square="mul", mean="sum_div",
                                                       rsqrt="recip_sqrt"))),
    ok(mhc("mhc-type_as-pow2-pow_-0.5-x@fn.t()", arith=dict(cast="type_as", square="pow", rsqrt="pow",
                                                            linear="matmul_t"))),
    ok(mhc("mhc-einsum_linear-reshape-torch.split", arith=dict(linear="einsum"), flatten="reshape", split="split")),
    ok(mhc("mhc-torch.matmul-view-chunk-cast_before_flatten", arith=dict(linear="torch.matmul"), flatten="view",
           split="chunk", cast_first=True)),
    ok(mhc("mhc-sinkhorn_loop_if_i0-F.sigmoid-torch.mm", sinkhorn="loop_if", arith=dict(sigmoid="F", linear="mm"))),
    ok(mhc("mhc-sinkhorn_manual_softmax-sigmoid_by_exp-x**2-div_sqrt", sinkhorn="manual_softmax",
           arith=dict(sigmoid="exp", square="pow_op", rsqrt="div_sqrt"))),
    ok(mhc("mhc-sinkhorn_no_keepdim-index_None", sinkhorn="no_keepdim", arith=dict(unsqueeze="none"))),
    ok(mhc("mhc-sinkhorn_reciprocal-sigmoid_method-torch.mean-view_unsqueeze", sinkhorn="reciprocal",
           arith=dict(sigmoid="method", mean="torch_mean", unsqueeze="view"))),
    ok(mhc("mhc-post_einsum-collapse_einsum-head_scale[0]", post="einsum", collapse="einsum", head_scale="index")),
    ok(mhc("mhc-post_matmul_transpose-collapse_bmm-swapped-scalars_left", post="matmul_t", collapse="bmm",
           arith=dict(swap=True, scalar_left=True))),
    ok(mhc("mhc-post_python_loop-collapse_python_loop", post="loop", collapse="loop")),
    ok(mhc("mhc-post_bmm_comb.mT", post="bmm")),
    ok(mhc("mhc-linear_x@fn.T", arith=dict(linear="matmul_T"))),
    ok(mhc("mhc-two_sublayers-post_then_pre", sublayers=2)),
    # -- attention: q per-head norm + RoPE, kv norm + RoPE + FP8 ------------------------------------
    ok(attn("attn-model")),
    ok(attn("attn-to_f32-pow2-index_None-pos_slice-view_heads", arith=dict(cast="to", square="pow", unsqueeze="none"),
            cos_axis="none", split="pos_slice", heads="view")),
    ok(attn("attn-rope_view32x2_unbind-fp8_view_max_2**-reshape_heads", rope="unbind", fp8="view_pow2",
            heads="reshape")),
    ok(attn("attn-rope_reshape_select-narrow-index_select-view_axis", rope="view_select", split="narrow",
            gather="index_select", cos_axis="view")),
    ok(attn("attn-type_as-1/sqrt-x*x-sum_div-einsum-swapped-scalars_left-torch.split",
            arith=dict(cast="type_as", rsqrt="recip_sqrt", square="mul", mean="sum_div", linear="einsum", swap=True,
                       scalar_left=True), split="split")),
    ok(attn("attn-rope_into_empty_like", rope="empty_like")),
    # -- compressor pooling ---------------------------------------------------------------------
    ok(pool("pool4-model", ratio=4)),
    ok(pool("pool128-model", ratio=128)),
    ok(pool("pool4-F.pad_overlap-manual_softmax-einsum_pool", ratio=4, overlap="pad", softmax="manual",
            pool="einsum")),
    ok(pool("pool4-view_blocks-F.softmax-swapped-rope_view32x2_unbind", ratio=4, blocks="view", softmax="F",
            rope="unbind", arith=dict(swap=True))),
    ok(pool("pool128-reshape_blocks-strided_table-x@w.t()-to_f32", ratio=128, blocks="reshape", table="stride",
            arith=dict(linear="matmul_t", cast="to"))),
    ok(pool("pool128-view_blocks-einsum_pool-rope_reshape_select-torch.split-x*x-pow_-0.5", ratio=128,
            blocks="view", pool="einsum", rope="view_select", split="split", arith=dict(square="mul", rsqrt="pow"))),
]


@pytest.mark.parametrize("variant", [pytest.param(p.values[0], id=p.id) for p in SPELLINGS])
def test_spelling_computes_the_models_math(variant: Variant):
    """The case is a spelling: its eager output is the models' math (so a miss is the matcher's)."""
    block = variant.build()
    with torch.no_grad():
        for seed in (1, 5):
            inputs = block.example_inputs(seed)
            assert_close_bf16(block(*inputs), reference_forward(block, *inputs), what=variant.name)


@pytest.mark.parametrize("variant", SPELLINGS)
def test_spelling_is_fused(variant: Variant):
    block = variant.build()
    example = block.example_inputs()
    compiled = fusegraph.compile(block, example_inputs=example, target="cpu")
    with torch.no_grad():
        compiled(*example)  # the Dynamo fallback fuses on the first call
        counts = compiled.report.counts()
        misses = [(m.pattern, m.kind, m.reason) for m in compiled.report.near_misses]
        assert counts == variant.expected, f"sites {counts}, expected {variant.expected}; near misses: {misses}"
        assert all(s.replaced for s in compiled.report.sites), "a site that replaced no node"
        for seed in (7, 8):
            fresh = block.example_inputs(seed)
            assert_close_bf16(compiled(*fresh), block(*fresh), what=f"{variant.name} (fused vs eager)")


def test_enough_spellings():
    """The brief: at least ten spellings other than the models' own, of every block kind."""
    names = [p.id for p in SPELLINGS if not p.id.endswith("-model")]
    assert len(names) >= 10
    assert {n.split("-")[0] for n in names} == {"mhc", "attn", "pool4", "pool128"}
