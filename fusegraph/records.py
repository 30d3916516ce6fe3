"""Typed results of a compilation: what matched where, what did not and why, what was chosen.

These records are the single source for ``fusegraph report`` (text, JSON, HTML) and for
``fusegraph compare``. The warm-up records (``WarmupPlan``: which kernel variants a warm-up would
compile, derived without running anything; ``WarmState``: which ones it did compile) are filled by
``fusegraph.warmup`` into ``CompileReport.warmup_plan`` and ``CompileReport.warm``. They hold names and numbers only (no tensors, no graph objects) so that a
report can be serialized, diffed and tested. ``CompileReport.as_dict`` is the documented JSON shape.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fusegraph.ops import Rejection, Selection

# Classified reasons for a near miss (what the user should look at).
REASON_KINDS = (
    "missing input",     # a pattern input could not be found next to the anchor
    "dtype form",        # the same math in another dtype (e.g. bf16 where the pattern keeps fp32)
    "view form",         # an output exists only under a layout the rewrite cannot express
    "literal",           # a constant differs (eps, post multiplier, iteration count, ...)
    "semantics",         # the subgraph computes something else (e.g. comb not transposed)
    "extra user",        # an intermediate is used outside the subgraph
    "mutation",          # an in-place write inside or across the subgraph
    "shape constraint",  # shapes or dtypes the fused op does not take (hc_mult != 4, ...)
    "target gate",       # the pattern is not planned for this target
)


@dataclass(frozen=True)
class MatchSite:
    """One rewritten subgraph."""

    pattern: str                  # pattern name, e.g. "mhc_pre_norm"
    op: str                       # fused op, e.g. "mhc_pre"
    module: str                   # module path of the site, e.g. "layers.3.attn" ("" for the root)
    anchor: str                   # the FX node the match grew from
    fused_node: str               # name of the fused call in the rewritten graph
    replaced: tuple[str, ...]     # FX nodes removed by the rewrite
    inputs: dict[str, str]        # pattern input name -> FX node feeding it
    outputs: dict[str, str]       # pattern output name -> FX node it replaces
    selection: Selection          # provider chosen on the plan target, with rejections
    bytes_unfused: int = 0        # estimated HBM bytes of the replaced ops (each op's in + out)
    bytes_fused: int = 0          # estimated HBM bytes of the fused call (inputs + outputs once)
    launches_unfused: int = 0     # kernels the replaced ops would launch (one per compute op)
    launches_fused: int = 1
    max_error: float | None = None  # verification error against the reference (rel. L2)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selection"] = self.selection.as_dict()
        d["replaced"] = list(self.replaced)
        return d


@dataclass(frozen=True)
class NearMiss:
    """A candidate site where a pattern was tried and not applied, with the reason."""

    pattern: str
    module: str                   # module path of the candidate
    anchor: str                   # FX node the attempt started from
    stage: str                    # "bind", "evaluate", "align", "region", "constraints", "verify", "rewrite"
    kind: str                     # one of REASON_KINDS
    reason: str                   # a sentence a user can act on
    divergent_node: str | None = None  # first node whose value no pattern value explains
    source: str | None = None     # "file:line: code" of that node, when known
    matched_fraction: float = 0.0  # share of the pattern's intermediate values found in the graph

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GraphStats:
    nodes: int                    # call nodes (ops), placeholders and constants excluded
    op_census: dict[str, int]     # canonical op label -> count
    est_bytes: int = 0
    est_launches: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- warm-up ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarmVariant:
    """One (op, provider) and the token buckets at which it runs: planned, or compiled by a warm-up."""

    op: str
    provider: str
    tokens: tuple[int, ...]       # the T buckets, ascending
    sites: int                    # fused call sites these calls stand for
    seconds: float | None = None  # warm-ups: wall time of these calls, compilation included; plans: None

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "provider": self.provider, "tokens": list(self.tokens), "sites": self.sites,
                "seconds": self.seconds}


@dataclass(frozen=True)
class WarmFailure:
    """A warm-up call that raised: that variant is not warm."""

    op: str
    provider: str
    tokens: int
    sites: int
    error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WarmState:
    """What ``fusegraph.warmup.warmup`` compiled (``compiled.report.warm``)."""

    device: str                   # where the calls ran, e.g. "cuda:0"
    target: str                   # that device's target
    max_tokens: int
    buckets: tuple[int, ...]      # the T buckets warmed
    calls: int                    # op calls made (sites with the same argument layout share one)
    seconds: float
    variants: tuple[WarmVariant, ...] = ()    # compiled: (op, provider) -> T buckets
    failures: tuple[WarmFailure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def warm_tokens(self, op: str, provider: str) -> tuple[int, ...]:
        return next((v.tokens for v in self.variants if (v.op, v.provider) == (op, provider)), ())

    def is_warm(self, op: str, provider: str, tokens: int) -> bool:
        return tokens in self.warm_tokens(op, provider)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "target": self.target, "max_tokens": self.max_tokens,
                "buckets": list(self.buckets), "calls": self.calls, "seconds": self.seconds, "ok": self.ok,
                "variants": [v.as_dict() for v in self.variants],
                "failures": [f.as_dict() for f in self.failures]}


@dataclass(frozen=True)
class PlanStep:
    """The dispatcher's choice for one argument layout of an op at one token bucket."""

    op: str
    tokens: int
    provider: str                 # "" when no provider takes the call (``error`` says why)
    sites: int                    # fused call sites with this layout
    passed_over: tuple[Rejection, ...] = ()   # providers ranked above ``provider``, and why not them
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "tokens": self.tokens, "provider": self.provider, "sites": self.sites,
                "passed_over": [{"provider": r.provider, "reason": r.reason} for r in self.passed_over],
                "error": self.error}


