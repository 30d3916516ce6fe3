"""The subgraph a match replaces, and the structural checks that make replacing it safe.

Region = every node on a path from the bound inputs to the matched outputs (a backward slice from the
outputs that stops at the inputs). Before a rewrite:
- every bound input feeds the region (the replacement consumes all pattern inputs);
- no intermediate has a user outside the region (else its value would vanish) — an *extra user*;
- the region is convex: no outside node sits between two region nodes;
- no in-place write inside the region hits an input the op does not declare as mutated, and no
  outside in-place write lands between the insertion point and the region's last node — *mutation*;
- each output keeps its dtype.
Each failed check is returned as (kind, sentence) for the near-miss record.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from fusegraph.canonicalize import is_inplace, mutated_input, tensor_val
from fusegraph.match.bind import Binding
from fusegraph.match.graph_facts import GraphFacts


@dataclass
class Region:
    nodes: list[torch.fx.Node]                 # topological order
    outputs: dict[int, torch.fx.Node]          # reference output index -> node it replaces
    mutations: list[torch.fx.Node]             # in-place nodes realizing the declared mutations
    insert_before: torch.fx.Node | None = None


def backward_slice(facts: GraphFacts, roots: list[torch.fx.Node], closure: set[torch.fx.Node],
                   bound: set[torch.fx.Node]) -> list[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen or n in bound or n not in closure or facts.free(n):
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return facts.topo(seen)


def check(facts: GraphFacts, binding: Binding, region: Region) -> tuple[str, str] | None:
    nodes = set(region.nodes)
    bound = binding.nodes
    outputs = set(region.outputs.values()) | set(region.mutations)
    for name, node in bound.items():
        if not any(u in nodes for u in node.users):
            return "missing input", f"input `{name}` ({node.name}) does not feed the matched subgraph"
    for n in region.nodes:
        if n in outputs:
            continue
        outside = [u for u in n.users if u not in nodes and not facts.is_static(u)]
        if outside:
            return "extra user", (f"intermediate `{n.name}` is also used by `{outside[0].name}` outside the "
                                  f"subgraph, so fusing would drop a value the model needs")
    declared = {bound[k] for k in binding.pattern.mutates}
    for n in region.nodes:
        target = mutated_input(n)
        if target is None:
            continue
        root = _root(target, nodes)
        if root in bound.values() and root not in declared:
            return "mutation", f"`{n.name}` writes in place into input `{root.name}`, which the fused op does not mutate"
    # Where the fused call goes: before the first outside user of an output (mutating ops: at the
    # last mutation), and never before an input.
    first_user = min((facts.order[u] for o in region.outputs.values() for u in o.users if u not in nodes),
                     default=None)
    if region.mutations:
        anchor = region.mutations[-1]
    elif first_user is not None:
        anchor = facts.nodes[first_user]
    else:
        anchor = region.nodes[-1]
    last_input = max((facts.order[n] for n in bound.values() if n.op != "get_attr"), default=-1)
    if facts.order[anchor] <= last_input:
        return "mutation", f"an input is produced after `{anchor.name}`, where the fused call must go"
    lo = min(facts.order[region.nodes[0]], facts.order[anchor])
    hi = max(facts.order[region.nodes[-1]], facts.order[anchor])
    inputs = set(bound.values())
    for n in facts.between(lo, hi):
        if n in nodes:
            continue
        target = mutated_input(n)
        if target is not None and (target in inputs or target in nodes):
            return "mutation", f"`{n.name}` writes into `{target.name}` between the subgraph's nodes"
        if any(a in nodes for a in n.all_input_nodes) and not facts.is_static(n) \
                and not _only_outputs(n, nodes, outputs):
            return "extra user", f"`{n.name}` sits inside the subgraph but is not part of it"
    for idx, node in region.outputs.items():
        if tensor_val(node) is None:
            return "view form", f"output {idx} matched `{node.name}`, which is not a single tensor"
    region.insert_before = anchor
    return None


def _root(node: torch.fx.Node, region: set[torch.fx.Node]) -> torch.fx.Node:
    """Follow views inside the region back to the value they alias."""
    while node in region and node.all_input_nodes and not is_inplace(node):
        node = node.all_input_nodes[0]
    return node


def _only_outputs(n: torch.fx.Node, nodes: set[torch.fx.Node], outputs: set[torch.fx.Node]) -> bool:
    return all(a not in nodes or a in outputs for a in n.all_input_nodes)
