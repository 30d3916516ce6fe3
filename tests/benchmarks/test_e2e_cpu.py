"""CPU tests of the end-to-end benchmark (``benchmarks/e2e.py``, ``benchmarks/plot.py``).

* the dry path (``--dry-run``): one ``tiny`` layer built, compiled by every variant, run once on CPU;
  the JSON must show every variant within tolerance, every fused site called (also inside
  torch.compile), no graph break, a passing torch.export check and a fusable-part check whose fused
  calls agree with the regions they replace;
* the pieces that decide what is reported: goals, stack sums, the compile-time projection, the
  region graph, plot and markdown output, merging of result files.
"""
from __future__ import annotations

import json
import math
import os
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # benchmarks/ is a top-level folder of the checkout, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import e2e, plot  # noqa: E402


# -- the dry path --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "dry.json"
    # The richest layer (ratio 4: compressor + indexer). Fused ops run their torch reference: the
    # kernels have their own tests, and under TRITON_INTERPRET=1 they would double the run time.
    # torch.compile with the "eager" backend: Dynamo's graph capture (breaks, opaque custom ops)
    # without AOT/Inductor code generation.
    argv = ["--dry-run", "--ratios", "4", "--T", "8", "--variants", "eager,fusegraph,fusegraph_compile",
            "--compile-backend", "eager", "--provider", "*=torch", "--out", str(out)]
    try:
        rc = e2e.main(argv)
    finally:
        torch._dynamo.reset()
    with open(out) as f:
        return rc, json.load(f)


@pytest.mark.slow
def test_dry_run_every_variant_runs_and_agrees(dry_run):
    rc, data = dry_run
    assert data["schema"] == e2e.SCHEMA
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"eager", "fusegraph", "fusegraph_compile"}
    for r in rows.values():
        assert not r["error"] and not r["skipped"], r
        assert r["within_tolerance"] is True, r
        assert r["rel_l2"] is not None and math.isfinite(r["rel_l2"])
        assert (r["layer"], r["ratio"], r["T"]) == (0, 4, 8)
    assert rc == 0


@pytest.mark.slow
def test_dry_run_fused_ops_are_called_and_opaque(dry_run):
    _, data = dry_run
    rows = {r["variant"]: r for r in data["rows"]}
    n_sites = sum(rows["fusegraph"]["sites"].values())
    assert n_sites >= 5  # mhc pre/post, q and kv norm-rope, compressor pooling at least
    assert rows["fusegraph"]["fused_calls"] == n_sites
    assert rows["fusegraph_compile"]["fused_calls"] == n_sites      # opaque inside torch.compile
    assert rows["fusegraph_compile"]["graph_breaks"] == 0
    assert rows["eager"]["fused_calls"] == 0


@pytest.mark.slow
def test_dry_run_export_and_fusable_part(dry_run):
    _, data = dry_run
    (export,) = [c for c in data["checks"] if c["name"] == "export"]
    assert export["passed"] is True, export["detail"]
    (part,) = data["fusable"]
    assert not part["error"], part["error"]
    assert part["nodes_replaced"] > 20 and part["outputs_checked"] >= 5
    assert part["outputs_within_tolerance"] is True, part["check_reason"]
    assert "sparse_attn_sink" not in part["sites"]
    goals = {g["name"]: g["passed"] for g in data["goals"]}
    assert all(v is not False for v in goals.values()), data["goals"]
    assert goals["torch.export of the fused graph"] is True


