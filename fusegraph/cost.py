"""Cost estimates of FX nodes: HBM bytes moved and kernel launches, from shapes and dtypes alone.

The report weighs coverage by cost, not by op count: one fused kernel that replaces 130 tiny ops
on a ``[T, 4, 4]`` tensor saves launches, one that replaces two passes over ``[T, 4, D]`` saves
bandwidth. Both are estimated here from ``node.meta["val"]`` (fake or meta tensors are enough, so
this works for planning on any machine):

* ``node_bytes(node)``: bytes an unfused eager kernel for the node would read plus write. Each tensor
  input is read once (expanded/broadcast views count their distinct elements only), each output is
  written once. Views, ``getitem``, size arithmetic, placeholders and constants move nothing (0).
  In-place and scatter ops (``index_put_``, ``setitem``, fused ops that mutate a cache) count the
  values they read and the same amount written into the buffer, not the whole buffer, which can be
  a KV cache many times larger than what one step touches.
* ``node_launches(node)``: 1 per compute op (one eager kernel), 0 for views and bookkeeping.

These are first-order estimates (no cache reuse across ops, no multi-kernel ops such as a softmax
that launches two reductions); they are meant for comparing before and after fusion, where the same
model applies to both sides.

``coverage(unfused, sites, fused)`` turns them into the report's coverage table: per layer (module
prefix ``layers.N``) and in total, the share of ops, bytes and launches now inside fused kernels,
and the bytes and launches saved.
"""
from __future__ import annotations

import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
import torch.fx

from fusegraph.records import GraphStats, MatchSite

try:  # the compiler's canonical labels (one name per operation); a local fallback keeps us usable
    from fusegraph.canonicalize import op_label
except ImportError:  # pragma: no cover - only while the compiler core is being written
    def op_label(node: torch.fx.Node) -> str:
        if node.op in ("placeholder", "get_attr", "output"):
            return node.op
        if node.op == "call_method":
            return str(node.target)
        if node.op == "call_module":
            return "module"
        return getattr(node.target, "__name__", str(node.target))

CALL_OPS = ("call_function", "call_method", "call_module")

# Method / function names that return a view of their first input (no data moved, no kernel).
_VIEW_NAMES = frozenset({
    "view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "permute", "transpose", "t",
    "mT", "expand", "expand_as", "view_as", "reshape_as", "narrow", "select", "split",
    "split_with_sizes", "chunk", "unbind", "as_strided", "detach", "alias", "movedim", "swapaxes",
    "diagonal", "real", "imag", "view_as_real", "view_as_complex", "unfold",
})
# Methods that are no-ops when dtype/layout already match (canonicalize usually removed them).
_CAST_NAMES = frozenset({"to", "type", "type_as", "float", "double", "half", "bfloat16", "int", "long",
                         "bool", "contiguous"})
# Scatter-style writes: the first argument is the buffer, the others are the values written
# (``buf[idx] = v`` traces as the function operator.setitem or as the method ``__setitem__``).
_SCATTER_FUNCTIONS = (operator.setitem,)


def _target_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def node_val(node: Any) -> Any:
    """The traced value of a node: ``meta["val"]`` (fake tensor), else ShapeProp's ``tensor_meta``."""
    if not isinstance(node, torch.fx.Node):
        return None
    if "val" in node.meta:
        return node.meta["val"]
    return node.meta.get("tensor_meta")


def _tensors(val: Any) -> list[Any]:
    """Tensors (or TensorMetadata) inside a value: a tensor, or tuples/lists/dicts of them."""
    if isinstance(val, torch.Tensor):  # the common case, without the walk
        return [val]
    if val is None or isinstance(val, (int, float, bool)):
        return []
    found: list[Any] = []

    def visit(v: Any) -> None:
        if isinstance(v, torch.Tensor) or _is_tensor_meta(v):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    visit(val)
    return found


def _is_tensor_meta(v: Any) -> bool:
    return type(v).__name__ == "TensorMetadata"


def _itemsize(t: Any) -> int:
    return torch.empty((), dtype=t.dtype).element_size() if _is_tensor_meta(t) else t.element_size()


def tensor_bytes(t: Any, *, distinct: bool = False) -> int:
    """Bytes of a tensor; ``distinct`` counts an expanded (stride-0) dimension once."""
    if isinstance(t, torch.Tensor):  # fast path: every node of the graph, before and after rewriting
        if not distinct:
            return t.numel() * t.element_size()
        n = 1
        for size, stride in zip(t.shape, t.stride()):
            if stride != 0:
                n *= size
        return int(n) * t.element_size()
    shape = list(t.shape)   # TensorMetadata (ShapeProp)
    if distinct:
        shape = [s for s, st in zip(shape, t.stride) if st != 0]
    n = 1
    for s in shape:
        n *= int(s)
    return n * _itemsize(t)


