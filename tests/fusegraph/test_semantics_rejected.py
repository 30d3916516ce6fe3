"""Acceptance: a subgraph that computes something else than a fused op is never rewritten into it.

Each case changes one piece of DSV4 semantics in a small block (``_variants``): comb not transposed
in hc_post, sigmoid instead of softmax in the Sinkhorn, another rms eps, no ``+ hc_eps`` after the
pre sigmoid, post multiplier 1.0, 10 Sinkhorn iterations, hc_mult 3, another q/kv norm eps. A case
passes when

* the changed computation really differs from the models' math on some input (else the case would
  test nothing): checked on the eager block, on ordinary inputs or on a stress input;
* the site it changes gets no rewrite, and the sites it leaves alone still do (exact counts);
* ``report.near_misses`` says why: an entry for the site's pattern with a classified kind and a
  non-empty reason;
* the fused model still equals the eager one, on ordinary and on tiny inputs (nothing wrong was
  rewritten elsewhere).

Where the compiler gets a case wrong today, the case is ``xfail(strict=True)`` with what it did.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

import fusegraph

from _variants import (ATTN_SITES, MHC_SITES, AttnBlock, MHCBlock, Variant, assert_close_bf16, attn, mhc,
                       reference_forward, rel_l2)


CLASSIFIED = {"literal", "semantics", "dtype form", "view form"}  # kinds that say the math differs


@dataclass(frozen=True)
class Rejection:
    variant: Variant
    missed: tuple[str, ...]  # patterns of the changed site: none may match, one must explain why


def _without(sites: dict[str, int], *names: str) -> dict[str, int]:
    return {k: v for k, v in sites.items() if k not in names}


PRE = ("mhc_pre_norm", "mhc_pre")
HEAD = ("hc_head_norm", "hc_head")


def case(name: str, block, missed: tuple[str, ...], expected: dict[str, int], reason: str | None = None, **kw):
    """A rejection case; ``reason`` marks it xfail(strict) with what the compiler does today."""
    variant = block(name, expected, **kw)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(Rejection(variant, missed), id=name, marks=marks)


REJECTIONS = [
    case("hc_post-comb_not_transposed", mhc, ("mhc_post",), _without(MHC_SITES, "mhc_post"), transpose_comb=False),
    case("sinkhorn-sigmoid_instead_of_softmax", mhc, PRE, _without(MHC_SITES, *PRE), sinkhorn_first="sigmoid"),
    case("hc_pre-rms_eps_1e-5", mhc, PRE, _without(MHC_SITES, *PRE), rms_eps=1e-5),
    case("hc_head-rms_eps_1e-5", mhc, HEAD, _without(MHC_SITES, *HEAD), head_rms_eps=1e-5),
    case("hc_pre-no_hc_eps_after_sigmoid", mhc, PRE, _without(MHC_SITES, *PRE), hc_eps_after_pre=False),
    case("hc_head-no_hc_eps_after_sigmoid", mhc, HEAD, _without(MHC_SITES, *HEAD), hc_eps_in_head=False),
    case("hc_pre-post_mult_1.0", mhc, PRE, _without(MHC_SITES, *PRE), post_mult=1.0),
    case("sinkhorn-10_iterations", mhc, PRE, _without(MHC_SITES, *PRE), sinkhorn_iters=10),
    case("q_norm-eps_1e-5", attn, ("q_norm_rope",), _without(ATTN_SITES, "q_norm_rope"), q_eps=1e-5),
    case("kv_norm-eps_1e-5", attn, ("kv_norm_rope_quant",), _without(ATTN_SITES, "kv_norm_rope_quant"),
         kv_eps=1e-5),
]


def _stress_inputs(block, seed: int) -> tuple:
    """Inputs that make eps terms visible: a tiny residual / tiny activations."""
    inputs = block.example_inputs(seed)
    if isinstance(block, MHCBlock):
        return ((inputs[0].float() * 1e-3).to(torch.bfloat16),)
    if isinstance(block, AttnBlock):
        return ((inputs[0].float() * 1e-4).to(torch.bfloat16), inputs[1])
    return inputs


@pytest.mark.parametrize("rejection", REJECTIONS)
def test_rejected(rejection: Rejection):
    variant = rejection.variant
    block = variant.build()
    example = block.example_inputs()
    compiled = fusegraph.compile(block, example_inputs=example, target="cpu")
    with torch.no_grad():
        compiled(*example)
        counts = compiled.report.counts()
        misses = compiled.report.near_misses
        listing = [(m.pattern, m.kind, m.reason) for m in misses]
        wrong = {p: n for p, n in counts.items() if p in rejection.missed}
        assert not wrong, f"{variant.name}: rewritten although the semantics differ: {wrong}"
        assert counts == variant.expected, f"sites {counts}, expected {variant.expected}; near misses: {listing}"
        explained = [m for m in misses if m.pattern in rejection.missed]
        assert explained, f"{variant.name}: no near miss for {rejection.missed}; near misses: {listing}"
        for m in explained:
            assert m.kind in CLASSIFIED, f"{m.pattern}: kind {m.kind!r} not in {sorted(CLASSIFIED)}"
            assert m.reason.strip(), f"{m.pattern}: empty reason"
        for inputs in (block.example_inputs(7), _stress_inputs(block, 7)):
            assert_close_bf16(compiled(*inputs), block(*inputs), what=f"{variant.name} (fused vs eager)")


@pytest.mark.parametrize("rejection", [pytest.param(r.values[0], id=r.id) for r in REJECTIONS])
def test_changed_math_differs(rejection: Rejection):
    """The case tests something: its changed site computes other values than the models' function under
    at least one input distribution (the changes to eps terms only show under stress)."""
    block = rejection.variant.build()
    with torch.no_grad():
        errors = _mhc_site_errors(block) if isinstance(block, MHCBlock) else _attn_errors(block)
    assert max(errors.values()) > 1e-3, errors


def _mhc_site_errors(block: MHCBlock) -> dict[str, float]:
    """rel L2 of each mHC site function of ``block`` against fusegraph.models', per stress."""
    from fusegraph.models import layers, mhc as m

    x0 = block.example_inputs(3)[0]
    g = torch.Generator().manual_seed(11)
    t, c, d = x0.shape
    f = torch.randn(t, d, generator=g).to(torch.bfloat16)
    post, comb = torch.rand(t, c, generator=g) * 2, torch.rand(t, c, c, generator=g)
    stresses = {  # (residual scale, base shift, base scale, zero the mix scale)
        "normal": (1.0, 0.0, 1.0, False), "tiny": (1e-3, 0.0, 1.0, False),
        "floor": (1.0, -40.0, 1.0, False), "spread": (1.0, 0.0, 40.0, True),
    }
    errors = {}
    for name, (xs, shift, bscale, zero_scale) in stresses.items():
        blk = copy.deepcopy(block)
        for p in (blk.base0, blk.head_base):
            p.mul_(bscale).add_(shift)
        if zero_scale:
            blk.scale0.zero_()
        x = (x0.float() * xs).to(torch.bfloat16)
        got_pre = blk.hc_pre(x, 0)
        h, want_post, want_comb = m.hc_pre(x, blk.fn0, blk.scale0, blk.base0, c, 1e-6, 1e-6, 20, 2.0)
        want_pre = (layers.rms_norm(h, blk.norm0, 1e-6), want_post, want_comb)
        got_head = blk.hc_head(x)
        want_head = layers.rms_norm(m.hc_head(x, blk.head_fn, blk.head_scale, blk.head_base, 1e-6, 1e-6),
                                    blk.final_norm, 1e-6)
        errors[f"{name}:pre"] = max(rel_l2(a, b) for a, b in zip(got_pre, want_pre))
        errors[f"{name}:head"] = rel_l2(got_head, want_head)
        errors[f"{name}:post"] = rel_l2(blk.hc_post(f, x, post, comb), m.hc_post(f, x, post, comb))
    return errors