@dataclass(frozen=True)
class Unavailable:
    """A provider ranked above the planned one that this machine cannot run (a package, a compiler
    or the GPU is missing here): on a machine of the target that has it, it may take the calls its
    argument gates accept. The gates are asked here, on the planning arguments (meta tensors: a gate
    that needs the GPU itself refuses)."""

    provider: str
    op: str
    reason: str                   # why not here (the provider's ``available``)
    gates_accept: tuple[int, ...] = ()   # buckets whose arguments its supports/measured gates accept
    gates_refuse: str = ""        # what they said at the first other bucket ("" when none)

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "op": self.op, "reason": self.reason,
                "gates_accept": list(self.gates_accept), "gates_refuse": self.gates_refuse}


@dataclass(frozen=True)
class TablePlan:
    """The choice a committed per-GPU measurement table (the mHC crossover tables) makes on the GPU it
    was measured on, where the table's provider is installed: what a warm-up there compiles."""

    device: str                   # GPU name the table was measured on, e.g. "NVIDIA H200"
    table: str                    # the table's file name
    status: str                   # "measured" or "unmeasured"
    provider: str                 # the provider the table admits per bucket, e.g. "tilelang"
    variants: tuple[WarmVariant, ...] = ()    # the ops the table decides: (op, provider) -> T buckets
    notes: tuple[str, ...] = ()   # sizes the table does not cover, forced providers

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "table": self.table, "status": self.status, "provider": self.provider,
                "variants": [v.as_dict() for v in self.variants], "notes": list(self.notes)}


@dataclass(frozen=True)
class WarmupPlan:
    """Which (op, provider, T) variants ``warmup(compiled, max_tokens)`` would compile on ``target``,
    derived without running anything (``fusegraph.warmup.plan``)."""

    target: str
    max_tokens: int
    buckets: tuple[int, ...]
    planned_on: str               # device of the planning arguments: "meta" (no GPU needed) or e.g. "cuda:0"
    variants: tuple[WarmVariant, ...] = ()    # (op, provider) -> the T buckets the dispatcher picks it at
    steps: tuple[PlanStep, ...] = ()          # per op layout and bucket, with the providers passed over
    unavailable_here: tuple[Unavailable, ...] = ()
    tables: tuple[TablePlan, ...] = ()
    note: str = ""                # e.g. why nothing was compiled

    def provider_at(self, op: str, tokens: int) -> set[str]:
        """The providers planned for ``op`` at bucket ``tokens`` (one per argument layout)."""
        return {s.provider for s in self.steps if s.op == op and s.tokens == tokens}

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "max_tokens": self.max_tokens, "buckets": list(self.buckets),
                "planned_on": self.planned_on, "note": self.note,
                "variants": [v.as_dict() for v in self.variants],
                "steps": [s.as_dict() for s in self.steps],
                "unavailable_here": [u.as_dict() for u in self.unavailable_here],
                "tables": [t.as_dict() for t in self.tables]}


@dataclass
class CompileReport:
    model: str
    target: str
    capture: str                  # "symbolic_trace" or "dynamo"
    capture_note: str = ""        # why a fallback was taken, when it was
    sites: list[MatchSite] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    before: GraphStats | None = None
    after: GraphStats | None = None
    expected: dict[str, int] = field(default_factory=dict)   # pattern -> sites expected for this model
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    warmup_plan: WarmupPlan | None = None   # fusegraph.warmup.plan: variants a warm-up would compile
    warm: WarmState | None = None           # fusegraph.warmup.warmup: variants it compiled

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.pattern for s in self.sites))

    def shortfall(self) -> dict[str, tuple[int, int]]:
        """Patterns matched fewer times than expected: pattern -> (expected, matched)."""
        got = self.counts()
        return {p: (n, got.get(p, 0)) for p, n in self.expected.items() if got.get(p, 0) < n}

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "fusegraph.report/1",
            "model": self.model,
            "target": self.target,
            "capture": self.capture,
            "capture_note": self.capture_note,
            "counts": self.counts(),
            "expected": dict(self.expected),
            "shortfall": {p: {"expected": e, "matched": m} for p, (e, m) in self.shortfall().items()},
            "sites": [s.as_dict() for s in self.sites],
            "near_misses": [n.as_dict() for n in self.near_misses],
            "before": self.before.as_dict() if self.before else None,
            "after": self.after.as_dict() if self.after else None,
            "timings": dict(self.timings),
            "warmup_plan": self.warmup_plan.as_dict() if self.warmup_plan else None,
            "warm": self.warm.as_dict() if self.warm else None,
        }
