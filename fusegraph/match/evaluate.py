"""Evaluation: run a candidate subgraph and the pattern's reference on the same random inputs.

Inputs are drawn fresh from each input spec's generator (or a regime's override) with the graph's
own shapes, so literal sizes in the model's code keep working; parameters are never read (meta
tensors plan fine, and random values cannot hide an ordering mistake the way zeros or ones can).
The reference runs under a dispatch recorder that keeps every intermediate value, which is what
near-miss diagnosis aligns the graph's values against.

With a row cut (``rows``), inputs are drawn with their ``T`` axes cut, and every size the candidate
reads that was derived from a tensor is recomputed from the evaluated values instead of taken from
the trace; one derived from a tensor outside the evaluation cannot be, and raises ``NotScalable``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.utils._python_dispatch import TorchDispatchMode

from fusegraph.canonicalize import tensor_val
from fusegraph.match.bind import Binding
from fusegraph.match.graph_facts import GraphFacts
from fusegraph.match.rows import NotScalable, RowCut
from fusegraph.pattern import Regime


def draw_inputs(binding: Binding, regime: Regime, seed: int, cut: RowCut | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dims = cut.dims(binding.dims) if cut else binding.dims
    out = {}
    for name, node in binding.nodes.items():
        val = tensor_val(node)
        spec = binding.pattern.inputs[name]
        gen = regime.gens.get(name, spec.gen)
        shape = tuple(int(s) for s in val.shape)
        if cut:
            shape = cut.input_shape(spec.shape, shape)
        out[name] = gen(shape, val.dtype, g, dims).contiguous()
    return out


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dtype != torch.bool:
                self.values.append(t.detach())
        return out


def run_reference(binding: Binding, inputs: dict[str, torch.Tensor], record: bool = False,
                  cut: RowCut | None = None
                  ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], list[torch.Tensor]]:
    """(outputs, mutated inputs after the call, recorded intermediates)."""
    from fusegraph import ops

    pattern = binding.pattern
    op = ops.get(pattern.op)
    args = {k: v.clone() for k, v in inputs.items()}
    kwargs: dict[str, Any] = {}
    literals = pattern.literal_values(cut.dims(binding.dims) if cut else binding.dims)
    for name in op.signature.parameters:
        kwargs[name] = args[name] if name in args else literals.get(name)
    recorder = _Recorder()
    if record:
        with recorder:
            out = op.reference(**kwargs)
    else:
        out = op.reference(**kwargs)
    outs = () if out is None else (out if isinstance(out, tuple) else (out,))
    return outs, {k: args[k] for k in pattern.mutates}, recorder.values


def reference_shapes(binding: Binding) -> tuple[tuple[int, ...], ...]:
    """The fused op's output shapes at the graph's own sizes: its fake implementation on meta
    tensors (what the rewritten graph's shape check runs too)."""
    from fusegraph import ops

    pattern = binding.pattern
    op = ops.get(pattern.op)
    literals = pattern.literal_values(binding.dims)
    kwargs: dict[str, Any] = {}
    for name in op.signature.parameters:
        node = binding.nodes.get(name)
        if node is None:
            kwargs[name] = literals.get(name)
        else:
            val = tensor_val(node)
            kwargs[name] = torch.empty(tuple(int(s) for s in val.shape), dtype=val.dtype, device="meta")
    out = op.torch_op(**kwargs)
    outs = () if out is None else (out if isinstance(out, (tuple, list)) else (out,))
    return tuple(tuple(int(s) for s in o.shape) for o in outs)


def run_graph(facts: GraphFacts, nodes: list[torch.fx.Node], binding: Binding,
              inputs: dict[str, torch.Tensor], cut: RowCut | None = None) -> dict[torch.fx.Node, Any]:
    """Evaluate ``nodes`` (topological order) with the bound nodes set to ``inputs``."""
    env: dict[torch.fx.Node, Any] = {binding.nodes[k]: v.clone() for k, v in inputs.items()}

    def value(a: torch.fx.Node) -> Any:
        if a in env:
            return env[a]
        if cut is not None and (facts.is_static(a) or facts.is_constant(a)) and facts.size_sources(a):
            # A size read off a tensor: recompute it from the evaluated tensors, if they are here.
            outside = [s for s in facts.size_sources(a) if s not in env]
            if outside:
                raise NotScalable(f"`{a.name}` is derived from `{outside[0].name}`, outside the candidate")
            env[a] = _call(facts, a, value)
            return env[a]
        if facts.is_static(a):
            val = a.meta.get("val")
            # shape propagation ran on meta tensors; evaluation runs on the CPU
            return torch.device("cpu") if isinstance(val, torch.device) else val
        if facts.is_constant(a):
            env[a] = _call(facts, a, value)
            return env[a]
        if cut is not None and a.op == "get_attr":  # a parameter whose size a recomputed size reads
            return facts.attribute(a)
        raise KeyError(f"{a.name} is neither bound, computed, static nor constant")

    for node in nodes:
        if node not in env:
            env[node] = _call(facts, node, value)
    return env


def _call(facts: GraphFacts, node: torch.fx.Node, value) -> Any:
    args = torch.fx.node.map_arg(node.args, value)
    kwargs = torch.fx.node.map_arg(node.kwargs, value)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)
    if node.op == "call_module":
        return facts.gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "get_attr":
        return facts.constant_tensor(node)
    raise ValueError(f"cannot evaluate {node.op} node {node.name}")