def _attn_errors(block: AttnBlock) -> dict[str, float]:
    errors = {}
    for name, inputs in (("normal", block.example_inputs(3)), ("tiny", _stress_inputs(block, 3))):
        for i, (a, b) in enumerate(zip(block(*inputs), reference_forward(block, *inputs))):
            errors[f"{name}:{i}"] = rel_l2(a, b)
    return errors


def test_hc_mult_3_is_a_shape_constraint_near_miss():
    """hc_mult 3: the same math on 3 streams; every mHC op takes 4, so nothing matches and the report says
    it is the shape, not the math."""
    variant = mhc("hc_mult_3", {}, hc_mult=3)
    block = variant.build()
    example = block.example_inputs()
    compiled = fusegraph.compile(block, example_inputs=example, target="cpu")
    with torch.no_grad():
        assert compiled.report.counts() == {}
        by_pattern = {}
        for m in compiled.report.near_misses:
            by_pattern.setdefault(m.pattern, []).append(m)
        for site in (PRE, ("mhc_post",), HEAD):
            found = [m for p in site for m in by_pattern.get(p, [])]
            assert found, f"no near miss for {site}: {[(m.pattern, m.kind) for m in compiled.report.near_misses]}"
            assert all(m.kind == "shape constraint" for m in found), [(m.pattern, m.kind, m.reason) for m in found]
            assert all("hc_mult is 3" in m.reason for m in found), [m.reason for m in found]
        for inputs in (block.example_inputs(7),):
            assert_close_bf16(compiled(*inputs), block(*inputs), what="hc_mult 3 (fused vs eager)")


def test_other_norm_eps_keeps_the_norms_unfused():
    """attn-norm / final-norm eps 1e-5: the mHC ops still fuse, without folding the norm (``mhc_pre``,
    ``hc_head``), and the eager norms stay in the graph."""
    variant = mhc("norm_eps_1e-5", {"mhc_pre": 1, "mhc_post": 1, "hc_head": 1}, norm_eps=1e-5)
    block = variant.build()
    example = block.example_inputs()
    compiled = fusegraph.compile(block, example_inputs=example, target="cpu")
    with torch.no_grad():
        misses = [(m.pattern, m.kind, m.reason) for m in compiled.report.near_misses]
        assert compiled.report.counts() == variant.expected, misses
        for inputs in (block.example_inputs(7), _stress_inputs(block, 7)):
            assert_close_bf16(compiled(*inputs), block(*inputs), what="norm eps 1e-5 (fused vs eager)")
