"""Terminal rendering of ``fusegraph report``.

Sections, most useful first: a one-line verdict, matches per pattern against the expected DSV4
set, coverage weighted by bytes and launches (per layer and total), the provider chosen per pattern
with the reason each other provider was passed over, the warm-up (``--warmup``: the variants warmed,
or the plan; ``render/warmup_text.py``), the sites (module path and node names), and the near misses
with the first divergent node and its source line.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fusegraph.records import MatchSite
from fusegraph.render.text import Table, compress_paths, human_bytes, pct, shorten
from fusegraph.render.warmup_text import warmup_text

if TYPE_CHECKING:
    from fusegraph.cli.report import ReportResult


def _limited(items: list, limit: int) -> tuple[list, int]:
    if limit <= 0 or len(items) <= limit:
        return items, 0
    return items[:limit], len(items) - limit


def _more(hidden: int, what: str) -> str:
    return f"... {hidden} more {what} (--limit 0 shows all, --format json/html has everything)" if hidden else ""


def short_source(source: str | None) -> str:
    """'/long/path/models/mhc.py:42: y = x * w' -> 'models/mhc.py:42: y = x * w'."""
    if not source:
        return ""
    path, sep, rest = source.partition(":")
    parts = path.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:]) + sep + rest


def provider_summary(sites: list[MatchSite]) -> list[tuple[str, list[tuple[str, str]], int]]:
    """Distinct (provider, rejections) choices among ``sites`` with their counts, most common first."""
    counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for s in sites:
        key = (s.selection.provider, tuple((r.provider, r.reason) for r in s.selection.rejected))
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return [(prov, list(rej), n) for (prov, rej), n in ordered]


def render_text(result: "ReportResult", *, limit: int = 20) -> str:
    rep = result.report
    out: list[str] = []
    where = "meta device, planning only" if result.device == "meta" else result.device
    tokens = f", {result.tokens} tokens" if result.tokens is not None else ""
    out.append(f"fusegraph report: {rep.model}  target {rep.target}  ({where}{tokens}, capture {rep.capture})")
    if rep.capture_note:
        lines = rep.capture_note.strip().splitlines()
        more = " (full note: --format json)" if len(lines) > 1 else ""
        out.append(f"capture note: {shorten(lines[0], 160)}{more}")
    out.append(headline(result))
    out.append("")

    # -- matches vs expected ------------------------------------------------------------------------
    counts = rep.counts()
    by_pattern: dict[str, list[MatchSite]] = {}
    for s in rep.sites:
        by_pattern.setdefault(s.pattern, []).append(s)
    patterns = list(by_pattern) + [p for p in rep.expected if p not in by_pattern]
    t = Table(["pattern", "fused op", "sites", "expected", "status", "modules"], title="Matches")
    for p in patterns:
        sites = by_pattern.get(p, [])
        expected = rep.expected.get(p)
        matched = counts.get(p, 0)
        status = "" if expected is None else ("ok" if matched >= expected else f"SHORT by {expected - matched}")
        op = sites[0].op if sites else ""
        t.add(p, op, matched, "" if expected is None else expected, status,
              compress_paths([s.module for s in sites], limit=3))
    out.append(t.render() if patterns else "Matches\n(none)")
    if rep.expected:
        short = rep.shortfall()
        out.append("expected DSV4 match set: " + ("all matched" if not short else
                   f"WARNING: {len(short)} pattern(s) short: " +
                   "; ".join(f"{p} {m}/{e}" for p, (e, m) in sorted(short.items()))))
    else:
        out.append("expected DSV4 match set: none known for this model")
    out.append("")

    # -- coverage ---------------------------------------------------------------------------------------
    out.append(coverage_text(result, limit))
    out.append("")

    # -- providers ------------------------------------------------------------------------------------
    out.append(f"Providers on {rep.target} (chosen, and why each other provider was passed over)")
    if not by_pattern:
        out.append("(no sites)")
    for p, sites in by_pattern.items():
        for provider, rejected, n in provider_summary(sites):
            out.append(f"  {p} -> {sites[0].op}: {provider} on {n} site{'s' * (n != 1)}")
            for prov, reason in rejected:
                out.append(f"      rejected {prov}: {shorten(reason, 110)}")
    out.append("")

    # -- warm-up (--warmup) -------------------------------------------------------------------------------
    warm = warmup_text(rep.warmup_plan, rep.warm, limit)
    if warm:
        out.append(warm)
        out.append("")

    # -- sites ----------------------------------------------------------------------------------------
    t = Table(["#", "pattern", "module", "anchor", "fused node", "replaced", "provider"], title="Sites")
    rows, hidden = _limited(list(enumerate(rep.sites)), limit)
    for i, s in rows:
        t.add(i, s.pattern, s.module or "(root)", s.anchor, s.fused_node,
              f"{len(s.replaced)} nodes", s.selection.provider)
    out.append(t.render() if rep.sites else "Sites\n(none)")
    if hidden:
        out.append(_more(hidden, "sites"))
    out.append("")

    # -- near misses ----------------------------------------------------------------------------------
    misses = rep.near_misses
    t = Table(["pattern", "module", "kind", "first divergent node", "source", "reason"],
              title=f"Near misses ({len(misses)})", max_width=70)
    rows, hidden = _limited(misses, limit)
    for m in rows:
        t.add(m.pattern, m.module or "(root)", m.kind, m.divergent_node or "-",
              shorten(short_source(m.source), 50) or "-", m.reason)
    out.append(t.render() if misses else "Near misses (0): none")
    if hidden:
        out.append(_more(hidden, "near misses"))

    if result.warnings:
        out.append("")
        out.extend(f"WARNING: {w}" for w in result.warnings)
    return "\n".join(out) + "\n"


def headline(result: "ReportResult") -> str:
    n = len(result.report.sites)
    if result.coverage is None:
        return f"{n} sites fused (coverage not available: no captured graph to weigh)"
    cov = result.coverage.total
    return (f"{n} sites fused; {pct(cov.bytes_share)} of estimated HBM bytes and {pct(cov.launches_share)} of "
            f"kernel launches now run in fused kernels; saves ~{human_bytes(cov.bytes_saved)} and "
            f"{cov.launches_saved} launches per forward.")


def coverage_text(result: "ReportResult", limit: int) -> str:
    title = "Coverage (estimated; share of the unfused graph now inside fused kernels)"
    if result.coverage is None:
        return f"{title}\nnot available: the model was not captured as one graph (see the capture note)"
    t = Table(["scope", "sites", "ops fused", "bytes fused", "launches fused", "bytes saved", "launches saved"],
              title=title)
    rows, hidden = _limited(result.coverage.layers, limit)
    for r in rows + [result.coverage.total]:
        t.add(r.scope, r.sites, f"{r.ops_fused}/{r.ops} ({pct(r.ops_share)})",
              f"{human_bytes(r.bytes_fused)} ({pct(r.bytes_share)})",
              f"{r.launches_fused}/{r.launches} ({pct(r.launches_share)})",
              human_bytes(r.bytes_saved), r.launches_saved)
    text = t.render()
    return text + ("\n" + _more(hidden, "layers") if hidden else "")


def render_summary(result: "ReportResult") -> str:
    """The short form used by ``fusegraph demo``: matches vs expected and total coverage."""
    rep = result.report
    counts = rep.counts()
    t = Table(["pattern", "fused op", "sites", "expected", "provider"])
    by_pattern: dict[str, list[MatchSite]] = {}
    for s in rep.sites:
        by_pattern.setdefault(s.pattern, []).append(s)
    for p in list(by_pattern) + [p for p in rep.expected if p not in by_pattern]:
        sites = by_pattern.get(p, [])
        providers = sorted({s.selection.provider for s in sites})
        t.add(p, sites[0].op if sites else "", counts.get(p, 0), rep.expected.get(p, ""), ",".join(providers))
    lines = [t.render(), f"{headline(result)} {len(rep.near_misses)} near misses."]
    if rep.capture != "symbolic_trace" and rep.capture_note:
        lines.append(f"capture: {rep.capture}: {shorten(rep.capture_note.strip().splitlines()[0], 160)}")
    short = rep.shortfall()
    if short:
        lines.append("WARNING: short of the expected DSV4 set: " +
                     "; ".join(f"{p} {m}/{e}" for p, (e, m) in sorted(short.items())))
    elif rep.expected:
        lines.append("expected DSV4 match set: all matched")
    return "\n".join(lines) + "\n"