@pytest.mark.slow
def test_timing_path_with_fake_clocks(monkeypatch):
    """The GPU path's plumbing on CPU: timers replaced by fakes that still run the call (so capture
    and replay outputs exist), PDL claimed supported: both PDL settings are measured for the fused
    variants, graph timing and replay checks happen for T <= graph_max_T only, a failed capture keeps
    the stream time and fails the replay goal, the fusable part is timed, and the goals are computed
    from those numbers."""
    calls = {"stream": 0, "graph": 0}

    def fake_stream(call, iters, warmup=2):
        calls["stream"] += 1
        call()
        return 100.0

    def fake_graph(call, replays):
        calls["graph"] += 1
        if calls["graph"] == 3:  # T=1: eager, fusegraph PDL on, then this capture (PDL off) fails
            raise RuntimeError("operation not permitted when stream is capturing")
        return 50.0, e2e._clone(call())

    monkeypatch.setattr(e2e, "time_stream", fake_stream)
    monkeypatch.setattr(e2e, "time_graph", fake_graph)
    monkeypatch.setattr(e2e, "pdl_supported", lambda device: True)
    opts = e2e.parse_args(["--dry-run", "--ratios", "0", "--T", "1,8", "--variants", "eager,fusegraph",
                           "--provider", "*=torch", "--compile-backend", "eager", "--no-export",
                           "--graph-max-T", "1", "--fusable-max-T", "1"])
    opts.timing = True
    try:
        from fusegraph.cli.compiling import forced_providers
        with forced_providers(opts.providers):
            result = e2e.Runner(opts, lambda msg: None).run()
    finally:
        torch._dynamo.reset()
    rows = {(r.T, r.variant, r.pdl): r for r in result.rows}
    assert set(rows) == {(T, v, p) for T in (1, 8) for v, p in
                         (("eager", None), ("fusegraph", True), ("fusegraph", False))}
    assert all(not r.error and not r.skipped for r in rows.values()), [r.error or r.skipped for r in rows.values()]
    assert rows[(1, "fusegraph", True)].graph_us == 50.0 and rows[(1, "fusegraph", True)].replay_matches is True
    assert rows[(1, "fusegraph", True)].compile_s > 0                 # the fusegraph.compile time
    failed = rows[(1, "fusegraph", False)]
    assert failed.stream_us == 100.0 and failed.graph_us is None and failed.replay_matches is False
    assert "stream is capturing" in failed.graph_error
    assert rows[(8, "fusegraph", True)].graph_us is None and rows[(8, "fusegraph", True)].stream_us == 100.0
    assert rows[(1, "eager", None)].replay_matches is None  # the replay check is for the fused variants
    (part,) = result.fusable
    assert (part.T, part.eager_graph_us, part.compile_graph_us, part.fused_graph_us,
            part.fused_graph_us_pdl_off) == (1, 50.0, 50.0, 50.0, 50.0)
    # 6 stream timings (3 rows per T), 3 graph timings of rows at T=1, 4 of the fusable part
    assert calls == {"stream": 6, "graph": 7}
    goals = {g.name: g for g in result.goals}
    assert goals["decode fusable part, T=1"].value == pytest.approx(1.0)
    assert goals["decode fusable part, T=1"].passed is False
    assert goals["prefill whole layer, T=8"].passed is None  # no torch.compile row to compare with
    replay_goal = goals["CUDA-graph replay equals the plain run (fused variants)"]
    assert replay_goal.passed is False and "capture/replay failed" in replay_goal.detail
    text = e2e.format_report(result)
    assert "x compile+cg" in text and "[FAIL] decode fusable part" in text and "capture/replay failed" in text


@pytest.mark.slow
def test_prefill_reuses_one_fusegraph_compile_per_layer(monkeypatch):
    """Prefill T above --prefill-compile-T run the fused module compiled once at that T (decode T
    compile at their own T); the reused module's outputs are judged at the run T."""
    compiled_at = []
    real = e2e.Runner.fusegraph_compile

    def counting(self, runner, layer, T, x):
        compiled_at.append((T, x.shape[0]))
        return real(self, runner, layer, T, x)

    monkeypatch.setattr(e2e.Runner, "fusegraph_compile", counting)
    opts = e2e.parse_args(["--dry-run", "--ratios", "0", "--T", "8,160,200", "--graph-max-T", "8",
                           "--prefill-compile-T", "128", "--variants", "eager,fusegraph", "--provider", "*=torch",
                           "--compile-backend", "eager", "--no-export", "--fusable-max-T", "0"])
    try:
        from fusegraph.cli.compiling import forced_providers
        with forced_providers(opts.providers):
            result = e2e.Runner(opts, lambda msg: None).run()
    finally:
        torch._dynamo.reset()
    assert compiled_at == [(8, 8), (128, 128)]  # once per layer for both prefill T
    fused = {r.T: r for r in result.rows if r.variant == "fusegraph"}
    assert {T: r.compiled_at_T for T, r in fused.items()} == {8: 8, 160: 128, 200: 128}
    for r in fused.values():
        assert not r.error and not r.skipped and r.within_tolerance is True, r
        assert r.fused_calls == sum(r.sites.values()) >= 5
    assert any("prefill T=160,200" in n and "T=128" in n for n in result.notes)
    assert "fusegraph.compile at T=128" in e2e.format_report(result)


