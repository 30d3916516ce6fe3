"""``GraphFacts`` memoized queries give what a plain walk gives, and the evaluation workspace restores state.

* ``closure`` is built from memoized one-node closures merged (``graph_facts``); it must equal the
  plain breadth-first walk from the users of the bound set, for random bound sets of the ``tiny``
  graph and under the ``unfree`` sets that binding leaves behind (constants recomputed from a bound
  value are not free).
* ``size_sources``: a size read off a computed tensor comes from that tensor; a device is no size.
* ``downstream``: the seed walk the binder and the matcher share.
* ``evaluation_workspace`` runs on one thread and gives the thread count back, nested or not.
"""
from __future__ import annotations

import random
from collections import deque

import pytest
import torch

from fusegraph import capture
from fusegraph.canonicalize import canonicalize
from fusegraph.match.graph_facts import GraphFacts, downstream
from fusegraph.match.workspace import evaluation_workspace
from fusegraph.models.presets import build_model, example_inputs


@pytest.fixture(scope="module")
def facts() -> GraphFacts:
    model = build_model("tiny", device="meta")
    gm = capture.symbolic_trace(model, example_inputs(model, 8)).graph_module
    canonicalize(gm)
    return GraphFacts(gm)


def _plain_closure(facts: GraphFacts, bound) -> set:
    inside = set(bound)
    queue = deque(u for b in inside for u in b.users)
    while queue:
        node = queue.popleft()
        if node in inside or not facts.joinable(node) or facts.is_static(node):
            continue
        if all(a in inside or facts.free(a) for a in node.all_input_nodes):
            inside.add(node)
            queue.extend(node.users)
    return inside


def test_closure_equals_plain_walk(facts: GraphFacts):
    rng = random.Random(0)
    tensors = [n for n in facts.nodes if isinstance(n.meta.get("val"), torch.Tensor) and n.op != "output"]
    constants = [n for n in tensors if facts.is_constant(n)]
    assert constants, "the tiny graph has index constants (positions): the unfree case is exercised"
    for trial in range(120):
        bound = rng.sample(tensors, rng.randint(1, 4))
        if trial % 3 == 0:
            bound.append(rng.choice(constants))
        # the unfree set binding left behind: sometimes of this bound set, sometimes of another
        facts.bound_to(bound if trial % 2 else rng.sample(constants, 2))
        assert facts.closure(bound) == _plain_closure(facts, bound), f"trial {trial}"
    facts.bound_to(())


def test_size_sources(facts: GraphFacts):
    sizes = [n for n in facts.nodes if n.op == "call_method" and n.target == "size"
             and not facts.is_static(n.args[0]) and not facts.is_constant(n.args[0])
             and n.args[0].op != "get_attr"]
    assert sizes
    for n in sizes:
        assert n.args[0] in facts.size_sources(n)
    devices = [n for n in facts.nodes if isinstance(n.meta.get("val"), torch.device)]
    assert all(not facts.size_sources(n) for n in devices)


def test_downstream(facts: GraphFacts):
    seed = next(n for n in facts.nodes if n.op == "placeholder")
    within = _plain_closure(facts, [seed])
    down = downstream(seed, within)
    assert seed in down and down <= within | {seed}
    for n in down - {seed}:   # every node reached has an input already reached
        assert any(a in down for a in n.all_input_nodes)


def test_workspace_one_thread_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with evaluation_workspace():
            assert torch.get_num_threads() == 1
            with evaluation_workspace():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
            x = torch.randn(1 << 20)   # allocations still work with the retained heap
            assert float(x.square().sum()) > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
