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