def test_sigterm_ends_the_run_and_keeps_what_was_measured(monkeypatch, tmp_path):
    """A time limit's SIGTERM stops the run after the layers already measured; JSON and markdown are
    written (they are also written after every layer, for a harder kill)."""
    import signal

    calls = []

    def fake_layer(self, layer, T):
        calls.append((layer, T))
        self.result.rows.append(e2e.Row(layer, self.stack.ratios[layer], T, "eager", None, rel_l2=0.0,
                                        within_tolerance=True))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(e2e.Runner, "run_layer", fake_layer)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = e2e.main(["--dry-run", "--ratios", "0,4", "--T", "8,16", "--variants", "eager", "--out", str(out),
                   "--markdown", str(md)])
    assert calls == [(0, 8), (1, 8)] and rc == 0
    data = json.loads(out.read_text())
    assert [(r["layer"], r["T"]) for r in data["rows"]] == [(0, 8), (1, 8)]
    assert any("interrupted" in n for n in data["notes"])
    assert "interrupted" in md.read_text()
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler is restored


def test_budget_projects_compiles_and_forwards_from_what_was_measured():
    budget = e2e.Budget(_opts(time_budget=100.0, case_budget=12.0))
    assert budget.compile_overruns("compile") is None             # nothing measured: go
    budget.record_first_call("compile", 40.0)
    budget.record_first_call("compile", 20.0)                      # the slowest one counts
    assert budget.first_call_s["compile"] == 40.0 and budget.compile_overruns("compile") is None
    budget.t0 -= 70.0                                              # 30 s left
    assert "does not fit in the 30 s left" in budget.compile_overruns("compile")
    assert budget.compile_overruns("fusable part") is None
    assert e2e.Budget(_opts(time_budget=None)).compile_overruns("compile") is None
    # a prefill forward is projected from the largest T measured, not from a launch-bound decode T
    budget.record_forward(0, "eager", 4096, 0.2)
    budget.record_forward(0, "eager", 8, 0.01)
    assert budget.forward_s[(0, "eager")] == (4096, 0.2)
    assert budget.forward_skip(0, "eager", 16384) is None          # 0.8 s x 3 < 12 s
    assert budget.iters_for(0.8, 20) == 3


def test_pdl_settings_and_compile_T_per_token_count():
    runner = e2e.Runner.__new__(e2e.Runner)
    runner.opts = _opts(pdl_max_T=64, graph_max_T=64, prefill_compile_T=128)
    runner.pdl_settings = [True, False]
    assert runner.pdl_for(1) == [True, False] and runner.pdl_for(64) == [True, False]
    assert runner.pdl_for(4096) == [True]
    assert [runner.compile_T_for(T) for T in (1, 64, 100, 4096, 16384)] == [1, 64, 100, 128, 128]
    runner.opts = _opts(pdl_max_T=None, prefill_compile_T=0)
    assert runner.pdl_for(4096) == [True, False] and runner.compile_T_for(4096) == 4096


