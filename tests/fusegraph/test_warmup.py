"""Warm-up of a compiled model: every fused site's op runs at every token bucket, on fresh inputs.

The tiny DSV4 model is compiled once (CPU, 8 tokens); under TRITON_INTERPRET=1 the Triton
providers take the small calls, otherwise the torch references do. Checked: the bucket list, the
rebuilt argument shapes (token rows resized, weights and caches not), one call per distinct site
layout and bucket covering every site, the chosen providers, the model's state untouched, failures
recorded without stopping the warm-up, the progress callback and bar, and the text/JSON report.

The warm-up in the compile report: ``compiled.report.warm`` after a warm-up (warm variants,
failures), and the plan made without running anything (``plan``: meta tensors, target sm90 on this
CPU-only machine) with the committed mHC crossover table applied per bucket, checked against the
table file itself on a meta-device mHC toy at DSV4-Pro's hidden size; rendered as text, JSON
(validated against the documented schema) and HTML.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from collections import Counter

import pytest
import torch
from torch import nn

import fusegraph
from fusegraph import ops
from fusegraph.cli.report import ReportResult, render
from fusegraph.kernels.mhc_pre import crossover
from fusegraph.models.mhc import hc_post, hc_pre
from fusegraph.records import PlanStep, WarmState, WarmupPlan, WarmVariant
from fusegraph.render.schema import REPORT, WARM, validate
from fusegraph.render.warmup_text import bucket_ranges, plan_mismatches, warmup_text
from fusegraph.kernels import _triton_common as tc
from fusegraph.models import build_model, example_inputs
from fusegraph.warmup import TOKEN_ROWS, plan, site_templates, token_buckets, warmup

EXAMPLE_T = 8


@pytest.fixture(scope="module")
def compiled():
    model = build_model("tiny")
    return fusegraph.compile(model, target="cpu", example_inputs=example_inputs(model, EXAMPLE_T))


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
    warm = compiled.report.warm  # the compile report knows what is not warm, and why
    assert not warm.ok and {(f.op, f.provider, f.tokens) for f in warm.failures} == {("mhc_post", "torch", 1),
                                                                                      ("mhc_post", "torch", 2)}
    assert "boom" in warm.failures[0].error and not warm.is_warm("mhc_post", "torch", 1)
    assert warm.is_warm("mhc_pre", "torch", 2)


def test_progress_bar_and_explicit_tokens(compiled, capsys):
    with ops.prefer({"*": ["torch"]}):
        report = warmup(compiled, 64, tokens=(5,))
    assert report.buckets == (5,) and report.ok
    err = capsys.readouterr().err
    assert "warm-up [" in err and f"{len(report.entries)}/{len(report.entries)} done" in err


def test_needs_a_fusegraph_compiled_module():
    with pytest.raises(TypeError, match="fusegraph.compile"):
        warmup(torch.nn.Linear(2, 2), 4)


# -- the warm-up in the compile report -------------------------------------------------------------------
MHC_OPS = ("mhc_pre", "mhc_post", "mhc_post_pre")


def test_warmup_is_recorded_in_the_compile_report(compiled):
    with ops.prefer({"*": ["torch"]}):
        report = warmup(compiled, 6, progress=False)
    warm = compiled.report.warm
    assert warm == report.record()
    assert (warm.device, warm.target, warm.max_tokens, warm.buckets) == ("cpu", "cpu", 6, (1, 2, 3, 4, 6))
    assert warm.ok and warm.calls == len(report.entries) and warm.seconds >= 0
    site_ops = Counter(s.op for s in compiled.sites)
    assert {(v.op, v.provider) for v in warm.variants} == {(op, "torch") for op in site_ops}
    for v in warm.variants:  # every site of every op warm at every bucket
        assert v.tokens == warm.buckets and v.sites == site_ops[v.op] and v.seconds >= 0
    assert warm.is_warm("mhc_pre", "torch", 3) and not warm.is_warm("mhc_pre", "torch", 5)
    assert not warm.is_warm("mhc_pre", "triton", 1)
    assert validate(json.loads(json.dumps(warm.as_dict())), WARM) == []


def test_plan_for_sm90_on_meta_tensors(compiled):
    p = plan(compiled, 256, target="sm90")
    assert compiled.report.warmup_plan is p
    assert (p.target, p.planned_on, p.max_tokens, p.buckets) == ("sm90", "meta", 256, token_buckets(256))
    site_ops = Counter(s.op for s in compiled.sites)
    for T in p.buckets:  # every site planned once at every bucket
        planned: Counter = Counter()
        for s in p.steps:
            if s.tokens == T:
                planned[s.op] += s.sites
        assert planned == site_ops, T
    # sm90 with no GPU here: Triton for every op at every bucket (below 1024 rows, where the CUDA
    # writer of store_fp8_paged would take over) ...
    assert {(v.op, v.provider): v.tokens for v in p.variants} == {(op, "triton"): p.buckets for op in site_ops}
    assert not any(s.error for s in p.steps)
    # ... with the reason each provider ranked above Triton was passed over
    tilelang = ops.get("mhc_pre").providers["tilelang"]
    for s in p.steps:
        if s.op == "mhc_pre":
            reasons = {r.provider: r.reason for r in s.passed_over}
            above = {n for n, q in ops.get("mhc_pre").providers.items() if q.priority > 20}  # Triton's 20
            assert set(reasons) == above and "tilelang" in above and "torch" not in above
            assert reasons["tilelang"] == (tilelang.available() or "tensors are not on a CUDA device")
    if tilelang.available():  # not installed here: flagged as this machine's gap, not the target's
        gaps = {u.op: u for u in p.unavailable_here if u.provider == "tilelang"}
        assert set(gaps) == set(MHC_OPS) & set(site_ops)
        assert gaps["mhc_pre"].reason == tilelang.available() and gaps["mhc_pre"].gates_accept == ()
        assert gaps["mhc_pre"].gates_refuse == "tensors are not on a CUDA device"  # meta: no GPU to see
    # the committed H200 crossover table does not cover tiny's hidden size: Triton there too
    D = compiled.config.dim
    h200 = next(t for t in p.tables if t.table == "crossover_h200.json")
    assert h200.device == "NVIDIA H200" and h200.provider == "tilelang"
    assert {(v.op, v.provider): v.tokens for v in h200.variants} == {
        (op, "triton"): p.buckets for op in MHC_OPS if op in site_ops}
    assert f"mhc_pre at D = {D}: not measured in this table; triton at every T" in h200.notes
    assert plan(compiled, 8, target="cpu").tables == ()  # TileLang does not run on the CPU target


def test_plan_asks_the_gates_of_providers_this_machine_lacks(compiled, monkeypatch):
    op = ops.get("q_norm_rope")

    def from_64_rows(q, *rest):
        return None if q.shape[0] >= 64 else f"{q.shape[0]} rows: too few for this kernel"

    fake = ops.Provider("q_norm_rope", "fake_gpu", op.reference, frozenset({"sm90"}), priority=50,
                        available=lambda: "fake_gpu not installed", supports_args=from_64_rows)
    monkeypatch.setitem(op.providers, "fake_gpu", fake)
    p = plan(compiled, 256, target="sm90")
    assert {v.provider for v in p.variants if v.op == "q_norm_rope"} == {"triton"}  # not here: Triton
    step = next(s for s in p.steps if s.op == "q_norm_rope" and s.tokens == 1)
    assert [(r.provider, r.reason) for r in step.passed_over] == [("fake_gpu", "fake_gpu not installed")]
    gap = next(u for u in p.unavailable_here if u.provider == "fake_gpu")
    assert (gap.op, gap.reason, gap.gates_accept) == ("q_norm_rope", "fake_gpu not installed", (64, 96, 128, 192, 256))
    assert gap.gates_refuse == "1 rows: too few for this kernel"
    text = warmup_text(p, None)
    assert re.search(r"fake_gpu\s+q_norm_rope\s+fake_gpu not installed\s+accept T 64\.\.256; elsewhere: 1 rows", text)


class WideSite(nn.Module):
    """hc_pre -> linear -> hc_post of the reference model at a chosen hidden size."""

    def __init__(self, dim: int):
        super().__init__()
        self.fn = nn.Parameter(torch.empty(24, 4 * dim))
        self.scale = nn.Parameter(torch.empty(3))
        self.base = nn.Parameter(torch.empty(24))
        self.w = nn.Parameter(torch.empty(dim, dim, dtype=torch.bfloat16))

    def forward(self, x):
        h, post, comb = hc_pre(x, self.fn, self.scale, self.base, 4, 1e-6, 1e-6, 20, 2.0)
        return hc_post(torch.nn.functional.linear(h, self.w), x, post, comb)


def _table_winner(table: dict, op: str, D: int, T: int) -> str:
    """The committed table read directly: the smallest measured T' >= T (past the last: the last)."""
    rows = sorted((r for r in table["results"] if r["op"] == op and r["D"] == D), key=lambda r: r["T"])
    return next((r for r in rows if r["T"] >= T), rows[-1])["winner"]


