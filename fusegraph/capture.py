"""Capture: a model's forward as a torch.fx graph with shapes and dtypes on every node.

Default path: ``torch.fx.symbolic_trace`` (each node remembers its user source line, so near-miss
reports can point at it), then meta-tensor propagation so every node carries ``meta["val"]`` (a meta tensor,
or a plain Python value for sizes). Example inputs may be real, fake or meta tensors: propagation
never touches real data, so planning for a GPU works on a CPU-only machine and on meta-device
models. Meta tensors rather than FakeTensorMode: a 61-layer graph has ~55k nodes and meta dispatch
is several times cheaper per node, which is what keeps compiling ``pro`` within seconds.

Non-tensor forward arguments that have defaults (``start_pos: int = 0``) are traced as constants:
the graph is specialized to them, which is what a fixed cache state means.

Models that symbolic tracing cannot handle (data-dependent control flow, cache objects, third-party
code) raise ``CaptureError``; ``fusegraph.compile`` then falls back to the Dynamo backend.
"""
from __future__ import annotations

import inspect
import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx


class CaptureError(RuntimeError):
    """Symbolic tracing or shape propagation failed; the message says where."""


@dataclass(frozen=True)
class Captured:
    graph_module: torch.fx.GraphModule
    method: str          # "symbolic_trace" or "dynamo"


_SKIP_FRAMES = (f"{os.sep}torch{os.sep}", f"{os.sep}fusegraph{os.sep}capture.py")


class _Tracer(torch.fx.Tracer):
    """symbolic_trace that remembers, per node, the user source line that created it.

    torch's own ``record_stack_traces`` extracts a whole traceback per node (seconds per thousand
    nodes); walking frames to the first one outside torch costs microseconds."""

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        frame = sys._getframe(1)
        while frame is not None and any(s in frame.f_code.co_filename for s in _SKIP_FRAMES):
            frame = frame.f_back
        if frame is not None:
            node.meta["source"] = (frame.f_code.co_filename, frame.f_lineno)
        return node


def _constant_args(model: torch.nn.Module, n_given: int) -> dict[str, Any]:
    """Forward parameters past the given inputs that have non-tensor defaults: trace as constants."""
    params = list(inspect.signature(model.forward).parameters.values())
    consts = {}
    for p in params[n_given:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty and not isinstance(p.default, torch.Tensor):
            consts[p.name] = p.default
    return consts


def symbolic_trace(model: torch.nn.Module, example_inputs: tuple) -> Captured:
    try:
        graph = _Tracer().trace(model, concrete_args=_constant_args(model, len(example_inputs)) or None)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        raise CaptureError(f"symbolic_trace failed: {type(exc).__name__}: {exc}") from exc
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    # The trace specializes the constants; keep only the placeholders that take the given inputs.
    propagate(gm, example_inputs)
    return Captured(gm, "symbolic_trace")


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            return x
        out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        return torch.nn.Parameter(out, requires_grad=x.requires_grad) if isinstance(x, torch.nn.Parameter) else out
    return x


class _MetaProp(torch.fx.Interpreter):
    """Runs the graph on meta tensors and stores each node's value in ``meta["val"]``."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self._attrs: dict[str, Any] = {}

    def get_attr(self, target, args, kwargs):
        if target not in self._attrs:
            self._attrs[target] = _to_meta(super().get_attr(target, args, kwargs))
        return self._attrs[target]

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        saved = {n: p for n, p in mod.named_parameters()} | {n: b for n, b in mod.named_buffers()}
        if all(t.device.type == "meta" for t in saved.values()):
            return mod(*args, **kwargs)
        return torch.func.functional_call(mod, {n: _to_meta(t) for n, t in saved.items()}, args, kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["val"] = result
        return result


def propagate(gm: torch.fx.GraphModule, example_inputs: tuple) -> None:
    """Fill ``node.meta["val"]`` by running the graph on meta tensors (no real compute)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = [_to_meta(x) for x in example_inputs]
    # Placeholders that were specialized to constants by the trace receive their default.
    for node in placeholders[len(example_inputs):]:
        inputs.append(node.args[0] if node.args else None)
    try:
        with torch.no_grad():
            _MetaProp(gm).run(*inputs)
    except Exception as exc:
        raise CaptureError(f"shape propagation failed: {type(exc).__name__}: {exc}") from exc


def source_of(node: torch.fx.Node) -> str | None:
    """``file:line: code`` of the user code that created ``node``, when known."""
    where = node.meta.get("source")
    if where is None:
        return None
    file, lineno = where
    code = linecache.getline(file, lineno).strip()
    return f"{file}:{lineno}: {code}" if code else f"{file}:{lineno}"


def module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module that created ``node`` ("" for the root)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return path if isinstance(path, str) else str(path)
    if node.op in ("get_attr", "call_module"):
        return str(node.target).rsplit(".", 1)[0] if "." in str(node.target) else ""
    return ""
