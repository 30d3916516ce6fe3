"""fusegraph.cost: bytes and launches per FX node from traced shapes, graph census, coverage."""
from __future__ import annotations

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fusegraph import cost
from fusegraph.ops import Selection
from fusegraph.records import MatchSite

T, D = 6, 40  # not multiples of anything


def traced(module: nn.Module, *inputs: torch.Tensor) -> torch.fx.GraphModule:
    gm = torch.fx.symbolic_trace(module)
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
    return gm


def node(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


class Elementwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(D))

    def forward(self, x):
        a = x * 2.0                      # mul: read T*D*4, write T*D*4
        b = a + self.w                   # add with a broadcast [D] weight
        c = b.unsqueeze(1)               # view
        d = c[:, 0, :4]                  # basic slicing: view
        e = d.to(torch.bfloat16)         # cast: read fp32, write bf16
        f = e.float().sum(-1)            # cast back + reduction
        n = x.size(0)                    # size: bookkeeping
        return f, n


def test_elementwise_view_cast_and_bookkeeping_costs():
    x = torch.randn(T, D)
    gm = traced(Elementwise(), x)
    four = 4
    assert cost.node_bytes(node(gm, "mul")) == T * D * four * 2
    assert cost.node_bytes(node(gm, "add")) == T * D * four * 2 + D * four
    assert cost.node_bytes(node(gm, "unsqueeze")) == 0 and cost.node_launches(node(gm, "unsqueeze")) == 0
    assert cost.node_bytes(node(gm, "getitem")) == 0 and cost.node_launches(node(gm, "getitem")) == 0
    assert cost.node_bytes(node(gm, "to")) == T * 4 * four + T * 4 * 2
    assert cost.node_bytes(node(gm, "size")) == 0 and cost.node_launches(node(gm, "size")) == 0
    for name in ("x", "w", "output"):
        assert cost.node_bytes(node(gm, name)) == 0 and cost.node_launches(node(gm, name)) == 0
    assert all(cost.node_launches(node(gm, n)) == 1 for n in ("mul", "add", "to", "float_1", "sum_1"))


class Gathers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(32, D))

    def forward(self, x, idx):
        g = x[idx]                        # tensor index: a gather kernel, not a view
        e = x[:, :1].expand(T, D) * 1.5   # expanded input: its distinct elements are read once
        self.cache[idx] = g               # setitem: scatter into a large buffer
        return g.sum() + e


def test_gather_expand_and_scatter_costs():
    x, idx = torch.randn(T, D), torch.tensor([0, 3, 5])
    gm = traced(Gathers(), x, idx)
    four, eight = 4, 8
    gather = next(n for n in gm.graph.nodes if n.op == "call_function" and n.name == "getitem")
    assert cost.node_launches(gather) == 1
    assert cost.node_bytes(gather) == T * D * four + 3 * eight + 3 * D * four
    mul = node(gm, "mul")
    assert cost.node_bytes(mul) == T * four + T * D * four  # the expanded [T, 1] column, then the output
    setitem = next(n for n in gm.graph.nodes if "setitem" in n.name)
    # the values and indices read, and as much written: not the whole 32-row cache
    assert cost.node_bytes(setitem) == 2 * (3 * eight + 3 * D * four)
    assert cost.node_launches(setitem) == 1


def test_noop_cast_and_contiguous_are_free():
    class M(nn.Module):
        def forward(self, x):
            return x.to(torch.float32).contiguous() + 1

    gm = traced(M(), torch.randn(T, D))
    assert cost.node_bytes(node(gm, "to")) == 0
    assert cost.node_bytes(node(gm, "contiguous")) == 0
    assert cost.node_launches(node(gm, "add")) == 1


def test_fused_op_call_counts_inputs_and_outputs_and_mutation():
    from fusegraph import ops

    post_op = ops.get("mhc_post")
    graph = torch.fx.Graph()
    f = graph.placeholder("f")
    res = graph.placeholder("residual")
    post = graph.placeholder("post")
    comb = graph.placeholder("comb")
    call = graph.call_function(post_op.torch_op, (f, res, post, comb))
    graph.output(call)
    gm = torch.fx.GraphModule(nn.Module(), graph)
    args = (torch.randn(T, D).bfloat16(), torch.randn(T, 4, D).bfloat16(), torch.rand(T, 4), torch.rand(T, 4, 4))
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*args)
    two, four = 2, 4
    expected = T * D * two + T * 4 * D * two + T * 4 * four + T * 16 * four + T * 4 * D * two
    assert cost.node_bytes(node(gm, "mhc_post_default")) == expected
    assert cost.node_launches(node(gm, "mhc_post_default")) == 1

    store = ops.get("set_mla_kv_buffer")
    graph = torch.fx.Graph()
    buf, loc, kn, kr = (graph.placeholder(n) for n in ("kv_buffer", "loc", "k_nope", "k_rope"))
    graph.call_function(store.torch_op, (buf, loc, kn, kr))
    graph.output(None)
    gm = torch.fx.GraphModule(nn.Module(), graph)
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(torch.zeros(1000, 64).bfloat16(), torch.tensor([1, 7, 9]),
                                 torch.randn(3, 48).bfloat16(), torch.randn(3, 16).bfloat16())
    call = next(n for n in gm.graph.nodes if n.op == "call_function")
    read = 3 * 8 + 3 * 48 * two + 3 * 16 * two
    assert cost.node_bytes(call) == 2 * read  # not the 1000-row buffer


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(D, D) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x) * 2.0)
        return x.sum()