def test_cli_without_gpu_exits_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert e2e.main(["--T", "1"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_parse_args_modes():
    dry = e2e.parse_args(["--dry-run"])
    assert (dry.preset, dry.device, dry.timing, dry.tokens, dry.compile_backend) == ("tiny", "cpu", False, [8], "aot_eager")
    quick = e2e.parse_args(["--quick"])
    assert quick.tokens == [1] and quick.time_budget is not None and quick.timing and quick.iters < 20
    full = e2e.parse_args([])
    assert full.tokens == [1, 8, 64, 4096, 16384] and full.ratios == [0, 4, 128] and full.variants == list(e2e.VARIANTS)
    assert (full.prefill_compile_T, full.pdl_max_T) == (e2e.PREFILL_COMPILE_T, None)
    # --T is measured in the order given (a priority order under a time budget), without repeats
    assert e2e.parse_args(["--T", "1,4096,64,1,8"]).tokens == [1, 4096, 64, 8]
    with pytest.raises(SystemExit):
        e2e.parse_args(["--ratios", "2"])


# -- what gets reported --------------------------------------------------------------------------
def _result(rows, fusable=(), checks=(), pdl_supported=True):
    return e2e.RunResult(meta={"pdl_supported": pdl_supported, "device": "H100", "git_commit": "abc123",
                               "model": {"preset": "flash"}},
                         layers=[{"index": 0, "ratio": 0}, {"index": 1, "ratio": 4}],
                         rows=list(rows), fusable=list(fusable), checks=list(checks))


def _opts(**kw):
    opts = e2e.parse_args(["--T", "1,4096"])
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


def test_goals_decode_fusable_part_and_prefill():
    parts = [e2e.FusablePart(0, 0, 1, compile_graph_us=30.0, fused_graph_us=6.0),
             e2e.FusablePart(1, 4, 1, compile_graph_us=40.0, fused_graph_us=16.0)]   # 2.5x: misses 3x
    rows = []
    for layer, ratio in ((0, 0), (1, 4)):
        rows.append(e2e.Row(layer, ratio, 4096, "compile", None, stream_us=1300.0))
        rows.append(e2e.Row(layer, ratio, 4096, "fusegraph", True, stream_us=1000.0 if layer == 0 else 900.0))
        rows.append(e2e.Row(layer, ratio, 4096, "fusegraph_compile", True, stream_us=1100.0))
        rows.append(e2e.Row(layer, ratio, 4096, "fusegraph", False, stream_us=10.0))  # PDL off: not the goal's
    goals = {g.name: g for g in e2e.evaluate_goals(_result(rows, parts), _opts())}
    decode = goals["decode fusable part, T=1"]
    assert decode.passed is False and decode.value == pytest.approx(2.5)
    prefill = goals["prefill whole layer, T=4096"]
    assert prefill.value == pytest.approx(1.3) and prefill.passed is True   # worst layer: 1300 / 1000
    parts[1].fused_graph_us = 10.0
    goals = {g.name: g for g in e2e.evaluate_goals(_result(rows, parts), _opts())}
    assert goals["decode fusable part, T=1"].passed is True


def test_goals_flag_graph_breaks_lost_fused_calls_replay_and_tolerance():
    rows = [e2e.Row(0, 0, 1, "fusegraph_compile", True, graph_breaks=2, fused_calls=3, sites={"mhc_post": 4},
                    replay_matches=False, replay_rel_l2=0.5, within_tolerance=False),
            e2e.Row(1, 4, 1, "fusegraph", True, fused_calls=4, sites={"mhc_post": 4}, replay_matches=True,
                    replay_rel_l2=0.0, within_tolerance=True)]
    checks = [e2e.Check("export", 0, 1, False, "boom")]
    goals = {g.name: g for g in e2e.evaluate_goals(_result(rows, checks=checks), _opts())}
    assert goals["torch.compile(fusegraph) without graph breaks"].passed is False
    assert goals["fused ops stay opaque inside torch.compile"].passed is False
    assert goals["CUDA-graph replay equals the plain run (fused variants)"].passed is False
    assert goals["outputs within the compare tool's tolerances"].passed is False
    assert goals["torch.export of the fused graph"].passed is False
    assert goals["decode fusable part, T=1"].passed is None      # not measured is not a pass


def test_stack_rows_sum_layers_only_when_all_measured():
    rows = [e2e.Row(0, 0, 1, "compile", None, stream_us=10.0, graph_us=4.0, gpu_ops=30, gpu_us=3.0),
            e2e.Row(1, 4, 1, "compile", None, stream_us=20.0, graph_us=6.0, gpu_ops=50, gpu_us=5.0),
            e2e.Row(0, 0, 1, "fusegraph", True, stream_us=5.0, gpu_us=2.0, fused_share=0.5, fused_calls=6),
            e2e.Row(1, 4, 1, "fusegraph", True, skipped="out of memory")]
    (stack,) = e2e.stack_rows(_result(rows))
    assert (stack.variant, stack.stream_us, stack.graph_us, stack.gpu_ops) == ("compile", 30.0, 10.0, 80)
    text = e2e.format_report(_result(rows))
    assert "stack" in text and "skipped: out of memory" in text


def test_compile_projection_and_forward_budget():
    budget = e2e.Budget(_opts(case_budget=10.0))
    assert budget.compile_projection(0, 4096) is None
    budget.compile_s[0] = [(1, 20.0), (64, 45.0), (512, 40.0)]
    assert budget.compile_projection(0, 4096) is None         # small T: fixed cost, no projection
    budget.compile_s[0].append((4096, 100.0))
    assert budget.compile_projection(0, 16384) == pytest.approx(400.0)   # linear above 1k tokens
    assert budget.compile_projection(0, 1024) == pytest.approx(100.0)
    runner = e2e.Runner.__new__(e2e.Runner)
    runner.opts, runner.budget = _opts(compile_budget=300.0), budget
    assert "projected at 400 s" in runner.compile_skip(0, 16384)
    assert runner.compile_skip(0, 8192) is None
    budget.compile_aborted[1] = (4096, "passed --compile-budget")
    assert "aborted" in runner.compile_skip(1, 16384) and runner.compile_skip(1, 64) is None
    budget.forward_s[(0, "eager")] = (64, 0.5)
    assert budget.forward_skip(0, "eager", 64) is None
    assert "case-budget" in budget.forward_skip(0, "eager", 4096)
    assert budget.iters_for(0.001, 20) == 20 and budget.iters_for(0.5, 20) == 5 and budget.iters_for(4.0, 20) == 3


def test_region_graph_keeps_exactly_the_replaced_nodes():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4))
            self.register_buffer("cache", torch.zeros(3, 4))

        def forward(self, x):
            a = x * self.w             # region 1
            b = a.sin() + 1            # region 1
            c = b @ b.t()              # outside
            d = c.relu() * 2           # region 2 (reads the outside value c)
            self.cache.copy_(b[:3])    # region 2 (writes a buffer)
            return d

    gm = torch.fx.symbolic_trace(Toy())
    names = [n.name for n in gm.graph.nodes]
    by_op = {n.name: n for n in gm.graph.nodes}
    region1 = [n for n in names if n in ("mul", "sin", "add")]
    region2 = [n for n in names if n in ("relu", "mul_1", "getitem", "copy_")]
    assert len(region1) == 3 and len(region2) == 4, names

    class Site:
        def __init__(self, replaced, outputs):
            self.replaced, self.outputs = tuple(replaced), outputs

    class Compiled:
        unfused = gm

    sites = [Site(region1, {"0": "add"}), Site(region2, {"0": "mul_1"})]
    region, inputs, outputs = e2e.region_graph(Compiled, sites)
    assert inputs == ["x", "matmul"] and outputs == ["add", "mul_1"]
    kept = [n.name for n in region.graph.nodes if n.op in ("call_function", "call_method")]
    assert sorted(kept) == sorted(region1 + region2) and "matmul" not in kept
    assert all(by_op[n].op != "placeholder" for n in kept)
    x = torch.randn(5, 4)
    values = e2e.record_values(gm, x)
    gm.cache.zero_()
    add, mul_1 = region(values["x"], values["matmul"])
    torch.testing.assert_close(add, values["add"], rtol=0, atol=0)
    torch.testing.assert_close(mul_1, values["mul_1"], rtol=0, atol=0)
    torch.testing.assert_close(gm.cache, values["add"][:3], rtol=0, atol=0)  # wrote the live buffer