def test_plan_follows_the_crossover_table_per_bucket():
    D = 7168  # DSV4-Pro's hidden size, measured in the committed table
    with torch.device("meta"):
        model = nn.Sequential(WideSite(D), WideSite(D))  # mhc_pre, mhc_post_pre, mhc_post
    x = torch.empty(8, 4, D, dtype=torch.bfloat16, device="meta")
    compiled = fusegraph.compile(model, target="sm90", example_inputs=(x,))
    assert {s.op for s in compiled.sites} == set(MHC_OPS)
    p = plan(compiled, 4096)
    assert p.target == "sm90" and p.planned_on == "meta"
    assert all(v.provider == "triton" for v in p.variants)  # no GPU here: the dispatcher keeps Triton

    with open(os.path.join(os.path.dirname(crossover.__file__), "crossover_h200.json")) as f:
        table = json.load(f)
    h200 = next(t for t in p.tables if t.table == "crossover_h200.json")
    assert h200.status == table["status"] == "measured" and h200.notes == ()
    for op in MHC_OPS:
        expected: dict[str, tuple[int, ...]] = {}
        for T in p.buckets:
            winner = _table_winner(table, op, D, T)
            expected[winner] = expected.get(winner, ()) + (T,)
        got = {v.provider: v.tokens for v in h200.variants if v.op == op}
        assert got == expected, op
    pre = {v.provider: v.tokens for v in h200.variants if v.op == "mhc_pre"}
    assert pre.get("tilelang") and pre.get("triton"), "the table splits mhc_pre at D = 7168 by bucket"

    with ops.prefer({"mhc_pre": ["torch"]}):  # a forced order: the dispatcher and the plan follow it
        forced = plan(compiled, 64)
    assert {v.provider for v in forced.variants if v.op == "mhc_pre"} == {"torch"}
    assert any("mhc_pre: the provider order is forced" in n for t in forced.tables for n in t.notes)
    assert compiled.report.warmup_plan is forced


