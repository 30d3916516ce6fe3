"""Command line of the fused-op benchmarks: ``python -m benchmarks.ops --help``.

Loads every ``benchmarks/ops_*.py`` family module, builds the cases for the requested tokens and
presets, times them (see ``benchmarks/harness.py``), writes JSON (``--out``) and prints the table
last. Without a CUDA device it lists the cases with ``--dry-run`` and otherwise exits with a
message (status 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pkgutil
import sys

import torch

from benchmarks import harness


def load_families() -> list[str]:
    """Import every ``benchmarks/ops_*.py`` module (each registers its family); a module that fails
    to import is reported and skipped, so one broken family does not stop the others."""
    here = os.path.dirname(os.path.abspath(__file__))
    loaded = []
    for info in pkgutil.iter_modules([here]):
        if info.name.startswith("ops_"):
            try:
                importlib.import_module(f"benchmarks.{info.name}")
            except Exception as exc:
                print(f"benchmarks.ops: skipping {info.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            loaded.append(info.name)
    return loaded


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=_names, default=None,
                   help="comma list of ops or case names (e.g. mhc_pre,hc_head); default: all")
    p.add_argument("--T", type=_ints, default=None,
                   help=f"comma list of token counts (default {','.join(map(str, harness.DEFAULT_TOKENS))})")
    p.add_argument("--sizes", type=_names, default=list(harness.PRESETS),
                   help=f"comma list of presets ({','.join(harness.PRESETS)})")
    p.add_argument("--quick", action="store_true",
                   help=f"T = {','.join(map(str, harness.QUICK_TOKENS))} and fewer replays (a short GPU slot)")
    p.add_argument("--replays", type=int, default=None, help="graph replays per timing (default 50, quick 20)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--compile-all", action="store_true",
                   help="with --quick, still compile every case (quick compiles only cases with a compile goal, "
                        "at the first size: each op/preset costs two torch.compile runs)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    unknown = [s for s in args.sizes if s not in harness.PRESETS]
    if unknown:
        p.error(f"unknown sizes {unknown}; known: {', '.join(harness.PRESETS)}")
    if args.T is None:
        args.T = list(harness.QUICK_TOKENS if args.quick else harness.DEFAULT_TOKENS)
    if args.replays is None:
        args.replays = 20 if args.quick else 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    families = load_families()
    cases = harness.collect_cases(args.T, args.sizes, args.ops)
    if args.dry_run:
        print(f"families: {', '.join(families) or '-'}; {len(cases)} cases")
        for c in cases:
            print(f"  {c.name:24s} op={c.op:16s} size={c.size:6s} T={c.T}")
        return 0
    if not torch.cuda.is_available():
        print("benchmarks.ops: no CUDA device here; the benchmarks time GPU kernels under CUDA graphs. "
              "Run on a GPU machine, or use --dry-run to list the cases.", file=sys.stderr)
        return 2
    if not cases:
        print("benchmarks.ops: no case matches the selection", file=sys.stderr)
        return 2
    if args.quick and not args.compile_all:
        cases = [c if any(g.kind == "min_speedup_compile" for g in c.goals) and c.size == args.sizes[0]
                 else dataclasses.replace(c, compile=False) for c in cases]
    device = torch.device("cuda", torch.cuda.current_device())
    meta = harness.environment(device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{meta.get('device')} | torch {meta['torch']} | triton {meta['triton']} | {len(cases)} cases")
    results, copy_gbps = harness.run_all(cases, device, args.replays, not args.no_compile, log)
    if args.out:
        harness.write_json(args.out, results, copy_gbps, meta)
        log(f"wrote {args.out}")
    print(f"\n{meta.get('device')}  torch {meta['torch']}  triton {meta['triton']}  commit {meta['git_commit'][:12]}")
    print(harness.format_table(results, copy_gbps))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
