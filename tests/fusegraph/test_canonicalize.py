"""Canonical labels for spellings found in the wild, and no-op elimination."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fusegraph.canonicalize import canonicalize, op_label


def _labels(fn, *args):
    gm = torch.fx.symbolic_trace(fn)
    return [op_label(n) for n in gm.graph.nodes if n.op not in ("placeholder", "output")]


def test_spellings_share_a_label():
    assert _labels(lambda x: x.float()) == _labels(lambda x: x.to(torch.float32)) == ["cast"]
    assert _labels(lambda x, w: F.linear(x, w)) == _labels(lambda x, w: x @ w) == ["matmul"]
    assert _labels(lambda x, w: torch.einsum("tk,nk->tn", x, w)) == ["matmul"]
    assert _labels(lambda x: x.square()) == _labels(lambda x: x.pow(2)) == ["pow"]
    assert _labels(lambda x: x.reshape(2, -1)) == _labels(lambda x: x.flatten(1)) == ["view"]
    assert _labels(lambda x: x.mT) == ["permute"]
    assert _labels(lambda x: torch.sigmoid(x)) == _labels(lambda x: F.sigmoid(x)) == ["sigmoid"]


def test_noop_casts_and_views_are_removed_and_get_attrs_merged():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4))
            self.register_buffer("cache", torch.zeros(2, 4))

        def forward(self, x):
            y = x.float().reshape(2, 4) * self.w
            self.cache.copy_(y)  # a write and a read of one buffer must meet at one node
            return y.to(torch.float32) + self.cache

    m = M()
    gm = torch.fx.symbolic_trace(m)
    from fusegraph.capture import propagate
    x = torch.randn(2, 4)
    propagate(gm, (x,))
    removed = canonicalize(gm)
    assert removed["noop"] >= 2 and removed["get_attr"] >= 1
    attrs = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    assert len(attrs) == len(set(attrs))
    assert [op_label(n) for n in gm.graph.nodes].count("cast") == 0
    torch.testing.assert_close(gm(x), M.forward(m, x))


def test_bitwise_operators_are_not_mistaken_for_in_place_ops():
    """``operator.and_`` is plain ``&``: its trailing underscore must not make it a mutation."""
    from fusegraph.canonicalize import is_inplace, mutated_input

    def f(a, b):
        c = (a & b) | b   # traced as operator.and_ / operator.or_
        return c.add_(1)

    gm = torch.fx.symbolic_trace(f)
    kinds = {n.name: is_inplace(n) for n in gm.graph.nodes if n.op.startswith("call")}
    assert kinds == {"and_": False, "or_": False, "add_": True}
    add = next(n for n in gm.graph.nodes if n.name == "add_")
    assert mutated_input(add).name == "or_"
