"""Capture: a model's forward as a torch.fx graph with shapes and dtypes on every node.

Default path: ``torch.fx.symbolic_trace`` (each node remembers its user source line, so near-miss
reports can point at it), then meta-tensor propagation so every node carries ``meta["val"]`` (a meta tensor,
or a plain Python value for sizes). Example inputs may be real, fake or meta tensors: propagation
never touches real data, so planning for a GPU works on a CPU-only machine and on meta-device
models. Meta tensors rather than FakeTensorMode: a 61-layer graph has ~55k nodes and meta dispatch
is several times cheaper per node, which is what keeps compiling ``pro`` within seconds. Every op
runs on the meta device, whatever device the graph names (Dynamo bakes ``device=x.device`` in as
``device(type='cpu')``; code writes ``torch.zeros(n)``), so such factories meet meta tensors.

Non-tensor forward arguments (``start_pos: int = 0``, given in ``example_inputs`` or left at their
default) are traced as constants: the graph is specialized to them, which is what a fixed cache
state means, and it asserts their value when it runs.

``capture`` tries that first. Code whose Python control flow depends on *sizes* (``for i in
range(x.size(0))``, ``if (start_pos + i) % r``: a decode step walking its tokens) cannot be traced
with symbolic sizes; ``capture`` then traces again with every value's meta tensor at hand, so sizes
are plain ints and such loops unroll (``symbolic_trace(..., concrete_shapes=True)``). That graph is
specialized to the example input shapes too, and ``Captured.note`` says so and why. Code whose
control flow depends on tensor *values* (``if x.sum() > 0``, ``.item()``, ``.tolist()``) still raises
``CaptureError``; ``fusegraph.compile`` then falls back to the Dynamo backend.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import operator
import os
import re
import sys
import traceback
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
    note: str = ""       # how the capture was specialized, and why, when it was
    # Tensor inputs' (shape, dtype) the graph is specialized to; None: shapes stay symbolic
    input_specs: tuple[tuple[tuple[int, ...], torch.dtype] | None, ...] | None = None


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
        if kind is _Proxy or kind is torch.fx.Proxy or kind is _ShapeProxy:
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


def _constant_args(model: torch.nn.Module, example_inputs: tuple) -> dict[str, Any]:
    """Forward parameters traced as constants: given inputs that are not tensors (``start_pos``
    passed as ``126``), and parameters past the given inputs that have non-tensor defaults."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    consts = {}
    for p, x in zip(params, example_inputs):
        if type(x) in (int, float, bool, str) or x is None:
            consts[p.name] = x
    for p in params[len(example_inputs):]:
        if p.default is not inspect.Parameter.empty and not isinstance(p.default, torch.Tensor):
            consts[p.name] = p.default
    return consts


