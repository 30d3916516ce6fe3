"""Binding: which graph values play the pattern's inputs.

Start from a seed (a graph value fitting the pattern's seed spec, consumed by an op with the seed
label), then grow: compute the closure of what is bound, look at the nodes that consume it but need
something more, and search backwards from their other operands for a value that fits a still-unbound
input spec (shape symbols unified with those already bound, dtype allowed). Repeat until every input
is bound or nothing fits. Nearest consumers are tried first, so a binding stays inside one site.
A wrong binding is possible in principle; it cannot survive verification (``matcher``).

Index lists need one more rule (``TensorSpec.source_first``). Code derives several index-shaped
values from one list: the clamped copy it gathers with, its concatenation with another list that
the mask reads, a shifted copy. The nearest of them is rarely the list itself, and binding a derived
one leaves the site's other uses reading the list directly (a constant, or a value nothing binds), so
the candidate cannot verify. For such specs, a candidate that another candidate of the same input is
derived from *and* that the site also uses elsewhere (the value the uses fork from) goes first, and
candidates derived from an already bound input go last. Values read at the entries of such a list
(``TensorSpec.indexed_by``: a cache and its slots) go to the input whose list meets them soonest.

Two ordering hints for inputs many ops read (RoPE tables): ``TensorSpec.after`` binds one only once
the named inputs are bound (then the nearest reader is the site's own, not a neighbour's), and
``TensorSpec.behind`` names inputs it may be found behind when nothing in the site reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch.fx

from fusegraph.canonicalize import tensor_val
from fusegraph.match.graph_facts import GraphFacts, downstream
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
    # rank first: most values the binder looks at have another rank (cheapest rejection)
    if val is None or val.dim() != len(spec.shape) or not spec.dtype_ok(val.dtype):
        return None
    if val.numel() == 0 and not spec.empty_ok:  # empty values verify nothing (unless the spec allows them)
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
    for node in facts.tensors_of_rank(len(spec.shape)):  # fit() needs a tensor of the spec's rank
        if fit(spec, node, {}) is None:
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
    specs = b.pattern.inputs
    ready = [k for k in unbound if all(a in b.nodes for a in specs[k].after)] or unbound
    candidates = _candidates(facts, b, ready)
    if not candidates:  # nothing in the site reads them: maybe behind another input (their use is what is missing)
        candidates = _behind(facts, b, [k for k in ready if specs[k].behind])
    for name, node, dims in candidates:
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
    closure = facts.closure(bound)   # bound values included
    out: list[tuple[str, torch.fx.Node, Dims]] = []
    seen: set[tuple[str, torch.fx.Node]] = set()
    specs = [b.pattern.inputs[k] for k in unbound]
    depth = max(spec.reach for spec in specs)
    fitting: dict[torch.fx.Node, bool] = {}   # the searches from several operands cross the same values

    def fits(n: torch.fx.Node) -> bool:
        if n not in fitting:
            fitting[n] = any(fit(spec, n, b.dims) is not None for spec in specs)
        return fitting[n]

    for consumer in _consumers(facts, closure, b.seed):
        for operand in facts.inputs(consumer):
            if operand in closure or facts.is_static(operand):
                continue
            for node in facts.backward_fits(operand, fits, stop=closure, max_depth=depth):
                for name in unbound:
                    dims = fit(b.pattern.inputs[name], node, b.dims)
                    if dims is not None and (name, node) not in seen:
                        seen.add((name, node))
                        out.append((name, node, dims))
                if len(out) >= CANDIDATES_PER_STEP:
                    return _ordered(b, out)
    return _ordered(b, out)


def _consumers(facts: GraphFacts, closure: set[torch.fx.Node], seed: torch.fx.Node) -> Iterator[torch.fx.Node]:
    """The closure's frontier (``GraphFacts.frontier``) in search order: consumers of seed-derived
    values first, then the others, each group nearest to the seed first (ties in graph order).
    Lazily: the search usually stops within the first group, and the whole frontier of a closure
    that holds a shared input (positions: thousands of nodes) is only built when it does not."""
    seed_pos = facts.order[seed]

    def distance(n: torch.fx.Node) -> int:
        return abs(facts.order[n] - seed_pos)

    near = {u for n in downstream(seed, closure) for u in n.users if u not in closure and u.op != "output"}
    yield from sorted(facts.topo(near), key=distance)
    yield from sorted((n for n in facts.frontier(closure) if n not in near), key=distance)


def _behind(facts: GraphFacts, b: Binding, unbound: list[str]) -> list[tuple[str, torch.fx.Node, Dims]]:
    """Values for ``unbound`` found behind the bound inputs their specs name (``TensorSpec.behind``).

    A site that lacks one use of an input (an attention without its inverse RoPE) leaves it with no
    reader in the site; binding the value the model has anyway (the tables its q RoPE read) lets the
    verification say what differs, instead of a bare "missing input"."""
    out: list[tuple[str, torch.fx.Node, Dims]] = []
    stop = set(b.nodes.values())
    for name in unbound:
        spec = b.pattern.inputs[name]
        for other in spec.behind:
            start = b.nodes.get(other)
            for operand in (start.all_input_nodes if start is not None else ()):
                for node in facts.backward_fits(operand, lambda n: fit(spec, n, b.dims) is not None, stop=stop,
                                                max_depth=spec.reach):
                    dims = fit(spec, node, b.dims)
                    if dims is not None and all(node is not n for k, n, _ in out if k == name):
                        out.append((name, node, dims))
    return out[:CANDIDATES_PER_STEP]


ANCESTOR_DEPTH = 12   # how far back "derived from" is looked for (index arithmetic is short)
MEET_DEPTH = 16       # how far forward a value and the index list it is read at are followed


def _ordered(b: Binding, out: list[tuple[str, torch.fx.Node, Dims]]) -> list[tuple[str, torch.fx.Node, Dims]]:
    """Stable re-ordering of candidates by the hints of their specs (other inputs keep their order).

    ``source_first``: fork points before what is derived from them, values derived from bound
    inputs last. ``indexed_by``: a value read at the entries of a bound index list goes to the input
    whose list meets it soonest (the gather that reads both), so two caches with their two lists
    pair up the way the model pairs them."""
    specs = b.pattern.inputs
    if not any(specs[name].source_first or specs[name].indexed_by in b.nodes for name, _, _ in out):
        return out
    bound = set(b.nodes.values())
    ancestors: dict[torch.fx.Node, set[torch.fx.Node]] = {}
    meets: dict[tuple[torch.fx.Node, torch.fx.Node], int] = {}

    def key(item: tuple[str, torch.fx.Node, Dims]) -> tuple[int, int, int]:
        name, node, _ = item
        spec = specs[name]
        if spec.source_first:
            anc = ancestors.setdefault(node, _ancestors(node))
            from_bound = not bound.isdisjoint(anc)
            dominated = any(other is not node and other_name == name and other in anc
                            and any(u is not node and u not in anc for u in other.users)
                            for other_name, other, _ in out)
            return (int(from_bound), int(dominated), 0)
        partner = b.nodes.get(spec.indexed_by) if spec.indexed_by else None
        if partner is not None:
            return (0, 0, meets.setdefault((node, partner), _meet_distance(node, partner)))
        return (0, 0, 0)

    return sorted(out, key=key)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    frontier = [node]
    for _ in range(ANCESTOR_DEPTH):
        frontier = [a for n in frontier for a in n.all_input_nodes if a not in seen]
        seen.update(frontier)
        if not frontier:
            break
    return seen


def _forward_depths(node: torch.fx.Node, depth: int) -> dict[torch.fx.Node, int]:
    dist = {node: 0}
    frontier = [node]
    for d in range(1, depth + 1):
        frontier = [u for n in frontier for u in n.users if u not in dist]
        for u in frontier:
            dist.setdefault(u, d)
        if not frontier:
            break
    return dist


def _meet_distance(value: torch.fx.Node, index: torch.fx.Node) -> int:
    """Fewest ops from ``value`` plus from ``index`` to a node that reads both (large if none)."""
    a, c = _forward_depths(value, MEET_DEPTH), _forward_depths(index, MEET_DEPTH)
    return min((d + c[n] for n, d in a.items() if n in c), default=4 * MEET_DEPTH)


def swapped(binding: Binding, a: str, b: str) -> Binding:
    nodes = dict(binding.nodes)
    nodes[a], nodes[b] = nodes[b], nodes[a]
    return Binding(binding.pattern, binding.seed, nodes, dict(binding.dims), binding.missing)
