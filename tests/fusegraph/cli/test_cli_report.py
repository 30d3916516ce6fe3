"""``fusegraph report``, driven through the installed console script.

The toy factory (cli_toy_model.py, mHC sites only) exercises the real compiler quickly; ``flash``
checks planning for sm90 on the meta device within the time a user would wait; ``tiny`` checks the
built-in preset end to end.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from cli_helpers import TOY, TOY_WITH_CONFIG, run_cli, show
from fusegraph.render.schema import REPORT, validate


@pytest.fixture(scope="module")
def toy_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "toy.json"
    proc = run_cli("report", TOY, "--target", "sm90", "--format", "json", "-o", str(out))
    assert proc.returncode == 0, show(proc)
    assert "wrote json report" in proc.stderr
    assert proc.stdout == ""  # the report went to the file
    return json.loads(out.read_text())


def test_json_report_follows_the_documented_shape(toy_json):
    assert validate(toy_json, REPORT) == []
    assert toy_json["schema"] == "fusegraph.report/1"
    assert toy_json["target"] == "sm90" and toy_json["capture"] == "symbolic_trace"
    assert toy_json["source"] == TOY and toy_json["device"] == "cpu"


def test_json_report_content(toy_json):
    sites = toy_json["sites"]
    assert sites, "the toy's mHC subgraphs must match"
    assert toy_json["counts"] == {p: sum(s["pattern"] == p for s in sites) for p in toy_json["counts"]}
    for s in sites:
        assert re.fullmatch(r"layers\.[01]\.(attn|ffn)", s["module"]), s["module"]
        assert s["replaced"] and s["fused_node"] and s["anchor"] and s["inputs"] and s["outputs"]
        sel = s["selection"]
        assert sel["target"] == "sm90" and sel["op"] == s["op"]
        # on sm90 a GPU provider is planned; the reference was not needed, or it is explained
        rejected = {r["provider"]: r["reason"] for r in sel["rejected"]}
        assert sel["provider"] not in rejected and all(rejected.values())
    cov = toy_json["coverage"]
    total = cov["total"]
    assert [r["scope"] for r in cov["layers"]][:2] == ["layers.0", "layers.1"]
    assert total["sites"] == len(sites)
    assert 0 < total["bytes_fused"] <= total["bytes"] and 0 < total["launches_fused"] <= total["launches"]
    assert total["bytes_share"] == pytest.approx(total["bytes_fused"] / total["bytes"], abs=1e-6)
    assert total["launches_saved"] > 0 and total["bytes_saved"] > 0
    # per-layer rows add up to the total
    for key in ("ops", "ops_fused", "bytes", "bytes_fused", "launches", "launches_fused", "sites"):
        assert sum(r[key] for r in cov["layers"]) == total[key], key
    assert toy_json["before"]["nodes"] > toy_json["after"]["nodes"]
    for m in toy_json["near_misses"]:
        assert m["reason"] and m["kind"]


def test_text_report_tables(toy_json):
    proc = run_cli("report", TOY, "--target", "sm90", "--limit", "3")
    assert proc.returncode == 0, show(proc)
    out = proc.stdout
    assert out.startswith(f"fusegraph report: {TOY}  target sm90")
    for section in ("Matches", "Coverage", "Providers on sm90", "Sites", "Near misses"):
        assert re.search(rf"^{section}", out, re.M), section
    first = toy_json["sites"][0]
    assert first["fused_node"] in out and first["module"] in out
    provider = first["selection"]["provider"]
    assert re.search(rf"{first['pattern']} -> {first['op']}: {provider} on \d+ sites?", out)
    for r in first["selection"]["rejected"]:
        assert f"rejected {r['provider']}:" in out
    total = toy_json["coverage"]["total"]
    assert re.search(rf"^total\s+{total['sites']}\s+{total['ops_fused']}/{total['ops']}", out, re.M)
    if len(toy_json["sites"]) > 3:
        assert f"... {len(toy_json['sites']) - 3} more sites" in out
    assert "expected DSV4 match set: none known for this model" in out
    assert "matching" in proc.stderr  # progress went to stderr, not into the report


def test_html_report_is_self_contained(tmp_path):
    out = tmp_path / "r.html"
    proc = run_cli("report", TOY, "--format", "html", "-o", str(out), "-q")
    assert proc.returncode == 0, show(proc)
    assert proc.stderr == ""  # -q: no progress
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<style>" in html and "src=" not in html and "href=\"http" not in html and "<script" not in html
    assert "Coverage" in html and "Near misses" in html and "mhc" in html
    assert "layers.0.attn" in html


def test_shortfall_warns_and_strict_fails():
    proc = run_cli("report", TOY_WITH_CONFIG, "--strict", "--format", "json")
    assert proc.returncode == 1, show(proc)
    d = json.loads(proc.stdout)
    assert d["expected"]["q_norm_rope"] == 2 and d["shortfall"]["q_norm_rope"] == {"expected": 2, "matched": 0}
    assert any(w.startswith("q_norm_rope: expected 2 sites, matched 0") for w in d["warnings"])
    assert "warning: q_norm_rope: expected 2 sites, matched 0" in proc.stderr
    assert "--strict" in proc.stderr


@pytest.mark.slow
def test_flash_plans_for_sm90_on_meta_quickly():
    start = time.monotonic()
    proc = run_cli("report", "flash", "--target", "sm90", "--format", "json", timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 0, show(proc)
    d = json.loads(proc.stdout)
    assert validate(d, REPORT) == []
    assert d["device"] == "meta" and d["target"] == "sm90"
    assert d["expected"]["q_norm_rope"] == 43  # flash has 43 decoder layers
    assert took < 60, f"flash report took {took:.0f} s"
    assert d["capture"] == "symbolic_trace", d["capture_note"][:500]
    assert d["sites"] and not d["shortfall"], d["shortfall"]
