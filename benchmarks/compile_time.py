"""How long fusegraph takes to plan the released DSV4 sizes on a CPU-only machine (meta device).

    python -m benchmarks.compile_time [--presets flash,pro] [--target sm90] [--tokens 128] [--out FILE]

Prints, per preset: graph nodes, seconds per pipeline stage, sites per pattern and the expected-set
shortfall; writes the same as JSON. Issue target: ``pro`` for ``sm90`` in under 30 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import torch

import fusegraph
from fusegraph.models.presets import build_model, example_inputs


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FUSEGRAPH_COMMIT", "unknown")


def measure(preset: str, target: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    model = build_model(preset, device="meta")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = fusegraph.compile(model, example_inputs=example_inputs(model, tokens), target=target)
    total = time.perf_counter() - t0
    report = compiled.report
    # compile time outside the recorded stages: the unfused copy, graph statistics, code generation
    unstaged = total - sum(report.timings.values())
    return {"preset": preset, "target": target, "tokens": tokens, "build_s": round(build_s, 2),
            "compile_s": round(total, 2), "stages_s": report.timings, "unstaged_s": round(unstaged, 2),
            "nodes": report.before.nodes,
            "counts": report.counts(), "shortfall": {k: list(v) for k, v in report.shortfall().items()},
            "near_misses": len(report.near_misses)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="flash,pro")
    ap.add_argument("--target", default="sm90")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [measure(p, args.target, args.tokens) for p in args.presets.split(",")]
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "commit": _commit(), "date": time.strftime("%Y-%m-%d")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"{'preset':8s} {'nodes':>7s} {'compile s':>10s}  stages")
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items()) + f", other {r['unstaged_s']:.1f}"
        print(f"{r['preset']:8s} {r['nodes']:7d} {r['compile_s']:10.1f}  {stages}")
        print(f"         sites {r['counts']}  shortfall {r['shortfall'] or 'none'}")
    print(f"({meta['cpus']} CPUs, torch {meta['torch']}, commit {meta['commit']})")


if __name__ == "__main__":
    main()
