"""Terminal rendering of the warm-up records (``CompileReport.warmup_plan`` and ``.warm``).

One section, shown by ``fusegraph report --warmup MAX_TOKENS``:

* after a warm-up: per (op, provider) the T buckets whose kernels are warm, the time spent, the
  failures, and where the choices differ from the plan;
* without one (no GPU of the target here): the plan, i.e. per (op, provider) the T buckets at which
  the dispatcher picks it and why the providers ranked above were passed over, the providers this
  machine lacks, and per committed crossover table what that GPU picks per bucket.

Bucket lists are written against the bucket sequence: ``1..64`` is every bucket from 1 to 64
(1, 2, 3, 4, 6, ..., 64), ``96,128`` two single buckets.
"""
from __future__ import annotations

from typing import Sequence

from fusegraph.records import PlanStep, Unavailable, WarmState, WarmupPlan
from fusegraph.render.text import Table, shorten

REASON_WIDTH = 100


def bucket_ranges(tokens: Sequence[int], buckets: Sequence[int]) -> str:
    """Runs of 3+ consecutive buckets as ``a..b``: ((1, 2, 3, 4, 96), (1, 2, 3, 4, 6, ..., 96)) -> '1..4,96'."""
    index = {t: i for i, t in enumerate(buckets)}
    ts = sorted(set(tokens))
    if not ts:
        return "-"
    runs: list[list[int]] = [[ts[0]]]
    for t in ts[1:]:
        prev = runs[-1][-1]
        if t in index and prev in index and index[t] == index[prev] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    parts = []
    for run in runs:
        parts.append(f"{run[0]}..{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)))
    return ",".join(parts)


def passed_over_summary(steps: Sequence[PlanStep], op: str, provider: str) -> list[tuple[str, str, int]]:
    """(provider passed over, its first reason, number of distinct reasons) for one plan row."""
    reasons: dict[str, list[str]] = {}
    for s in steps:
        if s.op == op and s.provider == provider:
            for r in s.passed_over:
                seen = reasons.setdefault(r.provider, [])
                if r.reason not in seen:
                    seen.append(r.reason)
    return [(name, found[0], len(found)) for name, found in reasons.items()]


def gates_summary(u: Unavailable, buckets: Sequence[int]) -> str:
    """'accept T 1024..4096; elsewhere: <reason>': a lacking provider's argument gates, per bucket."""
    if not u.gates_accept:
        return f"refuse every bucket: {u.gates_refuse}"
    if len(u.gates_accept) == len(buckets):
        return "accept every bucket"
    return f"accept T {bucket_ranges(u.gates_accept, buckets)}; elsewhere: {u.gates_refuse}"


def plan_mismatches(plan: WarmupPlan, warm: WarmState) -> list[str]:
    """(op, T) whose compiled providers differ from the planned ones, as 'op T=t: planned a, ran b'."""
    planned: dict[tuple[str, int], set[str]] = {}
    for s in plan.steps:
        if s.provider:
            planned.setdefault((s.op, s.tokens), set()).add(s.provider)
    ran: dict[tuple[str, int], set[str]] = {}
    for v in warm.variants:
        for t in v.tokens:
            ran.setdefault((v.op, t), set()).add(v.provider)
    for f in warm.failures:
        ran.setdefault((f.op, f.tokens), set()).add(f.provider)
    out = []
    for key in sorted(set(planned) & set(ran)):
        if planned[key] != ran[key]:
            out.append(f"{key[0]} T={key[1]}: planned {','.join(sorted(planned[key]))}, "
                       f"ran {','.join(sorted(ran[key]))}")
    return out


def warmup_text(plan: WarmupPlan | None, warm: WarmState | None, limit: int = 0) -> str:
    """The report's warm-up section (empty string when there is neither a plan nor a warm-up)."""
    if warm is not None:
        return _warm_text(warm, plan, limit)
    if plan is not None:
        return _plan_text(plan)
    return ""


def _warm_text(warm: WarmState, plan: WarmupPlan | None, limit: int) -> str:
    verdict = "all compiled" if warm.ok else f"{len(warm.failures)} FAILED"
    lines = [f"Warm-up on {warm.device} ({warm.target}): {len(warm.buckets)} T buckets up to {warm.max_tokens} "
             f"({','.join(map(str, warm.buckets))}), {warm.calls} calls in {warm.seconds:.1f} s: {verdict}"]
    t = Table(["op", "provider", "warm T buckets", "sites", "seconds"], max_width=REASON_WIDTH, left=(2,))
    for v in warm.variants:
        t.add(v.op, v.provider, bucket_ranges(v.tokens, warm.buckets), v.sites,
              f"{v.seconds:.2f}" if v.seconds is not None else "")
    lines.append(t.render() if warm.variants else "(nothing is warm)")
    failures = list(warm.failures)
    shown = failures if limit <= 0 else failures[:limit]
    for f in shown:
        lines.append(f"FAILED {f.op} ({f.provider}) T={f.tokens}, {f.sites} site{'s' * (f.sites != 1)}: "
                     f"{shorten(f.error, REASON_WIDTH)}")
    if len(shown) < len(failures):
        lines.append(f"... {len(failures) - len(shown)} more failures (--format json lists all)")
    if plan is not None and plan.buckets == warm.buckets:
        differ = plan_mismatches(plan, warm)
        if differ:
            lines.append(f"differs from the plan ({plan.planned_on}) at {len(differ)} (op, T): "
                         + "; ".join(differ[:6]) + (" ..." if len(differ) > 6 else ""))
        else:
            lines.append(f"every choice matches the plan made on {plan.planned_on}")
    return "\n".join(lines)


def _plan_text(plan: WarmupPlan) -> str:
    lines = [f"Warm-up plan for {plan.target}: {len(plan.buckets)} T buckets up to {plan.max_tokens} "
             f"({','.join(map(str, plan.buckets))}), planned on {plan.planned_on} tensors"]
    if plan.note:
        lines.append(plan.note)
    t = Table(["op", "provider", "T buckets", "sites", "passed over (why)"], max_width=REASON_WIDTH, left=(2,))
    for v in plan.variants:
        why = passed_over_summary(plan.steps, v.op, v.provider)
        cells = [f"{name}: {reason}" + (f" (+{n - 1} other reasons by T)" if n > 1 else "")
                 for name, reason, n in why]
        t.add(v.op, v.provider, bucket_ranges(v.tokens, plan.buckets), v.sites, cells[0] if cells else "-")
        for extra in cells[1:]:
            t.add("", "", "", "", extra)
    lines.append(t.render() if plan.variants else "(no fused sites to warm)")
    for s in plan.steps:
        if s.error:
            lines.append(f"NO PROVIDER {s.op} T={s.tokens}: {shorten(s.error, REASON_WIDTH)}")
    if plan.unavailable_here:
        lines.append(f"Not usable on this machine; a {plan.target} machine that has them may choose them where "
                     f"their argument gates accept the call (asked here, on {plan.planned_on} tensors):")
        ut = Table(["provider", "op", "not here because", "its argument gates"], max_width=70)
        for u in plan.unavailable_here:
            ut.add(u.provider, u.op, u.reason, gates_summary(u, plan.buckets))
        lines.extend("  " + line for line in ut.render().splitlines())
    if plan.planned_on == "meta" and plan.target != "cpu":
        lines.append("Planned on meta tensors: gates that ask the GPU itself (its name, pointer alignment) "
                     "see no GPU here.")
    for table in plan.tables:
        lines.append(f"On {table.device} ({table.table}, {table.status}), where {table.provider} "
                     "is installed, the crossover table picks:")
        tt = Table(["op", "provider", "T buckets", "sites"], left=(2,))
        for v in table.variants:
            tt.add(v.op, v.provider, bucket_ranges(v.tokens, plan.buckets), v.sites)
        if table.variants:
            lines.extend("  " + line for line in tt.render().splitlines())
        lines.extend(f"  {n}" for n in table.notes)
    return "\n".join(lines)