def _forward_values(model: torch.nn.Module, example_inputs: tuple) -> list[Any]:
    """The value each forward parameter (each placeholder, in order) takes for ``example_inputs``."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    values = list(example_inputs)
    for p in params[len(example_inputs):]:
        values.append(None if p.default is inspect.Parameter.empty else p.default)
    return values


def capture(model: torch.nn.Module, example_inputs: tuple) -> Captured:
    """symbolic_trace with symbolic sizes; where Python control flow needs sizes, again with the
    example shapes (specialized). Raises ``CaptureError`` saying why both failed."""
    try:
        return symbolic_trace(model, example_inputs)
    except CaptureError as plain:
        first = str(plain)
    try:
        captured = symbolic_trace(model, example_inputs, concrete_shapes=True)
    except CaptureError as exc:
        raise CaptureError(f"{first}; traced again with concrete shapes: {exc}") from exc
    shapes = ", ".join("x".join(map(str, spec[0])) or "scalar" for spec in captured.input_specs or () if spec)
    note = (f"{first}; traced again with concrete shapes: the graph is specialized to input shapes "
            f"[{shapes}] and to its non-tensor arguments (other shapes raise)")
    return Captured(captured.graph_module, captured.method, note, captured.input_specs)


def symbolic_trace(model: torch.nn.Module, example_inputs: tuple, concrete_shapes: bool = False) -> Captured:
    example_inputs = tuple(example_inputs)
    tracer = _ShapeTracer(_forward_values(model, example_inputs)) if concrete_shapes else _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=_constant_args(model, example_inputs) or None)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        raise CaptureError(f"symbolic_trace failed{_user_frame(exc)}: {type(exc).__name__}: {_first_line(exc)}") from exc
    # Tensors the tracer baked in (``torch.arange(576)`` with a Python int) are graph constants, not
    # model state; GraphModule registers both as buffers, so remember which is which here.
    state = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    for node in graph.nodes:
        if node.op == "get_attr" and str(node.target) not in state:
            node.meta["fg_constant"] = True
    # Lazy: the passes rewrite the graph several times; Python code is generated once, at the end.
    gm = _LazyGraphModule(model, graph, class_name=type(model).__name__)
    if not concrete_shapes:
        propagate(gm, example_inputs)
        return Captured(gm, "symbolic_trace")
    # Every node got its meta value while tracing (the same ``meta_call`` propagation runs).
    specs = tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else None for x in example_inputs)
    return Captured(gm, "symbolic_trace", input_specs=specs)


def _user_frame(exc: BaseException) -> str:
    """`` at file.py:line (code)`` of the innermost user frame the exception passed through."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(skip in f.filename for skip in _SKIP_FRAMES)]
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or "").strip()
    return f" at {os.path.basename(f.filename)}:{f.lineno}" + (f" ({code})" if code else "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _plain_getattr(root: Any, target: str) -> Any:
    """``root.a.b`` without ``getattr`` on modules, which torch.fx patches while it traces."""
    obj = root
    for part in target.split("."):
        if isinstance(obj, torch.nn.Module):
            for store in (obj._parameters, obj._buffers, obj._modules):
                if part in store:
                    obj = store[part]
                    break
            else:
                obj = obj.__dict__[part]
        else:
            obj = getattr(obj, part)
    return obj


# -- tracing with concrete shapes -----------------------------------------------------------------
# Queries a traced tensor answers from its meta value (ints, dtypes, strides), not with a node. The
# device stays a traced value: the meta device must not be baked into the graph.
_SHAPE_QUERIES = frozenset({"shape", "ndim", "dtype", "size", "dim", "numel", "nelement", "stride",
                            "element_size", "itemsize", "is_contiguous", "is_floating_point", "is_complex",
                            "layout", "storage_offset"})
_STATIC_RESULTS = (int, float, bool, torch.Size, torch.dtype, torch.layout, torch.memory_format)


class _ShapeAware:
    """Proxy behaviour with the meta value known: sizes are ints, ``len`` and iteration work."""

    def __getattr__(self, k: str) -> Any:
        if k in _SHAPE_QUERIES:
            val = self.node.meta.get("val")
            if isinstance(val, torch.Tensor):
                return getattr(val, k)
        return _ShapeAttribute(self, k)

    def __len__(self) -> int:
        val = self.node.meta.get("val")
        if isinstance(val, torch.Tensor):
            if val.dim() == 0:
                raise TypeError("len() of a 0-d tensor")
            return int(val.shape[0])
        if isinstance(val, (tuple, list)):
            return len(val)
        raise TypeError(f"len() of a traced {type(val).__name__}")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _ShapeProxy(_ShapeAware, torch.fx.Proxy):
    pass


class _ShapeAttribute(_ShapeAware, torch.fx.proxy.Attribute):
    pass


class _ShapeTracer(_Tracer):
    """symbolic_trace that computes each node's meta value as the node is created.

    Size queries (``x.size(0)``, ``x.shape``, ``len(x)``, ``x.dim()``) then return Python ints and
    leave no node, so loops over sizes unroll and ``if`` on sizes takes its branch. Tensor values
    stay traced: ``bool()`` of one still fails (data-dependent control flow is not capturable here)."""

    def __init__(self, forward_values: list[Any]):
        super().__init__()
        self._values = [_to_meta(v) for v in forward_values]
        self._n_placeholders = 0
        self._attrs: dict[str, Any] = {}
        self._root: torch.nn.Module | None = None

    def trace(self, root, concrete_args=None):
        self._root = root if isinstance(root, torch.nn.Module) else None
        return super().trace(root, concrete_args)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        node.meta["val"] = val = self._meta_value(node)
        # A size query (``x.size(0)``, ``torch.numel(x)``) becomes its value. Only queries on tensors:
        # ``start_pos == 126``, the guard torch.fx adds for a constant argument, must stay a node.
        if kind in ("call_function", "call_method") and target is not getattr and \
                isinstance(val, _STATIC_RESULTS) and not node.users and \
                any(isinstance(a.meta.get("val"), torch.Tensor) for a in node.all_input_nodes):
            self.graph.erase_node(node)
            return val
        return proxy

    def _meta_value(self, node: torch.fx.Node) -> Any:
        if node.op == "placeholder":
            i = self._n_placeholders
            self._n_placeholders += 1
            return self._values[i] if i < len(self._values) else None
        if node.op == "get_attr":
            target = str(node.target)
            if target not in self._attrs:
                self._attrs[target] = _to_meta(_plain_getattr(self._root, target))
            return self._attrs[target]
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: a.meta.get("val"))
        if node.op == "call_module":  # a leaf (torch.nn.Linear, ...): run it outside the trace's patches
            with _untraced():
                return _meta_module_call(self._root.get_submodule(str(node.target)), args, kwargs)
        return meta_call(node, args, kwargs)


