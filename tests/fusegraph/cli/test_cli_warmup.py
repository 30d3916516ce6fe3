"""``fusegraph report --warmup MAX_TOKENS``, driven through the installed console script.

Without the target's GPU (this CPU machine, target sm90) the report shows the warm-up plan, per
committed crossover table what that GPU picks per bucket, and says nothing was compiled (the wide
mHC toy on the meta device, at DSV4-Pro's hidden size); with target cpu it warms ``tiny`` up on the
CPU and lists the reference provider's warm buckets (JSON, validated against the schema). On an
sm90 GPU (``gpu`` mark) the same toy is warmed up there and must compile what the plan says.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from cli_helpers import run_cli, show
from fusegraph import ops, targets
from fusegraph.kernels.mhc_pre import crossover
from fusegraph.render.schema import REPORT, validate
from fusegraph.render.warmup_text import bucket_ranges
from fusegraph.warmup import token_buckets

WIDE = "cli_toy_model:make_wide"


@pytest.mark.skipif(targets.detect() == "sm90", reason="an sm90 GPU here runs the warm-up instead of planning")
def test_plan_without_the_target_gpu():
    proc = run_cli("report", WIDE, "--target", "sm90", "--warmup", "256")
    assert proc.returncode == 0, show(proc)
    out = proc.stdout
    buckets = token_buckets(256)
    assert f"Warm-up plan for sm90: {len(buckets)} T buckets up to 256 ({','.join(map(str, buckets))}), " \
           "planned on meta tensors" in out
    assert re.search(r"^nothing compiled: this machine has (only a CPU|a \w+ GPU), no sm90 GPU$", out, re.M)
    for op in ("mhc_pre", "mhc_post_pre", "mhc_post"):  # the dispatcher here: Triton at every bucket
        assert re.search(rf"^{op}\s+triton\s+1\.\.256\s+1\s+tilelang: ", out, re.M), op
    # the committed H200 table moves some buckets of D = 7168 to TileLang
    table = next(t for t in crossover.load_tables() if t.name == "crossover_h200.json")
    assert f"On {table.device} (crossover_h200.json, {table.status}), where tilelang is installed" in out
    for op in ("mhc_pre", "mhc_post_pre", "mhc_post"):
        for provider in ("triton", "tilelang"):
            tokens = [T for T in buckets if table.lookup(op, 7168, T).winner == provider]
            if tokens:
                assert re.search(rf"^  {op}\s+{provider}\s+{re.escape(bucket_ranges(tokens, buckets))}\s+1$",
                                 out, re.M), (op, provider)
    assert "warming up" not in proc.stderr  # nothing ran


def test_cpu_warmup_records_the_reference_provider_as_warm():
    proc = run_cli("report", "tiny", "--target", "cpu", "--warmup", "8", "--format", "json")
    assert proc.returncode == 0, show(proc)
    d = json.loads(proc.stdout)
    assert validate(d, REPORT) == []
    warm, p = d["warm"], d["warmup_plan"]
    assert warm["device"] == "cpu" and warm["target"] == "cpu" and warm["ok"] and not warm["failures"]
    assert warm["buckets"] == [1, 2, 3, 4, 6, 8] and warm["calls"] > 0
    site_ops = {s["op"] for s in d["sites"]}
    assert {(v["op"], v["provider"]) for v in warm["variants"]} == {(op, "torch") for op in site_ops}
    assert all(v["tokens"] == warm["buckets"] for v in warm["variants"])
    assert p["planned_on"] == "cpu" and p["note"] == "" and p["tables"] == []  # planned where it ran
    assert {(v["op"], v["provider"]) for v in p["variants"]} == {(op, "torch") for op in site_ops}
    assert re.search(r"warming up up to 8 tokens on cpu: 100\.0% \[\d+/\d+\] done", proc.stderr)


def test_warmup_needs_a_positive_token_count():
    proc = run_cli("report", "tiny", "--warmup", "0")
    assert proc.returncode == 2, show(proc)
    assert "--warmup takes MAX_TOKENS >= 1, got 0" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or targets.detect() != "sm90", reason="needs an sm90 GPU")
def test_warmup_on_the_gpu_compiles_what_the_plan_says():
    proc = run_cli("report", WIDE, "--target", "sm90", "--warmup", "256", "--format", "json", timeout=600)
    assert proc.returncode == 0, show(proc)
    d = json.loads(proc.stdout)
    assert validate(d, REPORT) == []
    warm, p = d["warm"], d["warmup_plan"]
    assert warm is not None and warm["ok"], warm and warm["failures"]
    assert warm["device"].startswith("cuda") and p["planned_on"] == warm["device"] and p["note"] == ""
    buckets = token_buckets(256)
    assert warm["buckets"] == list(buckets)
    ran = {(v["op"], T): v["provider"] for v in warm["variants"] for T in v["tokens"]}
    planned = {(s["op"], s["tokens"]): s["provider"] for s in p["steps"]}
    assert ran == planned  # the plan made on the GPU's own tensors is what compiled
    assert set(ran) == {(op, T) for op in ("mhc_pre", "mhc_post_pre", "mhc_post") for T in buckets}
    # an H200 with TileLang installed follows its committed crossover table bucket by bucket
    table = next((t for t in crossover.load_tables() if t.device == torch.cuda.get_device_name()), None)
    tilelang = ops.get("mhc_pre").providers["tilelang"]
    if table is not None and table.status == crossover.MEASURED and tilelang.available() is None:
        for (op, T), provider in ran.items():
            assert provider == table.lookup(op, 7168, T).winner, (op, T, provider)
