"""The CLI's parts in isolation, on hand-made records and small traced graphs (no compiler needed):
text tables, report rendering (text / JSON shape / HTML), graph drawing, value recording, the
fp64 interpreter, model sources and progress lines."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fusegraph import cost
from fusegraph.cli import model_source, recording
from fusegraph.cli.errors import UsageError
from fusegraph.cli.progress import Progress
from fusegraph.cli.report import ReportResult, render
from fusegraph.models.mhc import hc_post, hc_pre
from fusegraph.ops import Rejection, Selection
from fusegraph.records import CompileReport, GraphStats, MatchSite, NearMiss
from fusegraph.render import graph_svg
from fusegraph.render.schema import REPORT, validate
from fusegraph.render.text import Table, compress_paths, human_bytes, ranges, sci, shorten


# -- text ------------------------------------------------------------------------------------------------
def test_table_aligns_numbers_right_and_cuts_long_cells():
    t = Table(["name", "count", "share"], max_width=12)
    t.add("alpha", 3, "12.5%")
    t.add("a-very-long-name-indeed", 12345, "100.0%")
    lines = t.render().splitlines()
    assert lines[0].split() == ["name", "count", "share"]
    assert lines[2].endswith("    3   12.5%") and lines[3].endswith("12345  100.0%")
    assert "a-very-long…" in lines[3]


def test_compress_paths_and_formats():
    paths = [f"layers.{i}.attn" for i in (0, 1, 2, 5, 7, 8)] + ["layers.3.ffn", "head"]
    assert compress_paths(paths) == "layers.{0..2,5,7..8}.attn, layers.3.ffn, head"
    assert compress_paths(["a", "b", "c"], limit=2) == "a, b, +1 more"
    assert compress_paths([""]) == "(root)"
    assert ranges([1, 2, 3, 9]) == "1..3,9"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 B" and human_bytes(-2048) == "-2.0 KiB"
    assert sci(0) == "0" and sci(None) == "n/a" and sci(3.1e-4) == "3.1e-04" and sci(0.25) == "0.25"
    assert shorten("a  b\nc", 10) == "a b c" and shorten("x" * 20, 5) == "xxxx…"


# -- report rendering ----------------------------------------------------------------------------------
class TwoSites(nn.Module):
    """Two layers whose bodies stand for fusable subgraphs."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Body() for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Body(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x * 2.0 + 1.0)


def _traced(module, *inputs):
    gm = torch.fx.symbolic_trace(module)
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
    return gm


def _selection(provider="triton"):
    return Selection("toy_op", "sm90", provider, (Rejection("tilelang", "tilelang is not installed"),
                                                   Rejection("cuda", "needs D % 512 == 0, got 40")))


def _report_result() -> ReportResult:
    gm = _traced(TwoSites(), torch.randn(6, 40))
    sites = [MatchSite(pattern="toy_pattern", op="toy_op", module=f"layers.{i}", anchor=f"mul{s}",
                       fused_node=f"toy_op_default{s}", replaced=(f"mul{s}", f"add{s}"),
                       inputs={"x": "x" if i == 0 else "sigmoid"}, outputs={"0": f"add{s}"},
                       selection=_selection(), bytes_unfused=1, bytes_fused=1, launches_unfused=2)
             for i, s in enumerate(("", "_1"))]
    misses = [NearMiss("other_pattern", "layers.1", "sigmoid_1", "evaluate", "literal",
                       "eps is 1e-5 in the graph; the pattern takes 1e-6", divergent_node="add_1",
                       source="/somewhere/deep/models/toy.py:12: return torch.sigmoid(x * 2.0 + 1.0)",
                       matched_fraction=0.8)]
    rep = CompileReport(model="toy", target="sm90", capture="symbolic_trace", sites=sites, near_misses=misses,
                        before=GraphStats(6, {"mul": 2}), after=GraphStats(4, {"fused:toy_op": 2}),
                        expected={"toy_pattern": 2, "missing_pattern": 1}, timings={"match": 0.5})
    cov = cost.coverage(gm, sites)
    return ReportResult(source="toy:make", device="cpu", tokens=6, report=rep, coverage=cov,
                        warnings=["missing_pattern: expected 1 site, matched 0"])


