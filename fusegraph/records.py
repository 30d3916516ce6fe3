"""Typed results of a compilation: what matched where, what did not and why, what was chosen.

These records are the single source for ``fusegraph report`` (text, JSON, HTML) and for
``fusegraph compare``. They hold names and numbers only (no tensors, no graph objects) so that a
report can be serialized, diffed and tested. ``CompileReport.as_dict`` is the documented JSON shape.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fusegraph.ops import Selection

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
        }