# -- plot, markdown, merge ---------------------------------------------------------------------
def _data():
    rows = []
    for layer, ratio in ((0, 0), (1, 128)):
        for T, mode in ((1, "graph_us"), (4096, "stream_us")):
            for k, v in enumerate(("eager", "compile", "fusegraph", "fusegraph_compile")):
                pdls = [True, False] if v.startswith("fusegraph") else [None]
                for p in pdls:
                    r = {"layer": layer, "ratio": ratio, "T": T, "variant": v, "pdl": p, "skipped": "", "error": "",
                         "graph_us": None, "stream_us": None}
                    r[mode] = (4 - k) * 10.0 * T * (1.1 if p is False else 1.0)
                    if mode == "graph_us":
                        r["stream_us"] = r[mode] * 3
                    rows.append(r)
    return {"schema": e2e.SCHEMA, "meta": {"device": "NVIDIA H100", "git_commit": "0123456789abcdef", "torch": "2.x",
                                           "triton": "3.x", "date": "today", "model": {"preset": "flash"}},
            "layers": [{"index": 0, "ratio": 0}, {"index": 1, "ratio": 128}], "rows": rows,
            "fusable": [{"layer": 0, "ratio": 0, "T": 1, "eager_graph_us": 90.0, "compile_graph_us": 30.0,
                         "fused_graph_us": 8.0, "fused_graph_us_pdl_off": 9.0, "speedup_vs_compile": 3.75}],
            "goals": [{"name": "decode fusable part, T=1", "target": ">= 3x", "value": 3.75, "passed": True}],
            "checks": [], "notes": []}


