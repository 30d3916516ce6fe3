"""Why a candidate did not match: align the graph's values with the reference's.

Both sides ran on the same inputs. Every intermediate the reference produced is a *pattern value*;
a graph node is *explained* when its value equals some pattern value (same numel, within the
tolerances of ``values``). The deepest partial match is the share of pattern values the graph
reproduces; the first divergent node is the earliest graph node whose operands are all explained
(or are inputs) but whose own value is not — the place where the model's math leaves the pattern's.
When the outputs agree under the plain regime but not under a stress regime, the difference is a
constant (an eps, a multiplier): reported as ``literal``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from fusegraph.canonicalize import op_label
from fusegraph.match.graph_facts import GraphFacts
from fusegraph.match.values import violation

_LOOSE = 4.0  # alignment tolerance factor: diagnosis may be a bit looser than verification


@dataclass(frozen=True)
class Divergence:
    node: torch.fx.Node | None
    matched_fraction: float
    detail: str


def align(facts: GraphFacts, nodes: list[torch.fx.Node], env: dict, ref_values: list[torch.Tensor],
          bound: set[torch.fx.Node]) -> Divergence:
    by_numel: dict[int, list[int]] = {}
    for i, v in enumerate(ref_values):
        by_numel.setdefault(v.numel(), []).append(i)
    hit_ref: set[int] = set()
    explained: set[torch.fx.Node] = set(bound)
    first: torch.fx.Node | None = None
    for n in nodes:
        v = env.get(n)
        if not isinstance(v, torch.Tensor) or v.dtype == torch.bool:
            explained.add(n)  # sizes, masks: not values we align
            continue
        match = None
        for i in by_numel.get(v.numel(), ()):
            if violation(v, ref_values[i]) <= _LOOSE:
                match = i
                break
        if match is not None:
            hit_ref.add(match)
            explained.add(n)
        elif first is None and all(a in explained or facts.free(a) for a in n.all_input_nodes):
            first = n
    frac = len(hit_ref) / max(1, len(ref_values))
    detail = ""
    if first is not None:
        ins = ", ".join(a.name for a in first.all_input_nodes)
        detail = (f"`{first.name}` ({op_label(first)} of {ins}) computes a value the pattern never "
                  f"computes, although its operands match pattern values")
    return Divergence(first, frac, detail)
