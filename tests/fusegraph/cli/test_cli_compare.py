"""``fusegraph compare``, driven through the installed console script.

A deliberately broken provider (registered at high priority by a factory module written into the
test's tmp dir) must make the affected sites fail, and ``--bisect`` must name the first of them;
forcing the reference provider with ``--provider`` must make everything pass again.
"""
from __future__ import annotations

import json
import re
import textwrap

import pytest

from cli_helpers import TOY, run_cli, show
from fusegraph.render.schema import COMPARE, validate

BROKEN_FACTORY = '''
"""MODEL factory for the test: the toy model, with one fused op's CPU provider broken."""
import functools
import os

import torch

from fusegraph import ops
import cli_toy_model

OP = os.environ["FUSEGRAPH_TEST_BROKEN_OP"]
_op = ops.get(OP)


def _perturb(value):
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        return (value.float() * 1.25 + 0.5).to(value.dtype)
    return value


@functools.wraps(_op.reference)  # same parameters as the reference, as providers must have
def broken(*args, **kwargs):
    out = _op.reference(*args, **kwargs)
    return tuple(_perturb(o) for o in out) if isinstance(out, tuple) else _perturb(out)


_op.provider("broken", targets={"cpu"}, priority=1000)(broken)


def make(tokens: int = 8, seed: int = 0):
    return cli_toy_model.make(tokens=tokens, seed=seed)
'''


@pytest.fixture(scope="module")
def toy_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    proc = run_cli("compare", TOY, "-o", str(out))
    return proc, out


def test_toy_compare_passes_with_site_table(toy_compare):
    proc, out = toy_compare
    assert proc.returncode == 0, show(proc)
    text = proc.stdout
    assert re.search(r"^PASS: 1 model output\(s\) and \d+ site\(s\) within tolerance", text, re.M), text
    assert "timings skipped" in text and "CUDA GPU" in text
    d = json.loads((out / "compare.json").read_text())
    assert validate(d, COMPARE) == []
    assert d["passed"] and d["device"] == "cpu" and d["sites"]
    for site in d["sites"]:
        assert site["passed"] and site["outputs"]
        for o in site["outputs"]:
            assert o["rel_l2"] is not None and o["rel_l2"] <= o["tolerance"]["rel_l2"]
            assert o["ulps"] is not None and o["ulps"] <= o["tolerance"]["max_ulps"]
        assert re.search(rf"^{site['index']}\s+{site['pattern']}\s+{re.escape(site['module'])}\s+{site['provider']}",
                         text, re.M)
    out0 = d["outputs"][0]
    assert out0["name"] == "output" and out0["rel_l2_unfused"] is not None  # the fp64 model run worked
    assert d["timing"]["fused"] is None and "skipped" in d["timing"]["note"]


def test_compare_html_has_both_graphs_per_site(toy_compare):
    proc, out = toy_compare
    html = (out / "compare.html").read_text()
    d = json.loads((out / "compare.json").read_text())
    assert html.count("<svg") >= 2 * len(d["sites"]) >= 2
    assert "unfused:" in html and "fused:" in html
    first = d["sites"][0]
    assert f"id=\"site-{first['index']}\"" in html and first["fused_node"] in html
    assert "<script" not in html and "http://www.w3.org/2000/svg" in html


def _write_broken_factory(tmp_path):
    (tmp_path / "broken_factory.py").write_text(textwrap.dedent(BROKEN_FACTORY))


def _pick_op_to_break(compare_json: dict) -> tuple[str, int, list[dict]]:
    """The op whose first site comes latest: bisect then has to skip over good sites."""
    sites = compare_json["sites"]
    first: dict[str, int] = {}
    for s in sites:
        first.setdefault(s["op"], s["index"])
    op = max(first, key=first.get)
    return op, first[op], sites


def test_bisect_finds_the_broken_site_and_provider_option_fixes_it(tmp_path, toy_compare):
    op, first_index, sites = _pick_op_to_break(json.loads((toy_compare[1] / "compare.json").read_text()))
    _write_broken_factory(tmp_path)
    env = {"FUSEGRAPH_TEST_BROKEN_OP": op}
    proc = run_cli("compare", "broken_factory:make", "--bisect", "-o", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert proc.returncode == 1, show(proc)
    text = proc.stdout
    d = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert validate(d, COMPARE) == []
    assert not d["passed"]
    for site in d["sites"]:
        assert site["passed"] == (site["op"] != op), site
        if site["op"] == op:
            assert site["provider"] == "broken"
            assert re.search(rf"^FAIL site #{site['index']} .*rel L2", text, re.M)
    b = d["bisect"]
    assert b["culprit"] == first_index and b["site"]["op"] == op
    assert b["failing_output"] is not None and not b["failing_output"]["passed"]
    site = sites[first_index]
    assert re.search(rf"^Bisect: first bad site is #{first_index}: {site['pattern']} -> {op} at "
                     rf"{re.escape(site['module'])}", text, re.M), text
    assert "fusegraph: bisect: fuel=" in proc.stderr

    # --provider OP=torch puts the reference back in front: everything passes
    proc = run_cli("compare", "broken_factory:make", "--provider", f"{op}=torch", "-q", cwd=tmp_path, env=env)
    assert proc.returncode == 0, show(proc)
    assert re.search(r"^PASS:", proc.stdout, re.M)


def test_compare_tiny_every_site_within_tolerance(tmp_path):
    proc = run_cli("compare", "tiny", "-o", str(tmp_path), "-q", "--limit", "0")
    assert proc.returncode == 0, show(proc)
    d = json.loads((tmp_path / "compare.json").read_text())
    assert validate(d, COMPARE) == []
    assert d["passed"] and len(d["sites"]) >= 10
    assert all(s["passed"] for s in d["sites"])
    ops = {s["op"] for s in d["sites"]}
    assert "q_norm_rope" in ops and any(op.startswith("mhc_") for op in ops), ops
    assert f"PASS: {len(d['outputs'])} model output(s) and {len(d['sites'])} site(s) within tolerance" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_compare_on_gpu_times_and_counts_launches(tmp_path):
    proc = run_cli("compare", "tiny", "--cuda-graph", "-o", str(tmp_path), "-q")
    assert proc.returncode == 0, show(proc)
    d = json.loads((tmp_path / "compare.json").read_text())
    assert d["device"] == "cuda" and d["target"] in ("sm80", "sm90", "sm100") and d["passed"]
    unfused, fused = d["timing"]["unfused"], d["timing"]["fused"]
    assert unfused["median_ms"] > 0 and fused["median_ms"] > 0
    assert fused["launches"] is not None and fused["launches"] < unfused["launches"]
    assert "Timing (CUDA events)" in proc.stdout and "speedup:" in proc.stdout
    # providers chosen on this GPU are not the CPU reference everywhere
    assert any(s["provider"] != "torch" for s in d["sites"]), [s["provider"] for s in d["sites"]]