def test_report_text_sections_and_reasons():
    text = render(_report_result(), "text", limit=20)
    assert text.startswith("fusegraph report: toy  target sm90")
    assert "toy_pattern -> toy_op: triton on 2 sites" in text
    assert "rejected tilelang: tilelang is not installed" in text and "rejected cuda: needs D % 512 == 0" in text
    assert "SHORT by 1" in text and "missing_pattern 0/1" in text
    assert "layers.{0..1}" in text
    assert "models/toy.py:12" in text and "/somewhere/deep" not in text  # short source paths
    assert "add_1" in text and "literal" in text
    assert "WARNING: missing_pattern: expected 1 site, matched 0" in text
    # coverage: 2 of 3 ops fused in each layer
    assert any(line.startswith("layers.0") and "2/3 (66.7%)" in line for line in text.splitlines())


def test_report_json_shape_from_records():
    d = json.loads(render(_report_result(), "json"))
    assert validate(d, REPORT) == []
    assert d["shortfall"] == {"missing_pattern": {"expected": 1, "matched": 0}}
    assert d["coverage"]["total"]["ops_fused"] == 4 and d["sites"][0]["selection"]["rejected"][0]["provider"] == "tilelang"
    bad = dict(d, extra=1)
    del bad["sites"]
    errors = validate(bad, REPORT)
    assert "$: missing key 'sites'" in errors and "$: undocumented key 'extra'" in errors
    assert validate(dict(d, tokens="6"), REPORT) == ["$.tokens: expected int, got str"]


def test_report_html_escapes_and_lists_everything():
    result = _report_result()
    result.report.near_misses[0] = NearMiss("p<script>", "layers.0", "a", "bind", "semantics", "x < y & z")
    html = render(result, "html")
    assert "<script>" not in html and "p&lt;script&gt;" in html and "x &lt; y &amp; z" in html
    assert "toy_op_default_1" in html and "tilelang is not installed" in html


