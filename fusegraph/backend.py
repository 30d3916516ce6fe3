"""The torch.compile backend: the same passes on each graph Dynamo captures.

``torch.compile(model, backend=fusegraph.backend(target="sm90"))`` fuses models that symbolic tracing
cannot capture (data-dependent control flow, cache objects, third-party model code): Dynamo splits
the program into graphs with fake example inputs attached, and each graph goes through
canonicalize -> match -> rewrite -> compose -> dispatch. Sites and near misses of all graphs
accumulate in ``backend.report``.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx

from fusegraph import targets as _targets
from fusegraph.records import CompileReport


class Backend:
    def __init__(self, target: str = "auto", patterns: Iterable[str] | None = None):
        self.target = _targets.parse(target)
        self.patterns = list(patterns) if patterns is not None else None
        self.report = CompileReport(model="dynamo", target=self.target, capture="dynamo")
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]):
        from fusegraph.compiler import _select_patterns, run_passes
        from fusegraph.capture import propagate

        for node in gm.graph.nodes:  # Dynamo's fake values are the shapes we need
            if "val" not in node.meta and "example_value" in node.meta:
                node.meta["val"] = node.meta["example_value"]
        if any("val" not in n.meta for n in gm.graph.nodes if n.op != "output"):
            propagate(gm, tuple(example_inputs))
        pats, comps = _select_patterns(self.patterns)
        sub = CompileReport(model="dynamo", target=self.target, capture="dynamo")
        fused, _unfused, _sites = run_passes(gm, pats, comps, self.target, sub, [])
        self.report.sites += sub.sites
        self.report.near_misses += sub.near_misses
        self.graphs.append(fused)
        return fused.forward


def backend(target: str = "auto", patterns: Iterable[str] | None = None) -> Backend:
    """A torch.compile backend that fuses DSV4 subgraphs; ``backend.report`` collects the sites."""
    return Backend(target, patterns)
