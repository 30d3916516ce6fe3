"""The torch.compile backend: the same passes on each graph Dynamo captures.

``torch.compile(model, backend=fusegraph.backend(target="sm90"))`` fuses models that symbolic tracing
cannot capture (control flow on tensor values, cache objects, third-party model code): Dynamo splits
the program into graphs at what it cannot trace (graph breaks), guards each graph on what it assumed
(shapes, Python ints such as ``start_pos``: a call that breaks a guard compiles a new graph), and
hands every graph here with its example inputs. Each goes through canonicalize -> match -> rewrite ->
compose -> dispatch; sites, near misses and op counts of all graphs accumulate in ``backend.report``,
and ``backend.graphs`` keeps one ``DynamoGraph`` record per graph.

Dynamo lifts parameters and buffers into graph inputs, so a KV-cache write is an in-place op on a
placeholder; the passes keep it in place (the caches the model owns are what the graph writes).
Shapes come from meta-tensor propagation of the example inputs, as for symbolic_trace graphs. A
graph the passes cannot handle runs as Dynamo captured it (unfused, still correct) and its record
says why: a compile backend must not turn a model that runs into one that fails.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.fx

from fusegraph import targets as _targets
from fusegraph.records import CompileReport, GraphStats


@dataclass(frozen=True)
class DynamoGraph:
    """One graph Dynamo handed to the backend."""

    index: int                    # order of arrival (a recompile after a guard failure is a new one)
    nodes: int                    # call nodes before the passes
    sites: int                    # fused sites in it
    seconds: float                # time in the passes
    fused: bool                   # False: runs as captured (``error`` says why)
    error: str = ""


class Backend:
    def __init__(self, target: str = "auto", patterns: Iterable[str] | None = None, seed: int = 0):
        self.target = _targets.parse(target)
        self.patterns = list(patterns) if patterns is not None else None
        self.seed = seed
        self.report = CompileReport(model="dynamo", target=self.target, capture="dynamo")
        self.graphs: list[DynamoGraph] = []
        self.graph_modules: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]):
        from fusegraph.capture import propagate
        from fusegraph.compiler import _select_patterns, _stats, run_passes

        t0 = time.perf_counter()
        index = len(self.graphs)
        n_calls = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
        try:
            # Meta values from the example inputs (Dynamo's fake ones carry no value for writes
            # such as setitem, and name real devices where propagation needs meta ones).
            propagate(gm, tuple(example_inputs))
            pats, comps = _select_patterns(self.patterns)
            sub = CompileReport(model="dynamo", target=self.target, capture="dynamo")
            fused, _unfused, _sites = run_passes(gm, pats, comps, self.target, sub, [], seed=self.seed)
        except Exception as exc:  # the graph still runs, unfused; the record and the report say why
            lines = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            self.graphs.append(DynamoGraph(index, n_calls, 0, time.perf_counter() - t0, False, why))
            note = f"Dynamo graph {index} ({n_calls} ops) runs unfused: {why}"
            self.report.capture_note = f"{self.report.capture_note}\n{note}" if self.report.capture_note else note
            warnings.warn(f"fusegraph: {note}", stacklevel=2)
            return gm.forward
        self.report.sites += sub.sites
        self.report.near_misses += sub.near_misses
        self.report.before = _merge(self.report.before, sub.before)
        self.report.after = _merge(self.report.after, _stats(fused))
        self.graphs.append(DynamoGraph(index, n_calls, len(sub.sites), time.perf_counter() - t0, True))
        self.graph_modules.append(fused)
        return fused.forward


def _merge(total: GraphStats | None, more: GraphStats | None) -> GraphStats | None:
    if total is None or more is None:
        return more if total is None else total
    census = dict(total.op_census)
    for label, n in more.op_census.items():
        census[label] = census.get(label, 0) + n
    return GraphStats(total.nodes + more.nodes, census, total.est_bytes + more.est_bytes,
                      total.est_launches + more.est_launches)


def backend(target: str = "auto", patterns: Iterable[str] | None = None, seed: int = 0) -> Backend:
    """A torch.compile backend that fuses DSV4 subgraphs; ``backend.report`` collects the sites of
    every graph, ``backend.graphs`` describes each graph."""
    return Backend(target, patterns, seed)