def _is_view(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target is operator.getitem:
        return not _has_tensor_index(node)
    return node.op in ("call_method", "call_function") and _target_name(node) in _VIEW_NAMES


def _has_tensor_index(node: torch.fx.Node) -> bool:
    """``x[idx]`` with a tensor index gathers (a kernel); basic slicing is a view."""
    if len(node.args) < 2:
        return False
    source = node_val(node.args[0])
    if not (isinstance(source, torch.Tensor) or _is_tensor_meta(source)):
        return False  # getitem on a tuple/list output: bookkeeping
    index = node.args[1]
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.fx.Node) and isinstance(node_val(i), torch.Tensor) for i in items)


def _is_noop_cast(node: torch.fx.Node) -> bool:
    if node.op != "call_method" or _target_name(node) not in _CAST_NAMES or not node.args:
        return False
    out, inp = node_val(node), node_val(node.args[0])
    if not (isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor)):
        return False
    if _target_name(node) == "contiguous":
        return inp.is_contiguous()
    return out.dtype == inp.dtype and out.device == inp.device and tuple(out.shape) == tuple(inp.shape) \
        and not node.kwargs.get("copy", False)


def _mutated_slots(node: torch.fx.Node) -> set[int | str]:
    """Argument slots (position, or keyword name) an op writes into."""
    name = _target_name(node)
    if (node.op == "call_function" and node.target in _SCATTER_FUNCTIONS) or name == "__setitem__" or \
            (name.endswith("_") and not name.startswith("__")):
        return {0}
    fused = _fused_op(node)
    if fused is not None and fused.mutates_args:
        params = list(fused.signature.parameters)
        return {params.index(a) for a in fused.mutates_args if a in params} | set(fused.mutates_args)
    return set()


def _fused_op(node: torch.fx.Node) -> Any:
    if node.op != "call_function":
        return None
    from fusegraph import ops

    return ops.op_of_target(node.target)


def is_free(node: torch.fx.Node) -> bool:
    """Does ``node`` move no data and launch no kernel (views, bookkeeping, inputs, constants)?"""
    if node.op not in CALL_OPS:
        return True
    if _is_view(node) or _is_noop_cast(node):
        return True
    if not _tensors(node_val(node)) and not _mutated_slots(node):
        # No tensor result and no write: size arithmetic and the like. A node without any traced
        # value cannot be judged and counts as compute.
        return "val" in node.meta or "tensor_meta" in node.meta
    return False


def node_bytes(node: torch.fx.Node) -> int:
    """Estimated HBM bytes read + written by ``node`` (0 for views and bookkeeping)."""
    return _node_cost(node)[0]


def _node_cost(node: torch.fx.Node) -> tuple[int, bool]:
    """(bytes, free) of ``node``, remembered in ``node.meta`` with the argument objects they were
    computed from: the report weighs the graph before and after rewriting and per layer, and most
    nodes are the same in all."""
    seen = node.meta.get("fg_bytes")
    if seen is not None and seen[0] is node.args and seen[1] is node.kwargs:
        return seen[2], seen[3]
    free = is_free(node)
    result = 0 if free else _compute_bytes(node)
    node.meta["fg_bytes"] = (node.args, node.kwargs, result, free)
    return result, free


def _compute_bytes(node: torch.fx.Node) -> int:
    mutated = _mutated_slots(node)
    reads = written = 0   # bytes of the argument slots read / written in place
    for key, arg in (*enumerate(node.args), *node.kwargs.items()):
        for x in (arg if isinstance(arg, (list, tuple)) else (arg,)):
            if isinstance(x, torch.fx.Node):
                for t in _tensors(node_val(x)):
                    if key in mutated:
                        written += tensor_bytes(t)
                    else:
                        reads += tensor_bytes(t, distinct=True)
    if node.op == "call_module":
        reads += _module_param_bytes(node)
    if mutated:
        if reads == 0:  # in-place elementwise (x.mul_(2)): read and write the buffer
            return 2 * written
        return 2 * reads  # scatter: the values read, and as much written into the buffer
    return reads + sum(tensor_bytes(t) for t in _tensors(node_val(node)))


def _module_param_bytes(node: torch.fx.Node) -> int:
    gm = node.graph.owning_module
    if gm is None:
        return 0
    try:
        sub = gm.get_submodule(str(node.target))
    except AttributeError:
        return 0
    return sum(tensor_bytes(p) for p in list(sub.parameters()) + list(sub.buffers()))


def node_launches(node: torch.fx.Node) -> int:
    """Kernel launches of ``node`` run eagerly: 1 per compute op, 0 for views and bookkeeping."""
    nbytes, free = _node_cost(node)
    return 0 if nbytes == 0 and free else 1