def _untraced():
    """Module calls and attribute reads as usual while torch.fx traces (it patches ``Module.__call__``)."""
    try:
        from torch.fx._symbolic_trace import _maybe_revert_all_patches
    except ImportError:  # pragma: no cover - private API; without it leaf modules fail to trace
        return contextlib.nullcontext()
    return _maybe_revert_all_patches()


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
        return _meta_module_call(self.fetch_attr(target), args, kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op in ("call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = meta_call(n, args, kwargs)  # (``run`` has set the current node already)
        else:
            result = super().run_node(n)
        n.meta["val"] = result
        return result


def _meta_module_call(mod: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    saved = {n: p for n, p in mod.named_parameters()} | {n: b for n, b in mod.named_buffers()}
    if all(t.device.type == "meta" for t in saved.values()):
        return mod(*args, **kwargs)
    return torch.func.functional_call(mod, {n: _to_meta(t) for n, t in saved.items()}, args, kwargs)


def meta_call(node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """The value of a ``call_function`` / ``call_method`` node on meta arguments (memoized)."""
    op, target = node.op, node.target
    is_method = op == "call_method"
    if is_method and target in _DEVICE_MOVES and args and isinstance(args[0], torch.Tensor):
        return args[0]  # x.cpu() / x.cuda(): already where propagation runs
    # Devices come as keywords, ``x.to(...)`` arguments or (Dynamo) device constants: cheap tests first,
    # this runs once per node of 50k-node graphs.
    if kwargs or (is_method and target == "to") or any(type(a) is torch.device for a in args):
        args, kwargs = _devices_to_meta(is_method and target == "to", args, kwargs)
    for a in node.all_input_nodes:
        if isinstance(a.meta.get("val"), torch.Tensor):
            return memoized_meta(op, target, args, kwargs, _RUN[op])
    # An op that reads no tensor creates one on the default device: make that meta too (a device
    # context costs a Python hook per op, so only where it can matter).
    with _META_DEVICE:
        return memoized_meta(op, target, args, kwargs, _RUN[op])


_RUN = {"call_function": lambda target, args, kwargs: target(*args, **kwargs),
        "call_method": lambda target, args, kwargs: getattr(args[0], target)(*args[1:], **kwargs)}

# Graphs can name a real device: Dynamo bakes ``device=x.device`` in as ``device(type='cpu')``, and
# code in the wild writes ``torch.arange(n, device="cuda")`` or ``torch.zeros(4)`` (the default
# device). Propagation runs every op on the meta device instead, so such a factory meets the meta
# tensors around it (else: "Tensor on device meta is not on the expected device cpu").
_META_DEVICE = torch.device("meta")
_DEVICE_MOVES = frozenset({"cpu", "cuda"})


def _devices_to_meta(is_to: bool, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``args``/``kwargs`` with every device they name replaced by the meta device."""
    def fix(x: Any) -> Any:
        if isinstance(x, torch.device):
            return _META_DEVICE
        if type(x) in (tuple, list):
            return type(x)(fix(e) for e in x)
        return x

    # ``x.to("cuda")``, ``x.to(0)``, ``x.to("cpu", torch.float32)``: a string or index naming a device
    names_device = is_to and len(args) > 1 and type(args[1]) in (str, int)
    if not names_device and "device" not in kwargs and \
            not any(isinstance(a, (torch.device, tuple, list)) for a in args) and \
            not any(isinstance(v, torch.device) for v in kwargs.values()):
        return args, kwargs  # the common case: nothing to change
    new_kwargs = {k: fix(v) for k, v in kwargs.items()}
    if new_kwargs.get("device") is not None:
        new_kwargs["device"] = _META_DEVICE  # "cuda", "cpu", 0: strings and indices name devices too
    new_args = tuple(fix(a) for a in args)
    if names_device:
        new_args = (new_args[0], _META_DEVICE) + new_args[2:]
    return new_args, new_kwargs


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
        where = _last_frame(node.meta.get("stack_trace"))  # Dynamo records a stack trace per node
    if where is None:
        return None
    file, lineno = where
    code = linecache.getline(file, lineno).strip()
    return f"{file}:{lineno}: {code}" if code else f"{file}:{lineno}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _last_frame(stack_trace: Any) -> tuple[str, int] | None:
    if not isinstance(stack_trace, str):
        return None
    frames = _FRAME.findall(stack_trace)
    return (frames[-1][0], int(frames[-1][1])) if frames else None


def module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module that created ``node`` ("" for the root)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return _dotted(path if isinstance(path, str) else str(path))
    if node.op in ("get_attr", "call_module"):
        return str(node.target).rsplit(".", 1)[0] if "." in str(node.target) else ""
    return ""


def _dotted(path: str) -> str:
    """Dynamo's module paths (``L['self'].layers[1].attn``, ``L['self']._modules['attn']``) as the
    dotted names of ``named_modules()`` (``layers.1.attn``); symbolic_trace's pass unchanged."""
    if "[" not in path:
        return path
    path = re.sub(r"^L\[['\"][^'\"]+['\"]\]", "", path)  # the compiled frame's local: the root
    path = re.sub(r"(?:\.__dict__\[['\"]_(?:modules|parameters|buffers)['\"]\]|\._(?:modules|parameters|buffers))(?=\[)",
                  "", path)
    path = re.sub(r"\[['\"]([^'\"]+)['\"]\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.lstrip(".")
