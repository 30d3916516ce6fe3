"""Capture: what symbolic tracing records must be what the model does."""
from __future__ import annotations

import torch
from torch.fx._lazy_graph_module import _LazyGraphModule

from fusegraph.capture import symbolic_trace


class SlicesItsCache(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(3, 8))

    def forward(self, x, i):
        self.cache[0] = x                                   # a write ...
        return self.cache[:, :4].reshape(-1)[i] * 2          # ... then a slice of the buffer alone


def test_a_buffer_sliced_on_its_own_is_read_when_the_graph_runs_not_frozen_at_trace_time():
    model = SlicesItsCache()
    x, i = torch.randn(8), torch.tensor([0, 1, 5])
    gm = symbolic_trace(model, (x, i)).graph_module
    assert not any(str(n.target).startswith("_tensor_constant") for n in gm.graph.nodes)
    _LazyGraphModule.force_recompile(gm)
    model.cache.zero_()
    want = model(x, i)
    model.cache.zero_()
    torch.testing.assert_close(gm(x, i), want, rtol=0, atol=0)
    assert want[:2].abs().sum() > 0  # the written row is what the slice reads


def test_item_assignment_on_a_traced_value_is_recorded():
    class Fill(torch.nn.Module):
        def forward(self, x):
            out = torch.empty_like(x)
            out[..., 0::2] = x[..., 1::2]
            out[..., 1::2] = x[..., 0::2]
            return out

    x = torch.randn(2, 6)
    gm = symbolic_trace(Fill(), (x,)).graph_module
    _LazyGraphModule.force_recompile(gm)
    torch.testing.assert_close(gm(x), Fill()(x), rtol=0, atol=0)


# -- devices named in the graph ---------------------------------------------------------------------
class NamesDevices(torch.nn.Module):
    def forward(self, x):
        n = x.shape[-1]
        ramp = torch.arange(n, device="cpu")               # an explicit real device
        ones = torch.ones(n)                                # the default device
        return (x * ramp + ones).to("cpu").cpu()


def test_propagation_runs_ops_that_name_a_real_device_on_the_meta_device():
    x = torch.randn(3, 5)
    gm = symbolic_trace(NamesDevices(), (x.to("meta"),)).graph_module
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert out.meta["val"].device.type == "meta" and tuple(out.meta["val"].shape) == (3, 5)
    _LazyGraphModule.force_recompile(gm)
    torch.testing.assert_close(gm(x), NamesDevices()(x), rtol=0, atol=0)


def test_propagation_of_a_dynamo_graph_with_baked_devices():
    """Dynamo bakes ``device=x.device`` in as ``device(type='cpu')``; propagation must still run."""
    from fusegraph.capture import propagate

    graphs = []

    def keep(gm, example_inputs):
        graphs.append((gm, example_inputs))
        return gm.forward

    class Baked(torch.nn.Module):
        def forward(self, x):
            return x * torch.arange(x.size(-1), device=x.device) + torch.zeros(x.size(-1), device=x.device)

    torch._dynamo.reset()
    try:
        torch.compile(Baked(), backend=keep, dynamic=False)(torch.randn(2, 4))
    finally:
        torch._dynamo.reset()
    gm, example_inputs = graphs[0]
    propagate(gm, tuple(example_inputs))
    assert all(n.meta["val"].device.type == "meta" for n in gm.graph.nodes
               if isinstance(n.meta.get("val"), torch.Tensor))


# -- sizes in Python control flow: traced again with concrete shapes -------------------------------
class RowByRow(torch.nn.Module):
    """A decode-style state update: a loop over tokens, branches on Python ints, per-row writes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(6, 6)  # a leaf module: a call_module node, run on meta while tracing
        self.register_buffer("state", torch.zeros(4, 6))

    def forward(self, x, start: int):
        out = []
        for i in range(x.size(0)):
            pos = start + i
            self.state[pos % len(self.state)] = self.proj(x[i]) * 2
            if (pos + 1) % 2:
                continue
            out.append(self.state.sum(0, keepdim=True) + x.shape[1])
        if not out:
            return x.new_zeros(0, x.shape[-1])
        return torch.cat(out, 0)


def test_loops_and_branches_on_sizes_capture_with_concrete_shapes():
    from fusegraph.capture import capture

    x = torch.randn(3, 6)
    model, twin = RowByRow(), RowByRow()
    captured = capture(model, (x, 5))
    assert captured.method == "symbolic_trace"
    assert "concrete shapes" in captured.note and "cannot be interpreted as an integer" in captured.note
    assert captured.input_specs == (((3, 6), torch.float32), None)
    gm = captured.graph_module
    assert not any(n.op == "call_method" and n.target == "size" for n in gm.graph.nodes)
    assert sum(n.op == "call_module" for n in gm.graph.nodes) == 3  # the loop unrolled
    _LazyGraphModule.force_recompile(gm)
    got, want = gm(x, 5), twin(x, 5)
    assert got.shape == (2, 6)  # positions 5 and 7 complete a pair
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(model.state, twin.state, rtol=0, atol=0)  # the writes ran on the buffer
    try:
        gm(x, 6)
    except AssertionError as exc:  # the int it was specialized to is asserted when it runs
        assert "start has been specialized to have value 5" in str(exc)
    else:
        raise AssertionError("a graph specialized to start=5 ran with start=6")


def test_control_flow_on_tensor_values_is_not_captured():
    import pytest

    from fusegraph.capture import CaptureError, capture

    class Branches(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(CaptureError) as err:
        capture(Branches(), (torch.randn(4),))
    assert "traced again with concrete shapes" in str(err.value)


# -- names Dynamo gives ------------------------------------------------------------------------------
def test_dynamo_module_paths_and_stack_traces_read_like_symbolic_trace_ones():
    from fusegraph.capture import module_path, source_of

    graph = torch.fx.Graph()
    node = graph.placeholder("x")
    for dynamo_path, dotted in [("L['self'].layers.1.attn", "layers.1.attn"),
                                ("L['self'].layers[1].attn", "layers.1.attn"),
                                ("L['self']._modules['layers']._modules['0'].attn", "layers.0.attn"),
                                ("L['self'].__dict__['_modules']['model'].__dict__['_modules']['layers'][0]",
                                 "model.layers.0"),
                                ("L['self']", ""), ("layers.2.ffn", "layers.2.ffn")]:
        node.meta["nn_module_stack"] = {"k": (dynamo_path, torch.nn.Module)}
        assert module_path(node) == dotted, dynamo_path
    node.meta["stack_trace"] = (f'  File "{__file__}", line 1, in <module>\n    x\n'
                                f'  File "{__file__}", line 2, in forward\n    y\n')
    assert source_of(node).startswith(f"{__file__}:2: ")