def test_series_uses_headline_time_and_pdl_on():
    s = plot.series(_data())
    assert s[0]["fusegraph"] == [(1, 20.0), (4096, 20.0 * 4096)]  # graph time at T=1, stream at 4096, PDL on
    assert s[1]["eager"][0] == (1, 40.0)


def test_svg_plot_is_valid_and_has_a_line_per_variant(tmp_path):
    path = plot.plot(_data(), str(tmp_path / "e2e.png"))
    assert path.endswith((".png", ".svg")) and os.path.getsize(path) > 1000
    doc = ET.fromstring(plot.svg(_data()))
    lines = doc.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 * 4  # two layers, four variants
    assert all(len(l.get("points").split()) == 2 for l in lines)


def test_markdown_per_layer_rows_and_notes():
    data = _data()
    r = next(r for r in data["rows"] if r["T"] == 4096 and r["variant"] == "fusegraph" and r["pdl"] is True)
    r.update(gpu_ops=41, fused_calls=8, fused_share=0.625, compile_s=7.5, compiled_at_T=128, rel_l2=1e-3)
    data["rows"][0]["skipped"] = "out of memory"
    data["notes"] = ["prefill T=4096: compiled at T=128"]
    md = plot.markdown(data)
    table = md[md.index("Per layer and variant"):]
    line = next(l for l in table.splitlines() if l.startswith(f"| {r['layer']} | {r['ratio']} | 4096 | fusegraph | on |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5:12] == [_fmt(r["stream_us"]), "stream", "41", "8", "62", "7.5 (at T=128)", "1.0e-03"], cells
    assert "skipped: out of memory" in table
    assert sum(1 for l in table.splitlines() if l.startswith("| ") and not l.startswith("| layer")) == len(data["rows"])
    assert "- prefill T=4096: compiled at T=128" in md
    assert "Per layer" not in plot.markdown(data, detail=False)


def _fmt(v):
    return format(v, ".1f")


def test_markdown_headline():
    md = plot.markdown(_data())
    assert "NVIDIA H100" in md and "`0123456789ab`" in md
    row_1 = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    # mean over layers: eager 40, compile 30, fusegraph 20, fusegraph+compile 10; compile/fusegraph 1.5x
    assert "| 40.0 | 30.0 | 20.0 | 10.0 | 1.50x | 3.00x |" in row_1 and "CUDA graph" in row_1
    assert "| 3.75 |" in md and "pass (3.75x)" in md


def test_load_merges_files(tmp_path):
    a, b = _data(), _data()
    a["rows"] = [r for r in a["rows"] if r["T"] == 1]
    b["rows"] = [r for r in b["rows"] if r["T"] == 4096]
    b["rows"][0]["stream_us"] = 1.0
    a["goals"].append({"name": "prefill whole layer, T=4096", "target": ">= 1.3x", "value": None, "passed": None})
    b["goals"] = [{"name": "decode fusable part, T=1", "target": ">= 3x", "value": 2.5, "passed": False},  # re-run
                  {"name": "prefill whole layer, T=4096", "target": ">= 1.3x", "value": 2.0, "passed": True}]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    merged = plot.load([str(pa), str(pb)])
    assert len(merged["rows"]) == len(_data()["rows"])
    assert {r["T"] for r in merged["rows"]} == {1, 4096}
    goals = {g["name"]: (g["value"], g["passed"]) for g in merged["goals"]}
    assert goals == {"decode fusable part, T=1": (2.5, False), "prefill whole layer, T=4096": (2.0, True)}
    pa.write_text(json.dumps({**a, "goals": b["goals"]}))
    pb.write_text(json.dumps({**b, "goals": [{**g, "value": None, "passed": None} for g in b["goals"]]}))
    goals = {g["name"]: g["passed"] for g in plot.load([str(pa), str(pb)])["goals"]}
    assert goals == {"decode fusable part, T=1": False, "prefill whole layer, T=4096": True}  # measured stays
    assert plot.main([str(pa), str(pb), "--markdown", str(tmp_path / "h.md")]) == 0
    assert "| 4096 |" in (tmp_path / "h.md").read_text()