def test_bucket_ranges_and_plan_mismatches():
    buckets = token_buckets(256)
    assert bucket_ranges((1, 2, 3, 4, 6, 8), buckets) == "1..8"
    assert bucket_ranges((96, 128), buckets) == "96,128"
    assert bucket_ranges((1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 192, 256), buckets) == "1..64,192,256"
    assert bucket_ranges((), buckets) == "-"
    p = WarmupPlan("sm90", 2, (1, 2), "cuda:0", steps=(PlanStep("mhc_pre", 1, "triton", 1),
                                                        PlanStep("mhc_pre", 2, "tilelang", 1)))
    w = WarmState("cuda:0", "sm90", 2, (1, 2), 2, 0.5, (WarmVariant("mhc_pre", "triton", (1, 2), 1, 0.5),))
    assert plan_mismatches(p, w) == ["mhc_pre T=2: planned tilelang, ran triton"]
    assert "differs from the plan (cuda:0) at 1 (op, T): mhc_pre T=2" in warmup_text(p, w)


def test_report_renders_the_plan_and_the_warm_variants(compiled):
    rep = copy.copy(compiled.report)
    rep.warmup_plan = plan(compiled, 16, target="sm90", note="nothing compiled: no sm90 GPU here")
    rep.warm = None
    result = ReportResult(source="tiny", device="cpu", tokens=EXAMPLE_T, report=rep, coverage=None)
    text = render(result, "text")
    assert "Warm-up plan for sm90: 8 T buckets up to 16 (1,2,3,4,6,8,12,16)" in text
    assert "nothing compiled: no sm90 GPU here" in text
    assert re.search(r"^mhc_pre\s+triton\s+1\.\.16\s+1\s+tilelang: ", text, re.M)
    assert "On NVIDIA H200 (crossover_h200.json, measured), where tilelang is installed" in text
    d = json.loads(render(result, "json"))
    assert validate(d, REPORT) == [] and d["warm"] is None
    assert d["warmup_plan"]["variants"][0]["tokens"] == [1, 2, 3, 4, 6, 8, 12, 16]

    with ops.prefer({"*": ["torch"]}):
        warmup(compiled, 2, progress=False)
    rep.warm, rep.warmup_plan = compiled.report.warm, None
    text = render(result, "text")
    assert "Warm-up on cpu (cpu): 2 T buckets up to 2 (1,2)" in text and "all compiled" in text
    assert re.search(r"^mhc_pre\s+torch\s+1,2\s+1\s+[\d.]+$", text, re.M)
    d = json.loads(render(result, "json"))
    assert validate(d, REPORT) == [] and d["warmup_plan"] is None and d["warm"]["ok"] is True
    html = render(result, "html")
    assert "<h2>Warm-up</h2>" in html and "all compiled" in html and "mhc_pre" in html
    rep.warmup_plan = compiled.report.warmup_plan
    assert "every bucket (" in render(result, "html")
