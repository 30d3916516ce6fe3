"""``DIR/compare.html``: the compare results and, per site, the unfused and fused graphs side by side.

One self-contained file: the SVG drawings are inlined (``fusegraph.render.graph_svg``), with the
per-site verdict as the heading of each pair, so a failing site shows its numbers next to the
nodes it replaced.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusegraph.render.graph_svg import STYLE, describe_engine, render_svg, site_views
from fusegraph.render.html import esc, page, table
from fusegraph.render.text import sci

if TYPE_CHECKING:
    from fusegraph.cli.compare import CompareResult

MAX_DIFFS = 60  # graph pairs drawn; the rest are listed


def _status(ok: bool) -> str:
    return '<span class="ok">ok</span>' if ok else '<span class="bad">FAIL</span>'


def render_html(result: "CompareResult", compiled: Any, engine: str = "auto") -> str:
    parts: list[str] = []
    ok = result.passed
    parts.append(f"<h1>fusegraph compare: {esc(result.report.model)} {_status(ok)}</h1>")
    tokens = f"{result.tokens} tokens &middot; " if result.tokens is not None else ""
    parts.append(f'<div class="sub">{esc(result.device)} &middot; target {esc(result.target)} &middot; '
                 f"{tokens}seed {esc(result.seed)}</div>")

    parts.append("<h2>Model outputs</h2><p>Fused vs unfused; rel L2 and bf16 ulps against an fp64 run of the "
                 "unfused graph.</p>")
    parts.append(table(["output", "dtype", "shape", "max abs", "rel L2", "rel L2 unfused", "bf16 ulps", "status",
                        "why"],
                       [[c.name, c.dtype, "x".join(map(str, c.shape)), sci(c.max_abs), sci(c.rel_l2),
                         sci(c.rel_l2_unfused), sci(c.ulps), _status(c.passed), c.reason] for c in result.outputs],
                       numeric=(3, 4, 5, 6), raw=(7,)))
    if result.fp64_note:
        parts.append(f'<div class="warn">{esc(result.fp64_note)}</div>')

    parts.append(f"<h2>Sites ({len(result.sites)})</h2>")
    rows = []
    for s in result.sites:
        for c in s.checks or []:
            rows.append([s.index, s.site.pattern, s.site.module or "(root)", s.site.selection.provider, c.name,
                         c.dtype, sci(c.max_abs), sci(c.rel_l2), sci(c.ulps), _status(c.passed),
                         "; ".join(x for x in (c.reason, c.note) if x)])
        if s.error or s.notes:
            rows.append([s.index, s.site.pattern, s.site.module, s.site.selection.provider, "-", "-", "-", "-", "-",
                         _status(not s.error), "; ".join([s.error] * bool(s.error) + s.notes)])
    parts.append(table(["#", "pattern", "module", "provider", "output", "dtype", "max abs", "rel L2", "bf16 ulps",
                        "status", "why / how compared"], rows, numeric=(0, 6, 7, 8), raw=(9,)))

    if result.timing_fused is not None and result.timing_unfused is not None:
        u, f = result.timing_unfused, result.timing_fused
        parts.append("<h2>Timing</h2>")
        parts.append(table(["", "median ms", "min ms", "launches", "CUDA graph ms"],
                           [[n, f"{t.median_ms:.3f}", f"{t.min_ms:.3f}", t.launches,
                             "n/a" if t.graph_median_ms is None else f"{t.graph_median_ms:.3f}"]
                            for n, t in (("unfused", u), ("fused", f))], numeric=(1, 2, 3, 4)))
    else:
        parts.append(f"<h2>Timing</h2><p>{esc(result.timing_note)}</p>")

    if result.bisect is not None:
        b = result.bisect
        parts.append("<h2>Bisect</h2>")
        if b.culprit is None:
            parts.append(f"<p>{esc(b.note)}</p>")
        else:
            s = b.site
            parts.append(f"<p>First bad site: <b>#{b.culprit}</b> {esc(s.pattern if s else '?')} at "
                         f"<code>{esc(s.module if s else '?')}</code> (fused node <code>{esc(s.fused_node if s else '?')}</code>)"
                         + (f": {esc(b.failing.name)} {esc(b.failing.reason)}" if b.failing else "") + "</p>")
        parts.append("<p>" + ", ".join(f"fuel={k}: {'ok' if good else 'FAIL'}" for k, good in b.steps) + "</p>")

    parts.append("<h2>Graph diff</h2>")
    legend = "".join(f'<span style="background:{STYLE[k][0]};border:1px solid {STYLE[k][1]}">{label}</span>'
                     for k, label in (("removed", "removed by the rewrite"), ("fused", "fused call added"),
                                      ("boundary", "values in / out (same names in both graphs)"),
                                      ("folded", "folded stretch of removed nodes")))
    parts.append(f'<p class="legend">{legend}</p><p>Layout: {esc(describe_engine(engine))}.</p>')
    unfused = getattr(compiled, "unfused", None)
    fused = getattr(compiled, "fused", None)
    for s in result.sites[:MAX_DIFFS]:
        site = s.site
        heading = (f"#{s.index} {esc(site.pattern)} &rarr; {esc(site.op)} at <code>{esc(site.module or '(root)')}</code> "
                   f"[{esc(site.selection.provider)}] {_status(s.passed)}")
        if unfused is None:
            parts.append(f"<h3>{heading}</h3><p>graphs not available</p>")
            continue
        left, right = site_views(unfused, fused, site)
        parts.append(f'<section class="site" id="site-{s.index}"><h3>{heading}</h3><div class="pair">'
                     f"<figure><figcaption>{esc(left.title)}</figcaption>{render_svg(left, engine)}</figure>"
                     f"<figure><figcaption>{esc(right.title)}</figcaption>{render_svg(right, engine)}</figure>"
                     "</div></section>")
    if len(result.sites) > MAX_DIFFS:
        parts.append(f"<p>{len(result.sites) - MAX_DIFFS} more sites not drawn.</p>")
    title = f"fusegraph compare: {result.report.model} ({'pass' if ok else 'FAIL'})"
    return page(title, "\n".join(parts))
