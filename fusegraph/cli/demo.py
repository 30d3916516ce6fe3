"""``fusegraph demo``: the main job on the built-in presets, for README's first command.

1. ``tiny`` on the CPU: compile, run fused and unfused, compare (model outputs and every site).
2. ``flash`` and ``pro`` on the meta device, planned for sm90: what matched against the expected DSV4
   set, which kernel each pattern gets, coverage by bytes and launches.

Short tables only; ``fusegraph report`` / ``fusegraph compare`` give the full story.
"""
from __future__ import annotations

import argparse
import sys
import time

from fusegraph.cli import model_source
from fusegraph.cli.compiling import CompileFn, default_compile
from fusegraph.cli.errors import EXIT_CHECK_FAILED, EXIT_OK
from fusegraph.cli.progress import Progress


def run(args: argparse.Namespace, compile_fn: CompileFn | None = None) -> int:
    from fusegraph.cli import compare, report
    from fusegraph.render.compare_text import outputs_table, sites_table
    from fusegraph.render.report_text import render_summary

    compile_fn = compile_fn or default_compile()
    start = time.monotonic()
    ok = True
    out = sys.stdout

    out.write("== 1. tiny on the CPU: fused vs unfused ==\n")
    source = model_source.load("tiny", tokens=args.tokens, seed=0, device="cpu")
    progress = Progress("checking tiny", enabled=not args.quiet)
    compiled = report.compile_source(source, "cpu", compile_fn, quiet=args.quiet)
    if getattr(compiled, "unfused", None) is None:
        note = (compiled.report.capture_note or "").strip().splitlines()
        out.write(f"FAIL: tiny was not captured as one graph ({note[0] if note else 'no note'})\n")
        ok = False
    else:
        result = compare.compare_compiled(compiled, source, "cpu", progress)
        progress.close()
        out.write(outputs_table(result).render() + "\n")
        t, hidden = sites_table(result.sites, limit=12)
        out.write(t.render() + "\n")
        if hidden:
            out.write(f"... {hidden} more sites (fusegraph compare tiny --limit 0)\n")
        n_bad = sum(not s.passed for s in result.sites) + sum(not c.passed for c in result.outputs)
        out.write(("PASS: every output and site within tolerance\n" if n_bad == 0 else
                   f"FAIL: {n_bad} output(s)/site(s) out of tolerance (fusegraph compare tiny for details)\n"))
        ok &= n_bad == 0
    out.flush()

    for name in args.presets:
        out.write(f"\n== {name} planned for {args.target} (meta device, no GPU needed) ==\n")
        src = model_source.load(name, tokens=None, seed=0)
        t0 = time.monotonic()
        compiled = report.compile_source(src, args.target, compile_fn, quiet=args.quiet)
        res = report.build(compiled, src, elapsed_s=time.monotonic() - t0)
        out.write(render_summary(res))
        out.write(f"({res.elapsed_s:.1f} s; full report: fusegraph report {name} --target {args.target})\n")
        out.flush()

    out.write(f"\ndemo finished in {time.monotonic() - start:.1f} s\n")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="sm90", choices=("sm80", "sm90", "sm100", "rocm", "cpu"),
                   help="target flash and pro are planned for (default sm90)")
    p.add_argument("--presets", nargs="*", default=["flash", "pro"], choices=model_source.PRESETS[1:],
                   help="large presets to plan (default: flash pro)")
    p.add_argument("--tokens", type=int, default=None, metavar="T", help="tokens for tiny's inputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
