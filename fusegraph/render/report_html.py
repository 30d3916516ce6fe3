"""One self-contained HTML page for ``fusegraph report --format html``.

Same content as the text report, without truncation: every site with every replaced node name,
every provider rejection, every near miss with its source line, and (``--warmup``) the warm-up:
warm variants and failures, or the plan with every bucket's choice. Long lists fold with
``<details>``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fusegraph.records import CompileReport, MatchSite
from fusegraph.render.html import bar, esc, page, table
from fusegraph.render.report_text import provider_summary
from fusegraph.render.text import compress_paths, human_bytes
from fusegraph.render.warmup_text import bucket_ranges, gates_summary, passed_over_summary, plan_mismatches

if TYPE_CHECKING:
    from fusegraph.cli.report import ReportResult


def render_html(result: "ReportResult") -> str:
    rep = result.report
    cov = result.coverage
    parts: list[str] = []
    where = "meta device, planning only" if result.device == "meta" else result.device
    parts.append(f"<h1>fusegraph report: {esc(rep.model)}</h1>")
    tokens = f"{result.tokens} tokens &middot; " if result.tokens is not None else ""
    parts.append(f'<div class="sub">target <b>{esc(rep.target)}</b> &middot; {esc(where)} &middot; '
                 f"{tokens}capture {esc(rep.capture)}"
                 + (f" ({esc(rep.capture_note)})" if rep.capture_note else "") + "</div>")
    for w in result.warnings:
        parts.append(f'<div class="warn">Warning: {esc(w)}</div>')

    by_pattern: dict[str, list[MatchSite]] = {}
    for s in rep.sites:
        by_pattern.setdefault(s.pattern, []).append(s)
    counts = rep.counts()
    rows = []
    for p in list(by_pattern) + [p for p in rep.expected if p not in by_pattern]:
        sites = by_pattern.get(p, [])
        exp = rep.expected.get(p)
        got = counts.get(p, 0)
        status = "" if exp is None else ('<span class="ok">ok</span>' if got >= exp
                                         else f'<span class="bad">short by {exp - got}</span>')
        rows.append([p, sites[0].op if sites else "", got, "" if exp is None else exp, status,
                     compress_paths([s.module for s in sites])])
    parts.append("<h2>Matches</h2>")
    parts.append(table(["pattern", "fused op", "sites", "expected", "status", "modules"], rows,
                       numeric=(2, 3), raw=(4,)))

    parts.append("<h2>Coverage</h2><p>Estimated share of the unfused graph now inside fused kernels "
                 "(HBM bytes read + written per op, one launch per compute op).</p>")
    crow = []
    for r in (cov.layers + [cov.total]) if cov else []:
        crow.append([r.scope, r.sites, f"{r.ops_fused}/{r.ops}", bar(r.ops_share),
                     f"{human_bytes(r.bytes_fused)} / {human_bytes(r.bytes)}", bar(r.bytes_share),
                     f"{r.launches_fused}/{r.launches}", bar(r.launches_share),
                     human_bytes(r.bytes_saved), r.launches_saved])
    parts.append(table(["scope", "sites", "ops", "ops share", "bytes", "bytes share", "launches",
                        "launch share", "bytes saved", "launches saved"], crow,
                       numeric=(1, 2, 4, 6, 8, 9), raw=(3, 5, 7)) if cov else
                 "<p>Not available: the model was not captured as one graph (see the capture note).</p>")

    parts.append(f"<h2>Providers on {esc(rep.target)}</h2>")
    prow = []
    for p, sites in by_pattern.items():
        for provider, rejected, n in provider_summary(sites):
            rej = "<br>".join(f"<b>{esc(a)}</b>: {esc(b)}" for a, b in rejected) or "&ndash;"
            prow.append([p, sites[0].op, f"<b>{esc(provider)}</b>", n, rej])
    parts.append(table(["pattern", "fused op", "provider", "sites", "rejected (why)"], prow,
                       numeric=(3,), raw=(2, 4)))

    parts.extend(warmup_html(rep))

    parts.append(f"<h2>Sites ({len(rep.sites)})</h2>")
    for p, sites in by_pattern.items():
        srows = []
        for s in sites:
            nodes = ", ".join(s.replaced)
            srows.append([s.module or "(root)", f"<code>{esc(s.anchor)}</code>", f"<code>{esc(s.fused_node)}</code>",
                          s.selection.provider,
                          f"<details><summary>{len(s.replaced)} nodes</summary><code>{esc(nodes)}</code></details>",
                          "<br>".join(f"{esc(k)} &larr; <code>{esc(v)}</code>" for k, v in s.inputs.items()),
                          "<br>".join(f"{esc(k)} &rarr; <code>{esc(v)}</code>" for k, v in s.outputs.items())])
        parts.append(f"<details open><summary><b>{esc(p)}</b> &rarr; {esc(sites[0].op)}: {len(sites)} sites"
                     "</summary>")
        parts.append(table(["module", "anchor", "fused node", "provider", "replaced", "inputs", "outputs"],
                           srows, raw=(1, 2, 4, 5, 6)))
        parts.append("</details>")

    parts.append(f"<h2>Near misses ({len(rep.near_misses)})</h2>")
    mrows = [[m.pattern, m.module or "(root)", m.kind, f"<code>{esc(m.divergent_node or '-')}</code>",
              f"<code>{esc(m.source or '-')}</code>", m.reason, f"{100 * m.matched_fraction:.0f}%"]
             for m in rep.near_misses]
    parts.append(table(["pattern", "module", "kind", "first divergent node", "source", "reason", "matched"],
                       mrows, numeric=(6,), raw=(3, 4)) if mrows else "<p>None.</p>")

    if rep.timings:
        parts.append("<h2>Compile timings</h2>")
        parts.append(table(["stage", "seconds"], [[k, f"{v:.3f}"] for k, v in rep.timings.items()], numeric=(1,)))
    return page(f"fusegraph report: {rep.model} ({rep.target})", "\n".join(parts))


def warmup_html(rep: CompileReport) -> list[str]:
    """The warm-up section: warm variants (after a warm-up) and the plan (always, when made)."""
    plan, warm = rep.warmup_plan, rep.warm
    if plan is None and warm is None:
        return []
    parts = ["<h2>Warm-up</h2>"]
    if warm is not None:
        verdict = ('<span class="ok">all compiled</span>' if warm.ok
                   else f'<span class="bad">{len(warm.failures)} failed</span>')
        parts.append(f"<p>On <b>{esc(warm.device)}</b> ({esc(warm.target)}): T buckets "
                     f"<code>{esc(','.join(map(str, warm.buckets)))}</code>, {warm.calls} calls in "
                     f"{warm.seconds:.1f} s: {verdict}.</p>")
        rows = [[v.op, f"<b>{esc(v.provider)}</b>", bucket_ranges(v.tokens, warm.buckets), v.sites,
                 "" if v.seconds is None else f"{v.seconds:.2f}"] for v in warm.variants]
        parts.append(table(["op", "provider", "warm T buckets", "sites", "seconds"], rows, numeric=(3, 4), raw=(1,)))
        if warm.failures:
            frows = [[f.op, f.provider, f.tokens, f.sites, f.error] for f in warm.failures]
            parts.append(table(["op", "provider", "T", "sites", "error"], frows, numeric=(2, 3)))
        if plan is not None and plan.buckets == warm.buckets:
            differ = plan_mismatches(plan, warm)
            parts.append(f'<div class="warn">Differs from the plan at: {esc("; ".join(differ))}</div>' if differ
                         else f"<p>Every choice matches the plan made on {esc(plan.planned_on)}.</p>")
    if plan is not None:
        parts.append(f"<h3>Plan for {esc(plan.target)} (made on {esc(plan.planned_on)} tensors)</h3>")
        if plan.note:
            parts.append(f"<p>{esc(plan.note)}</p>")
        prow = []
        for v in plan.variants:
            why = "<br>".join(f"<b>{esc(n)}</b>: {esc(r)}" + (f" (+{k - 1} other reasons by T)" if k > 1 else "")
                              for n, r, k in passed_over_summary(plan.steps, v.op, v.provider)) or "&ndash;"
            prow.append([v.op, f"<b>{esc(v.provider)}</b>", bucket_ranges(v.tokens, plan.buckets), v.sites, why])
        parts.append(table(["op", "provider", "T buckets", "sites", "passed over (why)"], prow,
                           numeric=(3,), raw=(1, 4)))
        if plan.unavailable_here:
            items = "".join(f"<li><b>{esc(u.provider)}</b> for {esc(u.op)}: {esc(u.reason)}; its argument gates "
                            f"{esc(gates_summary(u, plan.buckets))}</li>" for u in plan.unavailable_here)
            parts.append(f"<p>Not usable on this machine; a {esc(plan.target)} machine that has them may "
                         f"choose them where their argument gates accept the call:</p><ul>{items}</ul>")
        for t in plan.tables:
            trows = [[v.op, v.provider, bucket_ranges(v.tokens, plan.buckets), v.sites] for v in t.variants]
            parts.append(f"<p>On <b>{esc(t.device)}</b> ({esc(t.table)}, {esc(t.status)}), where "
                         f"{esc(t.provider)} is installed, the crossover table picks:</p>")
            if trows:
                parts.append(table(["op", "provider", "T buckets", "sites"], trows, numeric=(3,)))
            if t.notes:
                parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in t.notes) + "</ul>")
        srows = [[s.op, s.tokens, esc(s.provider) or "&ndash;", s.sites,
                  "<br>".join(f"<b>{esc(r.provider)}</b>: {esc(r.reason)}" for r in s.passed_over) or esc(s.error)
                  or "&ndash;"] for s in plan.steps]
        parts.append(f"<details><summary>every bucket ({len(plan.steps)} choices)</summary>"
                     + table(["op", "T", "provider", "sites", "passed over (why)"], srows,
                             numeric=(1, 3), raw=(2, 4)) + "</details>")
    return parts
