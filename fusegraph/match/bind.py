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
    if val is None or not spec.dtype_ok(val.dtype):
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


def bind(facts: GraphFacts, pattern: Pattern, seed: torch.fx.Node) -> Binding:
    binding = Binding(pattern, seed)
    binding.dims = fit(pattern.inputs[pattern.seed], seed, {}) or {}
    binding.nodes[pattern.seed] = seed
    seed_pos = facts.order[seed]
    while True:
        unbound = [k for k in pattern.inputs if k not in binding.nodes]
        if not unbound:
            break
        bound = set(binding.nodes.values())
        closure = facts.closure(bound)
        from_seed = _downstream(seed, closure)

        # Consumers of values derived from the seed first (they belong to this site), nearest first.
        def rank(n: torch.fx.Node) -> tuple[int, int]:
            return (0 if any(a in from_seed for a in n.all_input_nodes) else 1, abs(facts.order[n] - seed_pos))

        hit = None
        for consumer in sorted(facts.frontier(closure), key=rank):
            for operand in consumer.all_input_nodes:
                if operand in closure or facts.free(operand):
                    continue
                found: list = []

                def fits_unbound(node: torch.fx.Node) -> bool:
                    for name in unbound:
                        dims = fit(pattern.inputs[name], node, binding.dims)
                        if dims is not None:
                            found.append((name, dims))
                            return True
                    return False

                node = facts.backward_search(operand, fits_unbound, stop=closure, max_depth=8)
                if node is not None:
                    hit = (found[0][0], node, found[0][1])
                    break
            if hit:
                break
        if hit is None:
            binding.missing = tuple(unbound)
            break
        name, node, dims = hit
        binding.nodes[name] = node
        binding.dims = dims
    return binding


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
