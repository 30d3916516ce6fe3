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
import operator
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.fx._lazy_graph_module import _LazyGraphModule


class CaptureError(RuntimeError):
    """Symbolic tracing or shape propagation failed; the message says where."""


@dataclass(frozen=True)
class Captured:
    graph_module: torch.fx.GraphModule
    method: str          # "symbolic_trace" or "dynamo"


_ATOMS = frozenset({int, float, bool, str, type(None), type(Ellipsis), torch.dtype, torch.device})
_SKIP_FRAMES = (f"{os.sep}torch{os.sep}", f"{os.sep}fusegraph{os.sep}capture.py")


class _Proxy(torch.fx.Proxy):
    """A proxy that also records item assignment (``out[..., 0::2] = y``), which torch.fx's own
    proxy refuses; the write becomes an ``operator.setitem`` node like any other in-place op."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _Tracer(torch.fx.Tracer):
    """symbolic_trace that remembers, per node, the user source line that created it.

    torch's own ``record_stack_traces`` extracts a whole traceback per node (seconds per thousand
    nodes); walking frames to the first one outside torch costs microseconds."""

    # Buffers are traced values: otherwise ``self.cache[:, :4]`` runs eagerly while tracing and
    # the graph keeps a snapshot of the buffer as a constant, blind to later writes (wrong results).
    proxy_buffer_attributes = True

    def __init__(self):
        super().__init__()
        self._param_names: dict[int, str] = {}
        self._buffer_names: dict[int, str] = {}

    def trace(self, root, concrete_args=None):
        # torch.fx finds a parameter's name by scanning ``named_parameters()`` on every access, which is
        # quadratic in model size (seconds for a 43-layer model); look names up by identity instead.
        if isinstance(root, torch.nn.Module):
            self._param_names = {id(p): n for n, p in root.named_parameters()}
            self._buffer_names = {id(b): n for n, b in root.named_buffers()}
        return super().trace(root, concrete_args)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if isinstance(attr_val, torch.Tensor):
            name = self._param_names.get(id(attr_val)) if isinstance(attr_val, torch.nn.Parameter) else None
            if name is None and self.proxy_buffer_attributes:
                name = self._buffer_names.get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a):
        # Fast paths for what a model passes almost always (torch's general path costs ~30 µs
        # per argument: opaque-type and pytree checks).
        kind = type(a)
        if kind is _Proxy or kind is torch.fx.Proxy:
            return a.node
        if kind in _ATOMS:
            return a
        if kind is tuple or kind is list:
            return kind(self.create_arg(x) for x in a)
        if isinstance(a, torch.Tensor):
            names = self._param_names if isinstance(a, torch.nn.Parameter) else self._buffer_names
            name = names.get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _Proxy(node, self)

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
    # Tensors the tracer baked in (``torch.arange(576)`` with a Python int) are graph constants, not
    # model state; GraphModule registers both as buffers, so remember which is which here.
    state = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    for node in graph.nodes:
        if node.op == "get_attr" and str(node.target) not in state:
            node.meta["fg_constant"] = True
    # Lazy: the passes rewrite the graph several times; Python code is generated once, at the end.
    gm = _LazyGraphModule(model, graph, class_name=type(model).__name__)
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
    """Runs the graph on meta tensors and stores each node's value in ``meta["val"]``.

    Meta kernels of most aten ops run as Python decompositions (tens of microseconds per op), and a
    DSV4 graph repeats each layer's ops with identical shapes 43 or 61 times, so results are memoized
    by (op, argument metadata): a repeated node costs a dictionary lookup. Sound because an op's
    output metadata is a function of its inputs' metadata and its constant arguments; ops whose
    arguments are anything else (modules, opaque objects) are always run."""

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
        if n.op in ("call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            with self._set_current_node(n):
                result = memoized_meta(n.op, n.target, args, kwargs, getattr(self, n.op))
        else:
            result = super().run_node(n)
        n.meta["val"] = result
        return result


def memoized_meta(op: str, target: Any, args: tuple, kwargs: dict, run: Any) -> Any:
    """``run(target, args, kwargs)`` on meta arguments, answered from the memo when the same op
    already ran on arguments with the same metadata."""
    key = _memo_key(op, target, args, kwargs)
    if key is not None:
        hit = _META_MEMO.get(key)
        if hit is not None:
            return _rebuild(hit)
    result = run(target, args, kwargs)
    if key is not None:
        template = _template(result)
        if template is not None:
            if len(_META_MEMO) > _META_MEMO_MAX:
                _META_MEMO.clear()
            _META_MEMO[key] = template
    return result


_META_MEMO: dict[tuple, Any] = {}
_META_MEMO_MAX = 200_000
_PLAIN = (int, float, bool, str, type(None), type(Ellipsis), torch.dtype, torch.layout, torch.memory_format)


def _describe(x: Any) -> Any:
    """Hashable description of an argument's metadata; raises TypeError for anything opaque."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "meta" or type(x) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError("not a plain meta tensor")
        return ("T", tuple(x.shape), x.stride(), x.storage_offset(), x.dtype)
    if isinstance(x, _PLAIN):
        return (type(x), x)       # the type keeps 1, 1.0 and True apart
    if isinstance(x, (tuple, list)):
        return (type(x), tuple(_describe(e) for e in x))
    if isinstance(x, dict):
        return (dict, tuple((k, _describe(v)) for k, v in x.items()))
    if isinstance(x, slice):
        return (slice, _describe(x.start), _describe(x.stop), _describe(x.step))
    if isinstance(x, torch.device):
        return (torch.device, str(x))
    raise TypeError(f"opaque argument {type(x).__name__}")


def _memo_key(op: str, target: Any, args: tuple, kwargs: dict) -> tuple | None:
    try:
        key = (op, target, _describe(args), _describe(kwargs))
        hash(key)
        return key
    except TypeError:
        return None


def _template(result: Any) -> Any:
    """What ``_rebuild`` needs to recreate ``result``; None when the result is not memoizable."""
    if isinstance(result, torch.Tensor):
        if result.device.type != "meta" or type(result) is not torch.Tensor:
            return None
        return ("T", tuple(result.shape), result.stride(), result.dtype)
    if isinstance(result, (int, float, bool, type(None), torch.dtype)):
        return ("V", result)
    if isinstance(result, (tuple, list)) and type(result) in (tuple, list, torch.Size):
        parts = [_template(r) for r in result]
        return None if any(p is None for p in parts) else (type(result), parts)
    return None


def _rebuild(template: Any) -> Any:
    kind = template[0]
    if kind == "T":
        _, shape, stride, dtype = template
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    if kind == "V":
        return template[1]
    return kind(_rebuild(t) for t in template[1])


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
