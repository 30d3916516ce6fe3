"""Binding: which graph values play the pattern's inputs.

Start from a seed (a graph value fitting the pattern's seed spec, consumed by an op with the seed
label), then grow: compute the closure of what is bound, look at the nodes that consume it but need
something more, and search backwards from their other operands for a value that fits a still-unbound
input spec (shape symbols unified with those already bound, dtype allowed). Repeat until every input
is bound or nothing fits. Nearest consumers are tried first, so a binding stays inside one site.
A wrong binding is possible in principle; it cannot survive verification (``matcher``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch.fx

from fusegraph.canonicalize import tensor_val
from fusegraph.match.graph_facts import GraphFacts
from fusegraph.pattern import Dims, Pattern, TensorSpec, unify_shape


@dataclass
class Binding:
    pattern: Pattern
    seed: torch.fx.Node
    nodes: dict[str, torch.fx.Node] = field(default_factory=dict)
    dims: Dims = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing


def fit(spec: TensorSpec, node: torch.fx.Node, dims: Dims) -> Dims | None:
    val = tensor_val(node)
    if val is None or not spec.dtype_ok(val.dtype) or val.numel() == 0:  # empty values verify nothing
        return None
    if spec.param and node.op not in ("get_attr", "placeholder"):
        return None
    out = unify_shape(spec.shape, tuple(int(s) for s in val.shape), dims)
    if out is not None and spec.check is not None:
        try:
            if not spec.check(out):
                return None
        except KeyError:  # a symbol the check needs is not bound yet
            pass
    return out


def seeds(facts: GraphFacts, pattern: Pattern) -> list[torch.fx.Node]:
    spec = pattern.inputs[pattern.seed]
    labels = (pattern.seed_label,) if isinstance(pattern.seed_label, str) else pattern.seed_label
    out = []
    for node in facts.gm.graph.nodes:
        if node.op == "output" or fit(spec, node, {}) is None:
            continue
        if labels and not facts.uses_through_plumbing(node, tuple(labels)):
            continue
        out.append(node)
    return out


MAX_STEPS = 64        # bindings explored per seed (a DFS over candidate values)
CANDIDATES_PER_STEP = 4


def bindings(facts: GraphFacts, pattern: Pattern, seed: torch.fx.Node) -> Iterator[Binding]:
    """Complete bindings for ``seed``, most plausible first; the last one yielded may be incomplete
    (``missing`` set) when no complete binding exists within the search budget."""
    start = Binding(pattern, seed)
    start.dims = fit(pattern.inputs[pattern.seed], seed, {}) or {}
    start.nodes[pattern.seed] = seed
    budget = [MAX_STEPS]
    deepest = [start]
    yielded = False
    for b in _extend(facts, start, budget, deepest):
        yielded = True
        yield b
    if not yielded:
        best = deepest[0]
        best.missing = tuple(k for k in pattern.inputs if k not in best.nodes)
        yield best


def bind(facts: GraphFacts, pattern: Pattern, seed: torch.fx.Node) -> Binding:
    return next(bindings(facts, pattern, seed))


def _extend(facts: GraphFacts, b: Binding, budget: list[int], deepest: list[Binding]) -> Iterator[Binding]:
    if len(b.nodes) > len(deepest[0].nodes):
        deepest[0] = b
    unbound = [k for k in b.pattern.inputs if k not in b.nodes]
    if not unbound:
        yield b
        return
    for name, node, dims in _candidates(facts, b, unbound):
        if budget[0] <= 0:
            return
        budget[0] -= 1
        nxt = Binding(b.pattern, b.seed, {**b.nodes, name: node}, dims)
        yield from _extend(facts, nxt, budget, deepest)


def _candidates(facts: GraphFacts, b: Binding, unbound: list[str]) -> list[tuple[str, torch.fx.Node, Dims]]:
    """Values that could play an unbound input: found backwards from the operands of the nodes that
    consume what is bound; consumers of seed-derived values first (they belong to this site), nearest
    first."""
    bound = set(b.nodes.values())
    closure = facts.closure(bound)
    from_seed = _downstream(b.seed, closure)
    seed_pos = facts.order[b.seed]

    def rank(n: torch.fx.Node) -> tuple[int, int]:
        return (0 if any(a in from_seed for a in n.all_input_nodes) else 1, abs(facts.order[n] - seed_pos))

    out: list[tuple[str, torch.fx.Node, Dims]] = []
    seen: set[tuple[str, torch.fx.Node]] = set()
    for consumer in sorted(facts.frontier(closure), key=rank):
        for operand in consumer.all_input_nodes:
            if operand in closure or facts.is_static(operand):
                continue
            for node in facts.backward_fits(operand, lambda n: any(
                    fit(b.pattern.inputs[k], n, b.dims) is not None for k in unbound), stop=closure | bound):
                for name in unbound:
                    dims = fit(b.pattern.inputs[name], node, b.dims)
                    if dims is not None and (name, node) not in seen:
                        seen.add((name, node))
                        out.append((name, node, dims))
                if len(out) >= CANDIDATES_PER_STEP:
                    return out
    return out


def _downstream(seed: torch.fx.Node, closure: set[torch.fx.Node]) -> set[torch.fx.Node]:
    out = {seed}
    stack = [seed]
    while stack:
        for u in stack.pop().users:
            if u in closure and u not in out:
                out.add(u)
                stack.append(u)
    return out


def swapped(binding: Binding, a: str, b: str) -> Binding:
    nodes = dict(binding.nodes)
    nodes[a], nodes[b] = nodes[b], nodes[a]
    return Binding(binding.pattern, binding.seed, nodes, dict(binding.dims), binding.missing)
