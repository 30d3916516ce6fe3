"""Measure Triton vs TileLang for the mHC ops per T and write the crossover table the dispatcher reads.

    python -m benchmarks.mhc_crossover --out kernels/mhc_pre/crossover_h200.json   # on the GPU it names

For each preset (flash D = 4096, pro D = 7168), op (mhc_pre+norm, mhc_post, mhc_post_pre+norm: the
model's calls) and T in {1, 8, 32, 64, 128, 512, 4096, 16384}, both providers run on the SAME
rotating input sets (``benchmarks/harness.py``: cold inputs, CUDA-graph replay, median per call);
TileLang's outputs are compared with Triton's (relative L2, must stay at bf16 / TF32 level).
TileLang wins a bucket only when at least ``--margin`` (3 %) faster; a cell that failed or was not
reached within ``--budget-s`` is written as a Triton win with no times (the table claims nothing
it did not measure). The table (``kernels/mhc_pre/crossover.py`` describes the format) records the
device name, the commit and the date; ``--raw`` also writes every timing.

Lean by design (the GPU slot is minutes): no eager / torch.compile baselines, no autotuning; the
TileLang kernels are compiled up front in parallel processes (``--prewarm-only`` does just that,
for the GPU tests too).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from benchmarks import harness
from fusegraph.kernels.mhc_pre import crossover, inputs

CASES: dict[str, Callable[..., tuple]] = {
    "mhc_pre": functools.partial(inputs.mhc_pre_args, norm=True),
    "mhc_post": inputs.mhc_post_args,
    "mhc_post_pre": functools.partial(inputs.mhc_post_pre_args, norm=True),
}
MARGIN = 0.03
TEST_SIZES = (80,)  # hidden sizes the GPU tests use besides the presets


@dataclass
class Cell:
    op: str
    size: str
    D: int
    T: int
    triton_us: Optional[float] = None
    tilelang_us: Optional[float] = None
    rel_err: Optional[float] = None   # TileLang vs Triton outputs
    winner: str = "triton"
    error: Optional[str] = None


def prewarm_keys(arch: str, sizes: list[int], with_test_variants: bool) -> list:
    from fusegraph.kernels.mhc_pre import tilelang as tl_pre

    tk = tl_pre.kernels()
    keys = [k for D in sizes for k in tk.keys_for(D, arch)]
    if with_test_variants:  # what tests/kernels/test_mhc_tilelang.py adds: fp32 norm weight, PDL off, D = 80
        D = harness.PRESETS["flash"].hidden
        keys += [tk.KernelKey("fuse", D, tk.F32, True, arch)]
        keys += tk.keys_for(D, arch, norm_dtypes=(tk.BF16,), use_pdl=False)
        keys += [k for d in TEST_SIZES for k in tk.keys_for(d, arch, norm_dtypes=(tk.BF16,))]
    return keys


def measure(cell: Cell, impls: dict[str, Callable], device: torch.device, replays: int, margin: float) -> Cell:
    make = CASES[cell.op]
    case = harness.BenchCase(name=cell.op, op=cell.op, T=cell.T, size=cell.size,
                             make_inputs=lambda T_, dev: make(T_, cell.D, device=dev), eager=impls["triton"],
                             compile=False)
    try:
        sets = harness.input_sets(case, device)
        with torch.no_grad():
            cell.rel_err = harness.max_rel_err(impls["tilelang"](*sets[0]), impls["triton"](*sets[0]))
            cell.triton_us = harness.time_graph(impls["triton"], sets, replays)
            cell.tilelang_us = harness.time_graph(impls["tilelang"], sets, replays)
        del sets
        if cell.rel_err > 2e-2:
            cell.error = f"TileLang differs from Triton: rel L2 {cell.rel_err:.3g}"
        elif cell.tilelang_us <= cell.triton_us * (1.0 - margin):
            cell.winner = "tilelang"
    except Exception as exc:  # one broken cell must not take the run down; it stays a Triton win
        cell.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        torch.cuda.empty_cache()
    return cell


def table_json(cells: list[Cell], device_name: str, meta: dict) -> dict:
    results = [{"op": c.op, "D": c.D, "T": c.T, "triton_us": c.triton_us if c.error is None else None,
                "tilelang_us": c.tilelang_us if c.error is None else None,
                "winner": c.winner if c.error is None else "triton"} for c in cells]
    return {"format": crossover.FORMAT, "status": crossover.MEASURED, "device": device_name,
            "commit": meta.get("git_commit"), "date": meta.get("date"),
            "method": "benchmarks/mhc_crossover.py: median us per call under CUDA-graph replay with cold rotating "
                      "inputs (benchmarks/harness.py), Triton and TileLang on the same input sets; TileLang wins "
                      f"a bucket only when at least {100 * MARGIN:g} % faster; failed or unreached cells: Triton. "
                      "mhc_pre and mhc_post_pre measured with the RMSNorm epilogue.",
            "buckets": sorted({c.T for c in cells}), "results": results}


def format_cells(cells: list[Cell]) -> str:
    head = ("op", "size", "T", "triton us", "tilelang us", "tl/tr", "rel err", "winner", "error")
    rows = [head]
    for c in cells:
        ratio = c.tilelang_us / c.triton_us if c.tilelang_us and c.triton_us else None
        rows.append((c.op, c.size, str(c.T), harness._fmt(c.triton_us, ".2f"), harness._fmt(c.tilelang_us, ".2f"),
                     harness._fmt(ratio, ".2f"), harness._fmt(c.rel_err, ".1e"), c.winner, c.error or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mhc_crossover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", default=",".join(map(str, crossover.BUCKETS)), help="comma list of token counts")
    p.add_argument("--sizes", default="flash,pro", help="comma list of presets")
    p.add_argument("--ops", default=",".join(CASES), help="comma list of ops")
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--margin", type=float, default=MARGIN)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new cells after this many seconds")
    p.add_argument("--out", default=None, help="write the crossover table here")
    p.add_argument("--raw", default=None, help="write every cell (times, errors, metadata) here")
    p.add_argument("--prewarm-only", action="store_true", help="compile the TileLang kernels (and the tests') and exit")
    p.add_argument("--no-prewarm", action="store_true", help="skip the parallel compile (kernels already cached)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    log = functools.partial(print, file=sys.stderr, flush=True)
    if not torch.cuda.is_available():
        log("mhc_crossover: needs a CUDA GPU")
        return 2
    from fusegraph import ops
    from fusegraph.kernels.mhc_pre import tilelang as tl_pre

    missing = tl_pre.tilelang_missing()
    if missing:
        log(f"mhc_crossover: {missing}")
        return 2
    t0 = time.time()
    device = torch.device("cuda", torch.cuda.current_device())
    tk = tl_pre.kernels()
    arch = tk.arch_of(device.index)
    sizes = [s for s in args.sizes.split(",") if s]
    dims = [harness.PRESETS[s].hidden for s in sizes]
    seconds = {} if args.no_prewarm else tk.prewarm(prewarm_keys(arch, dims, args.prewarm_only), args.workers)
    log(f"[{time.time() - t0:6.1f}s] compiled {len(seconds)} TileLang kernels "
        f"(slowest {max(seconds.values(), default=0):.1f}s)")
    if args.prewarm_only:
        return 0

    meta = harness.environment(device)
    tokens = [int(t) for t in args.T.split(",") if t]
    cells = []
    for op_name in [o for o in args.ops.split(",") if o]:
        op = ops.get(op_name)
        impls = {p: op.providers[p].impl for p in ("triton", "tilelang")}
        for size, D in zip(sizes, dims):
            for T in tokens:
                cell = Cell(op_name, size, D, T)
                if args.budget_s is not None and time.time() - t0 > args.budget_s:
                    cell.error = "not reached within the time budget"
                else:
                    measure(cell, impls, device, args.replays, args.margin)
                cells.append(cell)
                log(f"[{time.time() - t0:6.1f}s] {op_name} {size} T={T}: triton {harness._fmt(cell.triton_us, '.2f')} "
                    f"us, tilelang {harness._fmt(cell.tilelang_us, '.2f')} us -> {cell.winner}"
                    + (f" ({cell.error})" if cell.error else ""))
    table = table_json(cells, torch.cuda.get_device_name(device), meta)
    crossover.parse_table(table, args.out or "<out>")  # never write a table the loader would refuse
    for path, payload in ((args.out, table), (args.raw, {"meta": meta, "cells": [asdict(c) for c in cells]})):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(payload, f, indent=1)
                f.write("\n")
            log(f"wrote {path}")
    print(f"{meta.get('device')}  torch {meta['torch']}  triton {meta['triton']}  commit {meta['git_commit'][:12]}")
    print(format_cells(cells))
    return 1 if any(c.error and "budget" not in c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
