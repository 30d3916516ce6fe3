"""Fills of fresh buffers become values for matching, and go back in place when nothing matched."""
from __future__ import annotations

import torch

from fusegraph.capture import symbolic_trace
from fusegraph.functionalize import (functionalize_fresh_writes, restore_inplace_writes, write_into,
                                     written)


class _Two(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, a):
        return self.fn(x, a)


class _Three(_Two):
    def forward(self, x, a, b):
        return self.fn(x, a, b)


def _capture(fn, *inputs):
    module = _Two(fn) if len(inputs) == 2 else _Three(fn)
    return symbolic_trace(module, inputs).graph_module


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def interleave(x, a, b):
    out = torch.empty_like(x)
    out[..., 0::2] = a
    out[..., 1::2] = b
    return out * 2


def test_a_filled_buffer_becomes_a_chain_of_values_with_the_same_result():
    x, a, b = torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4)
    gm = _capture(interleave, x, a, b)
    assert functionalize_fresh_writes(gm) == 2
    mul = next(n for n in gm.graph.nodes if n.name == "mul")
    assert mul.args[0].target is written and mul.args[0].args[0].target is written  # reads the last version
    gm.recompile()
    torch.testing.assert_close(gm(x, a, b), interleave(x, a, b), rtol=0, atol=0)


def test_restored_writes_are_in_place_again():
    x, a, b = torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4)
    gm = _capture(interleave, x, a, b)
    functionalize_fresh_writes(gm)
    assert restore_inplace_writes(gm) == 2
    assert _targets(gm).count(write_into) == 2 and written not in _targets(gm)
    gm.recompile()
    torch.testing.assert_close(gm(x, a, b), interleave(x, a, b), rtol=0, atol=0)


def test_a_read_before_the_last_write_keeps_the_buffer_as_it_is():
    def partly_read(x, a):
        out = torch.zeros_like(x)
        out[0] = a
        first = out.sum()          # sees the buffer half filled
        out[1] = a * 2
        return out + first

    x, a = torch.randn(2, 4), torch.randn(4)
    gm = _capture(partly_read, x, a)
    assert functionalize_fresh_writes(gm) == 0
    gm.recompile()
    torch.testing.assert_close(gm(x, a), partly_read(x, a))


def test_a_model_input_is_never_written_in_place():
    def fill_input_copy(x, a):
        out = x.clone()
        out[0] = a
        return out

    x, a = torch.randn(2, 4), torch.randn(4)
    gm = _capture(fill_input_copy, x, a)
    functionalize_fresh_writes(gm)
    clone = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "clone")
    clone.replace_all_uses_with(clone.args[0])  # as no-op elimination may do
    gm.graph.erase_node(clone)
    assert restore_inplace_writes(gm) == 0
    gm.recompile()
    kept = x.clone()
    torch.testing.assert_close(gm(x, a), fill_input_copy(x, a))
    torch.testing.assert_close(x, kept, rtol=0, atol=0)