def graph_stats(gm: torch.fx.GraphModule) -> GraphStats:
    """Op census (canonical labels), node count and estimated bytes / launches of a graph."""
    census: dict[str, int] = {}
    nodes = est_bytes = est_launches = 0
    for node in gm.graph.nodes:
        if node.op not in CALL_OPS:
            continue
        nodes += 1
        label = op_label(node)
        census[label] = census.get(label, 0) + 1
        nbytes, free = _node_cost(node)
        est_bytes += nbytes
        est_launches += 0 if nbytes == 0 and free else 1
    return GraphStats(nodes=nodes, op_census=dict(sorted(census.items(), key=lambda kv: (-kv[1], kv[0]))),
                      est_bytes=est_bytes, est_launches=est_launches)


# -- coverage ---------------------------------------------------------------------------------------
_LAYER = re.compile(r"(?:^|\.)(layers\.\d+)(?:\.|$)")
OUTSIDE = "(outside layers)"


def layer_of(module_path: str) -> str:
    """``"layers.3.attn.compressor"`` -> ``"layers.3"``; anything else -> ``OUTSIDE``."""
    m = _LAYER.search(module_path or "")
    return m.group(1) if m else OUTSIDE


def module_of(node: torch.fx.Node) -> str:
    """Module path a node was traced in (innermost ``nn_module_stack`` entry, call_module target)."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target).rsplit(".", 1)[0] if node.op == "get_attr" else str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return str(node.meta.get("fg_module", ""))


@dataclass
class CoverageRow:
    """Coverage of one scope (a layer, or the whole graph)."""

    scope: str
    sites: int = 0
    ops: int = 0                  # call nodes of the unfused graph
    ops_fused: int = 0            # ... of them now inside fused kernels
    bytes: int = 0                # estimated HBM bytes of the unfused graph
    bytes_fused: int = 0          # ... of the ops now inside fused kernels
    launches: int = 0
    launches_fused: int = 0
    bytes_saved: int = 0          # unfused bytes of the replaced ops minus the fused calls' bytes
    launches_saved: int = 0

    @staticmethod
    def _share(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    @property
    def ops_share(self) -> float:
        return self._share(self.ops_fused, self.ops)

    @property
    def bytes_share(self) -> float:
        return self._share(self.bytes_fused, self.bytes)

    @property
    def launches_share(self) -> float:
        return self._share(self.launches_fused, self.launches)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ops_share=round(self.ops_share, 6), bytes_share=round(self.bytes_share, 6),
                 launches_share=round(self.launches_share, 6))
        return d


@dataclass
class Coverage:
    total: CoverageRow
    layers: list[CoverageRow] = field(default_factory=list)   # in model order, OUTSIDE last

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total.as_dict(), "layers": [r.as_dict() for r in self.layers]}


def _layer_sort_key(scope: str) -> tuple[int, int]:
    m = re.fullmatch(r"layers\.(\d+)", scope)
    return (0, int(m.group(1))) if m else (1, 0)


def coverage(unfused: torch.fx.GraphModule, sites: Iterable[MatchSite],
             fused: torch.fx.GraphModule | None = None) -> Coverage:
    """Share of ops, bytes and launches of ``unfused`` now inside fused kernels, per layer and total.

    Node costs come from the graphs when the site's nodes are there (they are, for a compiled
    module); the site's own ``bytes_*`` / ``launches_*`` fields are the fallback.
    """
    sites = list(sites)
    rows: dict[str, CoverageRow] = {}
    total = CoverageRow("total")

    def row(scope: str) -> CoverageRow:
        if scope not in rows:
            rows[scope] = CoverageRow(scope)
        return rows[scope]

    replaced = {name for s in sites for name in s.replaced}
    by_name = {n.name: n for n in unfused.graph.nodes}
    for node in unfused.graph.nodes:
        if node.op not in CALL_OPS:
            continue
        b, l_ = node_bytes(node), node_launches(node)
        inside = node.name in replaced
        for r in (row(layer_of(module_of(node))), total):
            r.ops += 1
            r.bytes += b
            r.launches += l_
            if inside:
                r.ops_fused += 1
                r.bytes_fused += b
                r.launches_fused += l_

    fused_nodes = {n.name: n for n in fused.graph.nodes} if fused is not None else {}
    for site in sites:
        nodes = [by_name[n] for n in site.replaced if n in by_name]
        if len(nodes) == len(site.replaced) and nodes:
            before_b = sum(node_bytes(n) for n in nodes)
            before_l = sum(node_launches(n) for n in nodes)
        else:
            before_b, before_l = site.bytes_unfused, site.launches_unfused
        call = fused_nodes.get(site.fused_node)
        if call is not None and node_val(call) is not None:
            after_b, after_l = node_bytes(call), max(node_launches(call), 1)
        else:
            after_b, after_l = site.bytes_fused, site.launches_fused
        for r in (row(layer_of(site.module)), total):
            r.sites += 1
            r.bytes_saved += before_b - after_b
            r.launches_saved += before_l - after_l
    layers = [rows[k] for k in sorted(rows, key=_layer_sort_key)]
    return Coverage(total=total, layers=layers)