# -- graph drawing -----------------------------------------------------------------------------------------
class MHC(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.fn = nn.Parameter(torch.randn(24, 4 * dim) * 0.1)
        self.scale = nn.Parameter(torch.ones(3))
        self.base = nn.Parameter(torch.zeros(24))

    def forward(self, x, f):
        h, post, comb = hc_pre(x, self.fn, self.scale, self.base, 4, 1e-6, 1e-6, 20, 2.0)
        return hc_post(f + h, x, post, comb)


def test_site_views_fold_the_sinkhorn_and_draw_valid_svg():
    x, f = torch.randn(3, 4, 16).bfloat16(), torch.randn(3, 16).bfloat16()
    gm = _traced(MHC(), x, f)
    calls = [n for n in gm.graph.nodes if n.op in cost.CALL_OPS]
    # pretend everything up to the collapse is one site (hc_pre: 150-odd nodes)
    cut = next(i for i, n in enumerate(calls) if n.target == "to")
    replaced = tuple(n.name for n in calls[:cut + 1])
    site = MatchSite("mhc_pre", "mhc_pre", "", replaced[0], "mhc_pre_default", replaced, {}, {},
                     Selection("mhc_pre", "cpu", "torch"))
    left, right = graph_svg.site_views(gm, None, site)
    kinds = [k for _, _, k, _ in left.nodes.values()]
    assert kinds.count("folded") >= 1
    removed_drawn = kinds.count("removed")
    assert removed_drawn < len(replaced) / 2  # most of the 100+ Sinkhorn nodes are folded
    fold = next(v for v in left.nodes.values() if v[2] == "folded")
    assert "nodes folded" in fold[0] and "div" in fold[1]
    assert list(right.nodes.values())[0][2] == "missing"
    placed = graph_svg.layout(left)
    rows: dict[float, list[tuple[float, float]]] = {}
    for nid in left.nodes:
        rows.setdefault(placed.y[nid], []).append((placed.x[nid] - placed.w[nid] / 2, placed.x[nid] + placed.w[nid] / 2))
    for spans in rows.values():  # no two boxes of a layer overlap
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    svg = graph_svg.svg_builtin(left)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and float(root.get("width")) >= placed.width
    assert svg.count("<rect") == len(left.nodes)
    assert len(placed.routes) == len({e for e in left.edges})


def test_fused_side_shows_the_call_and_its_unpacking():
    from fusegraph import ops

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    fn, scale, base = (graph.get_attr(n) for n in ("fn", "scale", "base"))
    call = graph.call_function(ops.get("mhc_pre").torch_op, (x, fn, scale, base, None, 1e-6, 1e-6, 1e-6, 20, 2.0))
    outs = [graph.call_function(__import__("operator").getitem, (call, i)) for i in range(3)]
    graph.output(tuple(outs))
    root = MHC()
    fused = torch.fx.GraphModule(root, graph)
    FakeTensorProp(fused, FakeTensorMode(allow_non_fake_inputs=True)).propagate(torch.randn(3, 4, 16).bfloat16())
    site = MatchSite("mhc_pre", "mhc_pre", "", "x", call.name, (), {}, {}, Selection("mhc_pre", "cpu", "torch"))
    unfused = torch.fx.symbolic_trace(TwoSites())
    _, right = graph_svg.site_views(unfused, fused, site)
    assert right.nodes[call.name][2] == "fused" and "[torch]" in right.nodes[call.name][0]
    assert {"x", "fn", "scale", "base"} <= set(right.nodes)
    assert sum(k == "getitem" for k, *_ in right.nodes.values()) == 3
    assert "bfloat16[3, 16]" in right.nodes[outs[0].name][3]  # tooltips carry dtype and shape


# -- recording -----------------------------------------------------------------------------------------------
class Store(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(4, 3))

    def forward(self, x, loc):
        y = x * 2.0
        self.cache[loc] = y          # the "site": writes into the cache
        return y.sum()


def test_site_recorder_takes_inputs_before_and_state_after_the_site():
    model = Store()
    gm = torch.fx.symbolic_trace(model)
    setitem = next(n for n in gm.graph.nodes if "setitem" in n.name)
    cache = setitem.args[0].name
    site = MatchSite("store", "store", "", "mul", "store_default", ("mul", setitem.name),
                     {"x": "x", "loc": "loc", "cache": cache}, {"0": "mul"}, Selection("store", "cpu", "torch"))
    rec = recording.SiteRecorder(gm, [(site, ["x", "loc", cache])])
    x, loc = torch.randn(2, 3), torch.tensor([1, 3])
    out = rec.run(x, loc)
    vals = rec.values[0]
    assert torch.equal(vals.inputs[cache], torch.zeros(4, 3))          # before the write
    assert torch.equal(vals.inputs_after[cache][loc], x * 2.0)         # after it
    assert torch.equal(vals.outputs["mul"], x * 2.0)
    assert torch.allclose(out, (x * 2.0).sum()) and torch.equal(model.cache[loc], x * 2.0)


def test_fp64_run_promotes_casts_and_keeps_bitcast_bytes():
    class Casts(nn.Module):
        def forward(self, x):
            y = (x.float() * 3.0).to(torch.bfloat16)      # would round to bf16
            return y.float() / 3.0

    x = torch.randn(64, dtype=torch.bfloat16)
    gm = torch.fx.symbolic_trace(Casts())
    out = recording.run_fp64(gm, (x,))
    assert out.dtype == torch.float64
    assert torch.allclose(out, x.double(), rtol=1e-12, atol=0)  # no bf16 rounding on the way
    assert not torch.equal(gm(x).double(), x.double())           # while the real graph rounds

    class Bitcast(nn.Module):  # packing bf16 bytes (as a KV cache does) keeps the graph's bytes
        def forward(self, x):
            return (x * 3.0).view(torch.int16).view(torch.bfloat16).float() / 3.0

    gm = torch.fx.symbolic_trace(Bitcast())
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(x)
    out = recording.run_fp64(gm, (x,))
    # rounded to bf16 at the bitcast, as the graph does; fp64 everywhere else
    assert out.dtype == torch.float64 and torch.equal(out, (x.double() * 3.0).bfloat16().double() / 3.0)

    # a run that cannot be made says so with Fp64Unsupported (the caller falls back to unfused)
    with pytest.raises(recording.Fp64Unsupported):
        recording.run_fp64(torch.fx.symbolic_trace(Bitcast()), ("not a tensor",))


# -- model sources and progress -------------------------------------------------------------------------------
def test_factory_receives_supported_options(tmp_path, monkeypatch):
    (tmp_path / "fac_opts.py").write_text(
        "import torch\n"
        "def make(tokens, seed):\n"
        "    return torch.nn.Linear(3, 3), torch.randn(tokens, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = model_source.load("fac_opts:make", tokens=7, seed=3)
    assert src.inputs[0].shape == (7, 3) and src.device.type == "cpu" and not src.planning_only
    with pytest.raises(UsageError, match="neither a preset"):
        model_source.load("fac_opts:")
    with pytest.raises(UsageError, match="unknown preset 'Tiny'"):
        model_source.load("Tiny")


def test_progress_lines_without_a_terminal():
    stream = io.StringIO()
    p = Progress("matching", stream=stream, interval=3600)
    for i in range(1, 11):
        p(i, 10, f"pattern {i}")
    p.note("done")
    lines = stream.getvalue().splitlines()
    assert lines == ["matching:  10.0% [1/10] pattern 1", "matching: 100.0% [10/10] pattern 10", "done"]
    quiet = io.StringIO()
    Progress("x", stream=quiet, enabled=False)(1, 1, "y")
    assert quiet.getvalue() == ""
