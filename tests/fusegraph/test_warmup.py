"""Warm-up of a compiled model: every fused site's op runs at every token bucket, on fresh inputs.

The tiny DSV4 model is compiled once (CPU, 8 tokens); under TRITON_INTERPRET=1 the Triton
providers take the small calls, otherwise the torch references do. Checked: the bucket list, the
rebuilt argument shapes (token rows resized, weights and caches not), one call per distinct site
layout and bucket covering every site, the chosen providers, the model's state untouched, failures
recorded without stopping the warm-up, the progress callback and bar, and the text/JSON report.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import fusegraph
from fusegraph import ops
from fusegraph.kernels import _triton_common as tc
from fusegraph.models import build_model, example_inputs
from fusegraph.warmup import TOKEN_ROWS, site_templates, token_buckets, warmup

EXAMPLE_T = 8


@pytest.fixture(scope="module")
def compiled():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on the 2-core CI machine
    model = build_model("tiny")
    yield fusegraph.compile(model, target="cpu", example_inputs=example_inputs(model, EXAMPLE_T))
    torch.set_num_threads(previous)


def test_token_buckets():
    assert token_buckets(1) == (1,)
    assert token_buckets(4) == (1, 2, 3, 4)
    assert token_buckets(10) == (1, 2, 3, 4, 6, 8, 10)
    assert token_buckets(100) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100)
    with pytest.raises(ValueError):
        token_buckets(0)


def test_templates_resize_token_rows_only(compiled):
    templates = site_templates(compiled)
    assert len(templates) == len(compiled.sites) and templates
    D = compiled.config.dim
    pre = next(t for t in templates if t.op == "mhc_pre")
    assert pre.tokens == EXAMPLE_T
    shapes = dict(zip((a.name for a in pre.args), pre.shapes_at(3)))
    assert shapes["residual"] == (3, 4, D) and shapes["fn"] == (24, 4 * D) and shapes["base"] == (24,)
    comp = next(t for t in templates if t.op == "compressor_pool")
    ratio = next(a.literal for a in comp.args if a.name == "ratio")
    shapes = dict(zip((a.name for a in comp.args), comp.shapes_at(12)))
    assert shapes["kv"][0] == 12 and shapes["cos"][0] == 12 // ratio and shapes["ape"][0] == ratio
    args = comp.args_at(12, torch.device("cpu"), torch.Generator().manual_seed(0))
    for a, shape in zip(args, comp.shapes_at(12)):
        if isinstance(a, torch.Tensor):
            assert tuple(a.shape) == shape and a.isfinite().all() and a.abs().sum() > 0


def test_generic_rule_for_ops_without_a_token_table(compiled, monkeypatch):
    monkeypatch.delitem(TOKEN_ROWS, "q_norm_rope")
    q = next(t for t in site_templates(compiled) if t.op == "q_norm_rope")
    rows = {a.name: a.rows for a in q.args if a.is_tensor}
    assert rows == {"q": "tokens", "cos": "tokens", "sin": "tokens"}


def test_warmup_covers_every_site_and_bucket(compiled):
    before = {k: v.clone() for k, v in compiled.state_dict().items()}
    seen = []
    report = warmup(compiled, 4, progress=lambda done, total, label: seen.append((done, total)))
    assert report.ok, report.table()
    assert report.buckets == (1, 2, 3, 4) and report.device == "cpu" and report.target == "cpu"
    site_ops = {s.op for s in compiled.sites}
    all_sites = {f"{s.module}:{s.fused_node}" if s.module else s.fused_node for s in compiled.sites}
    for T in report.buckets:
        at_T = [e for e in report.entries if e.tokens == T]
        assert {e.op for e in at_T} == site_ops
        assert set().union(*(e.sites for e in at_T)) == all_sites          # every site warmed ...
        assert sum(len(e.sites) for e in at_T) == len(all_sites)           # ... by exactly one call
        assert len(at_T) < len(all_sites)                                  # identical layouts shared
    for e in report.entries:
        assert e.provider in ops.get(e.op).providers and e.seconds >= 0 and e.error is None
    if tc.interpreting():  # the interpreter providers take these tiny calls
        assert report.warm()[("mhc_pre", "triton")] == (1, 2, 3, 4)
    assert all(torch.equal(before[k], v) for k, v in compiled.state_dict().items()), "model state changed"
    assert seen[0] == (0, len(report.entries)) and seen[-1] == (len(report.entries), len(report.entries))
    text = report.table()
    assert "mhc_pre" in text and "1,2,3,4" in text and "FAILED" not in text
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_failures_are_recorded_and_the_rest_goes_on(compiled, monkeypatch):
    op = ops.get("mhc_post")

    def boom(*args):
        raise RuntimeError("boom: kernel did not compile")

    for name, provider in list(op.providers.items()):
        monkeypatch.setitem(op.providers, name, dataclasses.replace(provider, impl=boom))
    with ops.prefer({"*": ["torch"]}):
        report = warmup(compiled, 2, progress=False)
    failed = report.failed()
    assert not report.ok and failed and {e.op for e in failed} == {"mhc_post"}
    assert {e.tokens for e in failed} == {1, 2} and "boom" in failed[0].error
    assert all(e.compiled for e in report.entries if e.op != "mhc_post")
    assert "FAILED mhc_post (torch) T=1: RuntimeError: boom" in report.table()


def test_progress_bar_and_explicit_tokens(compiled, capsys):
    with ops.prefer({"*": ["torch"]}):
        report = warmup(compiled, 64, tokens=(5,))
    assert report.buckets == (5,) and report.ok
    err = capsys.readouterr().err
    assert "warm-up [" in err and f"{len(report.entries)}/{len(report.entries)} done" in err


def test_needs_a_fusegraph_compiled_module():
    with pytest.raises(TypeError, match="fusegraph.compile"):
        warmup(torch.nn.Linear(2, 2), 4)
