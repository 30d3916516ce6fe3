"""Graph queries the matcher needs: static values, constants, closures, backward search.

Vocabulary:
- *static* node: its value is not a tensor (a size, a dtype, a shape tuple). Its value is known from
  shape propagation (``meta["val"]``), so it never has to be bound or computed.
- *constant* node: a tensor computed from static values only (``torch.arange(n)``, ``x.new_zeros``
  excluded since it reads ``x``'s device only through ``x``). Recomputed on demand.
- *closure* of a set of bound nodes: every node computable from them (plus statics and constants).
  A pattern instance is a subset of the closure of its inputs: this is what keeps the search local
  and what makes the rewrite safe to place right after the inputs.
- *size sources* of a static or constant node: the computed tensors whose sizes it was derived
  from (``x.size(0)``, ``arange(x.size(0))``); an evaluation on fewer rows recomputes it from them
  (``rows``).

The queries run hundreds of thousands of times per compile, so they are set lookups over tables
built once, and closures are merged from memoized one-node closures.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

import torch
import torch.fx

from fusegraph.canonicalize import PLUMBING, op_label


class GraphFacts:
    """Cached per-graph facts (topological order, static/constant classification)."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        # One pass in topological order classifies every node (inputs come first), so the queries
        # below are set lookups: they run hundreds of thousands of times per compile.
        self._static: set[torch.fx.Node] = {n for n in self.nodes if self._compute_static(n)}
        self._constant: set[torch.fx.Node] = set()
        # Tensors the tracer baked into the graph (``torch.arange(576)`` with a Python int; capture
        # marks them, Dynamo names them ``_tensor_constant<i>``) are constants too.
        for n in self.nodes:
            if n.op == "get_attr" and n not in self._static and (
                    n.meta.get("fg_constant") or str(n.target).startswith("_tensor_constant")):
                self._constant.add(n)
            elif n.op in ("call_function", "call_method") and n not in self._static and all(
                    a in self._static or a in self._constant for a in n.all_input_nodes):
                self._constant.add(n)
        # Constants computed from a bound value (positions = arange(T) bound as ``loc``) must be
        # recomputed from the bound value: ``bound_to`` marks them for the current binding.
        self.unfree: frozenset[torch.fx.Node] = frozenset()
        # For ``closure`` (hundreds of calls over thousands of nodes per pattern): inputs as tuples,
        # joinable nodes and free candidates as sets.
        self._inputs = {n: tuple(n.all_input_nodes) for n in self.nodes}
        self._joinable = {n for n in self.nodes if self._compute_joinable(n)}
        self._static_or_constant = self._static | self._constant
        self._unfree_sets: dict[frozenset, frozenset] = {}
        self._after_memo: dict[torch.fx.Node, frozenset[torch.fx.Node]] = {}
        # Tensor nodes by rank, in graph order: seed search only looks at values of the spec's rank.
        self._by_rank: dict[int, list[torch.fx.Node]] = {}
        for n in self.nodes:
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor) and n.op != "output":
                self._by_rank.setdefault(val.dim(), []).append(n)
        self._sources_memo: dict[torch.fx.Node, frozenset[torch.fx.Node]] | None = None  # size_sources
        self._free_memo: dict[torch.fx.Node, tuple[frozenset[torch.fx.Node], frozenset[torch.fx.Node]]] = {}
        self._single_memo: dict[tuple[torch.fx.Node, frozenset], frozenset[torch.fx.Node]] = {}

    def bound_to(self, bound: Iterable[torch.fx.Node]) -> None:
        out: set[torch.fx.Node] = set()
        for b in bound:
            if self.is_constant(b):
                out |= self._constants_after(b)
        key = frozenset(out)
        # One object per distinct set: closures are memoized under it (``closure``).
        self.unfree = self._unfree_sets.setdefault(key, key)

    def _constants_after(self, node: torch.fx.Node) -> frozenset[torch.fx.Node]:
        """Constants computed from the constant ``node`` (positions = arange(T) feeds every layer)."""
        hit = self._after_memo.get(node)
        if hit is None:
            out: set[torch.fx.Node] = set()
            stack = [node]
            while stack:
                for u in stack.pop().users:
                    if u not in out and self.is_constant(u):
                        out.add(u)
                        stack.append(u)
            hit = self._after_memo[node] = frozenset(out)
        return hit

    def is_static(self, node: torch.fx.Node) -> bool:
        return node in self._static

    def _compute_static(self, node: torch.fx.Node) -> bool:
        if node.op in ("placeholder", "get_attr"):
            return not isinstance(node.meta.get("val", getattr(self._attr(node), "data", None)), torch.Tensor)
        return "val" in node.meta and not isinstance(node.meta["val"], torch.Tensor) and \
            not _holds_tensor(node.meta["val"])

    def tensors_of_rank(self, rank: int) -> list[torch.fx.Node]:
        """Nodes whose value is a tensor of ``rank`` dimensions, in graph order."""
        return self._by_rank.get(rank, [])

    def attribute(self, node: torch.fx.Node):
        """The object a ``get_attr`` node reads (a parameter or buffer: meta tensors plan fine)."""
        return self._attr(node)

    def size_sources(self, node: torch.fx.Node) -> frozenset[torch.fx.Node]:
        """For a static or constant node: the computed tensors its value was derived from (through
        sizes, shape arithmetic and constants), parameters excluded (their shapes are the model's,
        not the example's). Empty: the value is a literal of the model's code or config."""
        if self._sources_memo is None:  # one pass in topological order (inputs first) on first use
            memo: dict[torch.fx.Node, frozenset[torch.fx.Node]] = {}
            for n in self.nodes:
                if n not in self._static_or_constant:
                    continue
                if isinstance(n.meta.get("val"), _NOT_SIZES):  # x.device, x.dtype: not a row count
                    memo[n] = _EMPTY
                    continue
                out: set[torch.fx.Node] = set()
                for a in self._inputs[n]:
                    if a in self._static_or_constant:
                        out |= memo.get(a, _EMPTY)
                    elif a.op != "get_attr":
                        out.add(a)
                memo[n] = frozenset(out) if out else _EMPTY
            self._sources_memo = memo
        return self._sources_memo.get(node, _EMPTY)

    def _attr(self, node: torch.fx.Node):
        if node.op != "get_attr":
            return None
        obj = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj

    def is_constant(self, node: torch.fx.Node) -> bool:
        """A tensor computed from static values only (or baked into the graph by the tracer)."""
        return node in self._constant

    def constant_tensor(self, node: torch.fx.Node) -> torch.Tensor:
        """The value of a traced-in tensor constant, on the CPU where evaluation runs."""
        value = self._attr(node)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{node.target} is not a tensor attribute")
        if value.device.type == "meta":
            raise ValueError(f"tensor constant {node.target} has no data (meta device)")
        return value.detach().cpu()

    def free(self, node: torch.fx.Node) -> bool:
        """Available to any computation without binding: statics and constants."""
        return self.is_static(node) or (self.is_constant(node) and node not in self.unfree)

    def joinable(self, node: torch.fx.Node) -> bool:
        """Can ``node`` be part of a closure? Module calls hide their parameters: never."""
        return node in self._joinable

    def _compute_joinable(self, node: torch.fx.Node) -> bool:
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            return not any(True for _ in mod.parameters()) and not any(True for _ in mod.buffers())
        return node.op in ("call_function", "call_method")

    def closure(self, bound: Iterable[torch.fx.Node]) -> set[torch.fx.Node]:
        """Every node computable from ``bound`` (with statics and constants), found from their users.

        Built from memoized one-node closures: a value many sites share (positions feed the index
        math of every layer: ~1700 nodes on ``pro``) is walked once, not once per binding step.
        Merging is exact: a node computable from the union but from no single part reads a value
        outside the largest part, so a walk from the users of the other parts' nodes finds it."""
        parts = sorted((self._single(b) for b in dict.fromkeys(bound)), key=len, reverse=True)
        if not parts:
            return set()
        inside = set(parts[0])
        if len(parts) == 1:
            return inside
        others: set[torch.fx.Node] = set().union(*parts[1:])
        others -= inside
        inside |= others
        return self._grow(inside, [u for n in others for u in n.users])

    def _single(self, node: torch.fx.Node) -> frozenset[torch.fx.Node]:
        """Closure of one node under the current ``unfree``. The closure with no constant unfree is
        memoized with the constants it reads from outside; when none of those is unfree now, it is
        the answer (every node in it still has its operands inside or free), else walk again."""
        free = self._free_memo.get(node)
        if free is None:
            saved, self.unfree = self.unfree, _EMPTY
            try:
                inside = frozenset(self._grow({node}, list(node.users)))
            finally:
                self.unfree = saved
            reads = frozenset(a for n in inside for a in self._inputs[n]
                              if a not in inside and a in self._constant)
            free = self._free_memo[node] = (inside, reads)
        inside, reads = free
        if not self.unfree or self.unfree.isdisjoint(reads):
            return inside
        key = (node, self.unfree)
        hit = self._single_memo.get(key)
        if hit is None:
            hit = self._single_memo[key] = frozenset(self._grow({node}, list(node.users)))
        return hit

    def _grow(self, inside: set[torch.fx.Node], start: list[torch.fx.Node]) -> set[torch.fx.Node]:
        """Add to ``inside`` every node reachable through users whose operands become all available."""
        queue = deque(start)
        joinable, static, inputs = self._joinable, self._static, self._inputs
        maybe_free, unfree = self._static_or_constant, self.unfree
        while queue:
            node = queue.popleft()
            if node in inside or node not in joinable or node in static:
                continue
            if all(a in inside or (a in maybe_free and a not in unfree) for a in inputs[node]):
                inside.add(node)
                queue.extend(node.users)
        return inside

    def frontier(self, closure: set[torch.fx.Node]) -> list[torch.fx.Node]:
        """Nodes that consume the closure but need something else too."""
        out = {u for n in closure for u in n.users if u not in closure and u.op != "output"}
        return sorted(out, key=self.order.__getitem__)

    def backward_fits(self, start: torch.fx.Node, fits: Callable[[torch.fx.Node], bool],
                      stop: set[torch.fx.Node], max_depth: int = 8, limit: int = 4) -> list[torch.fx.Node]:
        """Breadth-first from ``start`` towards the inputs: up to ``limit`` nodes ``fits`` accepts,
        searching on past each (``loc // P`` fits an index spec too; ``loc`` lies behind it)."""
        seen = {start}
        queue = deque([(start, 0)])
        found: list[torch.fx.Node] = []
        static, inputs = self._static, self._inputs
        while queue and len(found) < limit:
            node, depth = queue.popleft()
            if node in stop or node in static:
                continue
            if fits(node):
                found.append(node)
            if depth == max_depth:
                continue
            for a in inputs[node]:
                if a not in seen:
                    seen.add(a)
                    queue.append((a, depth + 1))
        return found

    def inputs(self, node: torch.fx.Node) -> tuple[torch.fx.Node, ...]:
        """``node.all_input_nodes`` as a tuple computed once (the property builds a list per call)."""
        return self._inputs[node]

    def uses_through_plumbing(self, node: torch.fx.Node, labels: tuple[str, ...], depth: int = 3) -> bool:
        """Is ``node`` consumed (directly or through views/casts) by an op with one of ``labels``?"""
        frontier = [node]
        for _ in range(depth):
            nxt = []
            for n in frontier:
                for u in n.users:
                    label = op_label(u)
                    if label in labels:
                        return True
                    if label in PLUMBING:
                        nxt.append(u)
            frontier = nxt
        return False

    def between(self, lo: int, hi: int) -> list[torch.fx.Node]:
        """Nodes strictly between topological positions ``lo`` and ``hi``."""
        return self.nodes[lo + 1:hi]

    def topo(self, nodes: Iterable[torch.fx.Node]) -> list[torch.fx.Node]:
        return sorted(nodes, key=self.order.__getitem__)


def reachable(starts: Iterable[torch.fx.Node], within: set[torch.fx.Node],
              step: Callable[[torch.fx.Node], Iterable[torch.fx.Node]]) -> set[torch.fx.Node]:
    """``starts`` and every node of ``within`` they reach by ``step`` (users, or inputs) through
    nodes of ``within``."""
    out = set(starts)
    stack = list(out)
    while stack:
        for n in step(stack.pop()):
            if n in within and n not in out:
                out.add(n)
                stack.append(n)
    return out


def downstream(node: torch.fx.Node, within: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """``node`` and every node of ``within`` it reaches through users that are in ``within``."""
    return reachable((node,), within, _users)


def _users(node: torch.fx.Node) -> Iterable[torch.fx.Node]:
    return node.users


_NOT_SIZES = (torch.device, torch.dtype, torch.layout, torch.memory_format)
_EMPTY: frozenset[torch.fx.Node] = frozenset()


def _holds_tensor(val) -> bool:
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) or _holds_tensor(v) for v in val)
    return False