def test_graph_stats_census_and_totals():
    gm = traced(TwoLayers(), torch.randn(T, D))
    stats = cost.graph_stats(gm)
    calls = [n for n in gm.graph.nodes if n.op in cost.CALL_OPS]
    assert stats.nodes == len(calls) == 7  # 2 x (linear module, mul, relu) + sum
    assert sum(stats.op_census.values()) == stats.nodes
    assert stats.op_census["module"] == 2 and stats.op_census["relu"] == 2
    assert stats.est_bytes == sum(cost.node_bytes(n) for n in calls) > 0
    assert stats.est_launches == 7
    linear = node(gm, "layers_0")
    # the module's parameters are read too
    assert cost.node_bytes(linear) == (T * D + D * D + D + T * D) * 4


def test_layer_and_module_of():
    assert cost.layer_of("layers.3.attn.compressor") == "layers.3"
    assert cost.layer_of("model.layers.12") == "layers.12"
    assert cost.layer_of("head") == cost.OUTSIDE and cost.layer_of("") == cost.OUTSIDE
    assert cost.layer_of("mylayers.3") == cost.OUTSIDE
    gm = traced(TwoLayers(), torch.randn(T, D))
    assert cost.module_of(node(gm, "layers_1")) == "layers.1"   # call_module: its own path
    assert cost.module_of(node(gm, "mul_1")) == ""              # traced in the root's forward
    gm = traced(Layered(), torch.randn(T, D))
    assert cost.module_of(node(gm, "add_1")) == "layers.1"      # traced inside Block layers.1


def _site(pattern: str, module: str, replaced: tuple[str, ...], fused_node: str = "f",
          bytes_unfused: int = 0, bytes_fused: int = 0, launches_unfused: int = 0) -> MatchSite:
    return MatchSite(pattern=pattern, op="op", module=module, anchor=replaced[0], fused_node=fused_node,
                     replaced=replaced, inputs={}, outputs={}, selection=Selection("op", "cpu", "torch"),
                     bytes_unfused=bytes_unfused, bytes_fused=bytes_fused, launches_unfused=launches_unfused)


class Layered(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * 3.0


class Block(nn.Module):
    def forward(self, x):
        y = x * 2.0
        z = y + 1.0
        return torch.sigmoid(z)


def test_coverage_per_layer_and_total():
    gm = traced(Layered(), torch.randn(T, D))
    names = [n.name for n in gm.graph.nodes if n.op in cost.CALL_OPS]
    assert names == ["mul", "add", "sigmoid", "mul_1", "add_1", "sigmoid_1", "mul_2"]
    op_bytes = T * D * 4 * 2  # every op reads and writes one [T, D] fp32 tensor
    # layer 0: mul+add fused; layer 1: nothing. The fused call's own bytes come from the site here.
    sites = [_site("p", "layers.0", ("mul", "add"), bytes_fused=op_bytes)]
    cov = cost.coverage(gm, sites)
    assert [r.scope for r in cov.layers] == ["layers.0", "layers.1", cost.OUTSIDE]
    l0, l1, outside = cov.layers
    assert (l0.ops, l0.ops_fused, l0.sites) == (3, 2, 1)
    assert (l0.bytes, l0.bytes_fused) == (3 * op_bytes, 2 * op_bytes)
    assert (l0.launches, l0.launches_fused) == (3, 2)
    assert l0.bytes_saved == op_bytes and l0.launches_saved == 1
    assert (l1.ops_fused, l1.sites, l1.bytes_saved) == (0, 0, 0)
    assert outside.ops == 1
    t = cov.total
    assert (t.ops, t.ops_fused, t.sites) == (7, 2, 1)
    assert abs(t.bytes_share - 2 / 7) < 1e-12 and abs(t.launches_share - 2 / 7) < 1e-12
    d = cov.as_dict()
    assert d["total"]["ops_share"] == round(2 / 7, 6) and len(d["layers"]) == 3


def test_coverage_falls_back_to_site_estimates_for_unknown_nodes():
    gm = traced(Layered(), torch.randn(T, D))
    sites = [_site("p", "layers.1", ("gone_1", "gone_2"), bytes_unfused=1000, bytes_fused=300, launches_unfused=5)]
    cov = cost.coverage(gm, sites)
    assert cov.total.bytes_saved == 700 and cov.total.launches_saved == 4
    assert cov.total.ops_fused == 0
