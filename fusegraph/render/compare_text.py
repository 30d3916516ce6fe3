"""Terminal rendering of ``fusegraph compare``: outputs, sites, timings, bisect, verdict."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fusegraph.render.text import Table, sci, shorten

if TYPE_CHECKING:
    from fusegraph.cli.compare import CompareResult, SiteCheck


def _status(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def _ulps(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def outputs_table(result: "CompareResult") -> Table:
    t = Table(["output", "dtype", "shape", "max abs", "rel L2", "(unfused)", "bf16 ulps", "status"])
    for c in result.outputs:
        t.add(c.name, c.dtype, "x".join(map(str, c.shape)) or "-", sci(c.max_abs), sci(c.rel_l2),
              sci(c.rel_l2_unfused), _ulps(c.ulps), _status(c.passed))
    return t


def sites_table(sites: "list[SiteCheck]", limit: int = 0) -> tuple[Table, int]:
    t = Table(["#", "pattern", "module", "provider", "outputs", "worst output", "max abs", "rel L2",
               "bf16 ulps", "status"])
    shown = sites if limit <= 0 else sites[:limit]
    for s in shown:
        w = s.worst()
        if s.error:
            t.add(s.index, s.site.pattern, s.site.module or "(root)", s.site.selection.provider, len(s.checks),
                  "-", "-", "-", "-", "FAIL")
            continue
        t.add(s.index, s.site.pattern, s.site.module or "(root)", s.site.selection.provider, len(s.checks),
              shorten(w.name, 28) if w else "-", sci(w.max_abs) if w else "-",
              sci(w.rel_l2) if w and w.rel_l2 is not None else (f"{100 * (w.mismatch or 0):.2f}% differ" if w else "-"),
              _ulps(w.ulps) if w else "-", _status(s.passed))
    return t, len(sites) - len(shown)


def render_text(result: "CompareResult", *, limit: int = 40, elapsed_s: float | None = None) -> str:
    out: list[str] = []
    tokens = f", {result.tokens} tokens" if result.tokens is not None else ""
    out.append(f"fusegraph compare: {result.report.model} on {result.device} (target {result.target}{tokens}, "
               f"seed {result.seed})")
    out.append("")
    out.append("Model outputs: fused vs unfused; rel L2 and ulps against an fp64 run of the unfused graph")
    out.append(outputs_table(result).render())
    if result.fp64_note:
        out.append(f"note: {result.fp64_note}")
    out.append("")
    out.append(f"Sites ({len(result.sites)}): the fused op on the inputs recorded at the site in the unfused run, "
               "vs the replaced subgraph; rel L2 and ulps against the op's torch reference in fp64")
    t, hidden = sites_table(result.sites, limit)
    out.append(t.render() if result.sites else "(no sites)")
    if hidden:
        out.append(f"... {hidden} more sites (--limit 0 shows all; -o DIR writes everything)")
    notes: dict[str, list[str]] = {}
    for s in result.sites:
        for n in s.notes:
            notes.setdefault(f"{s.site.pattern}: {n}", []).append(f"#{s.index}")
        for c in s.checks:
            if c.note:
                notes.setdefault(f"{s.site.pattern} output {c.name}: {c.note}", []).append(f"#{s.index}")
    for text, where in list(notes.items())[: max(limit, 10)]:
        out.append(f"note: {text} (sites {', '.join(where[:6])}{', ...' if len(where) > 6 else ''})")
    failures = [s for s in result.sites if not s.passed]
    for s in failures[: max(limit, 10)]:
        where = f"site #{s.index} {s.site.pattern} at {s.site.module or '(root)'} ({s.site.fused_node})"
        if s.error:
            out.append(f"FAIL {where}: {s.error}")
        for c in s.checks:
            if not c.passed:
                out.append(f"FAIL {where}: output {c.name}: {c.reason}")
    out.append("")
    out.append(timing_text(result))
    if result.bisect is not None:
        out.append("")
        out.append(bisect_text(result))
    out.append("")
    n_bad_out = sum(not c.passed for c in result.outputs)
    n_bad_site = len(failures)
    took = f" ({elapsed_s:.1f} s)" if elapsed_s is not None else ""
    if n_bad_out == 0 and n_bad_site == 0:
        out.append(f"PASS: {len(result.outputs)} model output(s) and {len(result.sites)} site(s) within tolerance{took}")
    else:
        out.append(f"FAIL: {n_bad_out} of {len(result.outputs)} model output(s) and {n_bad_site} of "
                   f"{len(result.sites)} site(s) out of tolerance{took}")
    return "\n".join(out) + "\n"


def timing_text(result: "CompareResult") -> str:
    if result.timing_fused is None or result.timing_unfused is None:
        return f"Timing: {result.timing_note or 'skipped'}"
    u, f = result.timing_unfused, result.timing_fused
    t = Table(["", "median ms", "min ms", "launches/forward", "CUDA graph ms"], title="Timing (CUDA events)")
    for name, tm in (("unfused", u), ("fused", f)):
        t.add(name, f"{tm.median_ms:.3f}", f"{tm.min_ms:.3f}", "n/a" if tm.launches is None else tm.launches,
              "n/a" if tm.graph_median_ms is None else f"{tm.graph_median_ms:.3f}")
    lines = [t.render(), f"speedup: {u.median_ms / f.median_ms:.2f}x eager" if f.median_ms else ""]
    if u.graph_median_ms and f.graph_median_ms:
        lines.append(f"speedup: {u.graph_median_ms / f.graph_median_ms:.2f}x with CUDA graphs")
    for name, tm in (("unfused", u), ("fused", f)):
        if tm.graph_note:
            lines.append(f"{name} CUDA graph: {tm.graph_note}")
    return "\n".join(x for x in lines if x)


def bisect_text(result: "CompareResult") -> str:
    b = result.bisect
    assert b is not None
    steps = ", ".join(f"fuel={k}:{'ok' if ok else 'FAIL'}" for k, ok in b.steps)
    if b.culprit is None:
        return f"Bisect: {b.note} [{steps}]"
    s = b.site
    where = f"{s.pattern} -> {s.op} at {s.module or '(root)'} (fused node {s.fused_node}, anchor {s.anchor}, " \
            f"provider {s.selection.provider})" if s else "?"
    lines = [f"Bisect: first bad site is #{b.culprit}: {where}"]
    if b.failing is not None:
        lines.append(f"  fusing it pushes model {b.failing.name} past tolerance: {b.failing.reason}")
    lines.append(f"  steps: {steps}")
    return "\n".join(lines)
