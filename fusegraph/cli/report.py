"""``fusegraph report MODEL``: what the compiler matched, where, with which kernel, and what it missed.

The data comes from ``compiled.report`` (``fusegraph.records.CompileReport``) plus a cost-weighted
coverage computed here from the unfused and fused graphs (``fusegraph.cost``): the share of the
model's estimated HBM bytes and kernel launches that now run inside fused kernels, per layer and
in total. The expected DSV4 match set is checked against what matched; a shortfall is a warning,
or exit code 1 with ``--strict``.

Planning needs no GPU: a report for ``--target sm90`` runs on a laptop, on meta-device models.

``--warmup MAX_TOKENS`` adds the warm-up (``fusegraph.warmup``): where this machine can run the
target (``cpu``, or its own GPU's target) every kernel variant up to MAX_TOKENS tokens is compiled
and the report shows which are warm; elsewhere it shows the plan (which provider the dispatcher
picks per op and T bucket, made on meta tensors) and says that nothing was compiled.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from fusegraph import cost, targets
from fusegraph.cli import model_source
from fusegraph.cli.compiling import (CompileFn, default_compile, forced_providers, parse_providers,
                                     parse_target, run_compile)
from fusegraph.cli.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
from fusegraph.cli.outputs import check_output_file, write_text
from fusegraph.cli.progress import Progress
from fusegraph.records import CompileReport

SCHEMA = "fusegraph.report/1"
FORMATS = ("text", "json", "html")


@dataclass
class ReportResult:
    """Everything ``report`` prints, in every format."""

    source: str                       # MODEL as given
    device: str                       # "cpu", "cuda", "meta" (planning only)
    tokens: int | None
    report: CompileReport
    coverage: cost.Coverage | None        # None: no captured graph to weigh (torch.compile fallback)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def shortfall(self) -> dict[str, tuple[int, int]]:
        return self.report.shortfall()

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape (docs/report-json.md): CompileReport.as_dict() plus coverage."""
        d = self.report.as_dict()
        d["schema"] = SCHEMA
        d["source"] = self.source
        d["device"] = self.device
        d["tokens"] = self.tokens
        d["coverage"] = self.coverage.as_dict() if self.coverage else None
        d["warnings"] = list(self.warnings)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def _expected_for(model: Any) -> dict[str, int]:
    try:
        from fusegraph.expected import expected_sites
    except ImportError:
        return {}
    try:
        return dict(expected_sites(model))
    except Exception as exc:  # an unknown model is not an error; a broken table is worth a warning
        print(f"fusegraph: warning: expected_sites failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {}


def warnings_for(report: CompileReport) -> list[str]:
    out = []
    for pattern, (expected, matched) in sorted(report.shortfall().items()):
        out.append(f"{pattern}: expected {expected} site{'s' * (expected != 1)}, matched {matched}")
    if not report.sites:
        out.append("nothing matched: no fused kernel will run")
    return out


def build(compiled: Any, source: model_source.ModelSource, elapsed_s: float = 0.0) -> ReportResult:
    report: CompileReport = compiled.report
    if not report.expected:
        report.expected = _expected_for(source.model)
    if not report.model or report.model == type(source.model).__name__:
        report.model = source.name
    unfused = getattr(compiled, "unfused", None)
    fused = getattr(compiled, "fused", None)
    if unfused is not None:
        cov = cost.coverage(unfused, report.sites, fused)
    else:  # the torch.compile fallback keeps no graph of the whole model
        cov = None
    return ReportResult(source=source.spec, device=source.device.type, tokens=source.tokens, report=report,
                        coverage=cov, warnings=warnings_for(report), elapsed_s=elapsed_s)


def compile_source(source: model_source.ModelSource, target: str, compile_fn: CompileFn,
                   *, quiet: bool = False, fuel: int | None = None) -> Any:
    progress = Progress(f"matching {source.name} for {target}", enabled=not quiet)
    progress.note(f"fusegraph: compiling {source.name} for {target}"
                  + (" (meta device: planning only)" if source.planning_only else ""))
    try:
        compiled = run_compile(compile_fn, source, target, progress=progress, fuel=fuel)
    finally:
        progress.close()
    report = getattr(compiled, "report", None)
    if report is not None and report.capture == "dynamo" and not report.sites and not source.planning_only:
        # The torch.compile fallback fuses graphs when they first run: run once so the report fills.
        progress.note("fusegraph: running once so that the torch.compile fallback fuses its graphs")
        import torch

        from fusegraph.cli.numerics import clone_value
        with torch.no_grad():
            compiled(*clone_value(source.inputs))
    return compiled


def warmup_device(target: str) -> tuple[Any, str]:
    """(device to warm up on, "") where this machine runs ``target``; else (None, why not)."""
    import torch

    if target == "cpu":
        return torch.device("cpu"), ""
    here = targets.detect()
    if here == target:
        return torch.device("cuda", torch.cuda.current_device()), ""
    has = "only a CPU" if here == "cpu" else f"a {here} GPU"
    return None, f"nothing compiled: this machine has {has}, no {target} GPU"


def warm_up(compiled: Any, target: str, max_tokens: int, *, quiet: bool = False) -> list[str]:
    """Plan the warm-up for ``target`` and, where this machine runs it, warm up; both land in
    ``compiled.report`` (``warmup_plan``, ``warm``). Returns warnings (failed variants)."""
    from fusegraph import warmup

    device, why_not = warmup_device(target)
    try:
        if device is None:
            warmup.plan(compiled, max_tokens, target=target, note=why_not)
            return []
        # on the target's own device the gates see the real GPU, as at run time
        warmup.plan(compiled, max_tokens, target=target, device=device)
    except TypeError as exc:  # the torch.compile fallback keeps no fused call sites to rebuild
        return [f"warm-up: not available for this model ({exc})"]
    progress = Progress(f"warming up up to {max_tokens} tokens on {device}", enabled=not quiet)
    try:
        done = warmup.warmup(compiled, max_tokens, progress=progress, device=device)
    finally:
        progress.close()
    return [f"warm-up: {f.op} ({f.provider}) T={f.tokens} failed: {f.error}" for f in done.failed()]


def run(args: argparse.Namespace, compile_fn: CompileFn | None = None) -> int:
    out_path = check_output_file(args.output) if args.output else None
    target = parse_target(args.target)
    forced = parse_providers(getattr(args, "provider", None))
    max_tokens = getattr(args, "warmup", None)
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--warmup takes MAX_TOKENS >= 1, got {max_tokens}")
    source = model_source.load(args.model, tokens=args.tokens, seed=args.seed)
    start = time.monotonic()
    with forced_providers(forced):
        compiled = compile_source(source, target, compile_fn or default_compile(), quiet=args.quiet)
        warm_warnings = warm_up(compiled, target, max_tokens, quiet=args.quiet) if max_tokens else []
    result = build(compiled, source, elapsed_s=time.monotonic() - start)
    result.warnings += warm_warnings
    text = render(result, args.format, limit=args.limit)
    if out_path:
        write_text(out_path, text)
        if not args.quiet:
            print(f"fusegraph: wrote {args.format} report to {out_path}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if out_path or args.format != "text":  # text on stdout already ends with the warnings
        for w in result.warnings:
            print(f"fusegraph: warning: {w}", file=sys.stderr)
    if args.strict and result.shortfall:
        print(f"fusegraph: --strict: {len(result.shortfall)} pattern(s) matched fewer sites than expected",
              file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def render(result: ReportResult, fmt: str, *, limit: int = 20) -> str:
    if fmt == "json":
        from fusegraph.render.jsonout import dumps

        return dumps(result.as_dict())
    if fmt == "html":
        from fusegraph.render.report_html import render_html

        return render_html(result)
    if fmt == "text":
        from fusegraph.render.report_text import render_text

        return render_text(result, limit=limit)
    raise UsageError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a preset (tiny, flash, pro) or package.module:factory returning (model, example_inputs)")
    p.add_argument("--target", default="auto", choices=("auto", "sm80", "sm90", "sm100", "rocm", "cpu"),
                   help="hardware to plan for (default: this machine); planning needs no GPU")
    p.add_argument("--format", default="text", choices=FORMATS, help="output format (default: text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a pattern matched fewer sites than the expected DSV4 set")
    p.add_argument("--tokens", type=int, metavar="T", help="tokens in the example inputs")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--provider", action="append", metavar="OP=NAME[,NAME]",
                   help="force the provider order of a fused op (repeatable; '*' for all ops)")
    p.add_argument("--warmup", type=int, metavar="MAX_TOKENS",
                   help="warm up every kernel variant up to MAX_TOKENS tokens and show which are warm; "
                        "without the target's GPU here, show the warm-up plan (nothing is compiled)")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="rows per table in text output (default 20, 0 = all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
