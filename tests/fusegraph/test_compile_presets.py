"""fusegraph.compile on the built-in DSV4 presets: the expected match set, numerics, state dict.

tiny runs on the CPU (reference providers, or Triton under TRITON_INTERPRET); flash is planned on
the meta device for sm90, which exercises capture, matching and dispatch at the released sizes.
"""
from __future__ import annotations

import pytest
import torch

import fusegraph
from fusegraph.expected import expected_sites
from fusegraph.models.presets import build_model, example_inputs


@pytest.fixture(scope="module")
def tiny_compiled():
    torch.manual_seed(0)
    model = build_model("tiny")
    inputs = example_inputs(model, 256)
    return model, inputs, fusegraph.compile(model, example_inputs=inputs, target="cpu")


def test_tiny_matches_the_expected_dsv4_set(tiny_compiled):
    model, _, compiled = tiny_compiled
    report = compiled.report
    want = expected_sites(model)
    assert want == {"mhc_pre_norm": 1, "mhc_post_pre": 5, "mhc_post": 1, "hc_head_norm": 1, "q_norm_rope": 3,
                    "kv_norm_rope_quant_store": 3, "compressor_pool": 2, "sparse_attn_sink": 2,
                    "sparse_attn_sink_swa": 1}
    got = report.counts()
    for pattern, n in want.items():
        assert got.get(pattern, 0) >= n, (pattern, got)
    assert report.shortfall() == {}
    # every fused call in the graph is a reported site, and no mHC/rope/norm chain is left unfused
    calls = [n for n in compiled.fused.graph.nodes if str(n.target).startswith("fusegraph.")]
    assert len(calls) == len(report.sites)
    labels = report.after.op_census
    # no sigmoid (mHC, hc_head) is left; the only rsqrt left per layer is the weighted RMSNorm of the
    # q latent (q_norm), a plain RMSNorm that no DSV4 pattern covers
    assert labels.get("sigmoid", 0) == 0, labels
    assert labels.get("rsqrt", 0) == model.config.n_layers, labels


def test_tiny_fused_equals_unfused(tiny_compiled):
    model, inputs, compiled = tiny_compiled
    with torch.no_grad():
        want = model(*inputs).float()
        got = compiled(*inputs).float()
    assert torch.isfinite(got).all()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 1e-2, rel


def test_tiny_state_dict_is_the_models(tiny_compiled):
    model, _, compiled = tiny_compiled
    assert list(compiled.state_dict()) == list(model.state_dict())
    key = "layers.0.hc_attn_fn"
    assert compiled.state_dict()[key].data_ptr() == model.state_dict()[key].data_ptr()


def test_every_site_names_provider_and_rejections(tiny_compiled):
    _, _, compiled = tiny_compiled
    for site in compiled.sites:
        assert site.selection.provider in fusegraph.ops.get(site.op).providers
        assert site.replaced and site.inputs
    planned = fusegraph.ops.get("mhc_pre").select("sm90", (torch.empty(8, 4, 64, dtype=torch.bfloat16, device="meta"),
                                                          torch.empty(24, 256, device="meta"),
                                                          torch.empty(3, device="meta"), torch.empty(24, device="meta"),
                                                          None, 1e-6, 1e-6, 1e-6, 20, 2.0))
    assert planned.provider == "triton"
    assert {r.provider for r in planned.rejected} >= {"deepgemm"}


def test_unknown_pattern_and_target_are_clear_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="unknown pattern"):
        fusegraph.compile(model, example_inputs=example_inputs(model, 8), patterns=["nope"])
    with pytest.raises(ValueError, match="unknown target"):
        fusegraph.compile(model, example_inputs=example_inputs(model, 8), target="sm42")


@pytest.mark.slow
def test_flash_on_meta_plans_for_sm90():
    model = build_model("flash", device="meta")
    compiled = fusegraph.compile(model, example_inputs=example_inputs(model, 128), target="sm90")
    report = compiled.report
    assert report.shortfall() == {}, report.counts()
    assert all(s.selection.target == "sm90" for s in report.sites)
    assert {s.selection.provider for s in report.sites if s.op.startswith("mhc")} == {"triton"}
