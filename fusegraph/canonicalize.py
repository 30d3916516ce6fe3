"""Canonicalize: one name per operation, and no-op elimination.

Code in the wild spells one operation many ways: ``x.float()``, ``x.to(torch.float32)``,
``x.type_as(y)``; ``F.linear``, ``x @ w.t()``, ``torch.matmul``, ``torch.einsum``; ``view``,
``reshape``, ``flatten``, ``unflatten``; ``torch.sigmoid`` and ``F.sigmoid``; ``x[:, None]`` and
``unsqueeze``. Two things here make such spellings meet:

1. ``op_label(node)`` maps every FX node to a canonical label (``cast``, ``matmul``, ``view``,
   ``pow``, ``rsqrt``, ``index_put``, ...). Labels drive seed selection, the "plumbing" walk of the
   binder (views and casts that only re-express a value), the op census and near-miss messages.
2. ``canonicalize(gm)`` removes operations that do nothing for the traced shapes and dtypes (casts to
   the same dtype, reshapes to the same shape, ``contiguous`` / ``clone`` chains feeding nothing
   that mutates) and dead code, in the graph itself.

Deeper algebraic rewrites (``x*x`` into ``pow``, ``1/sqrt`` into ``rsqrt``, einsum into matmul) are
deliberately *not* done here: the matcher (``fusegraph.match``) establishes equivalence by evaluating
candidate subgraphs against each pattern's reference function, so any spelling that computes the
same values matches, including ones no rewrite rule anticipated. Pattern graphs get the same labels
when their reference functions are traced for near-miss diagnosis.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F

from fusegraph.functionalize import functionalize_fresh_writes, write_into, written

# -- labels ---------------------------------------------------------------------------------------
_FUNCTION_LABELS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.sub: "sub", torch.sub: "sub", operator.neg: "neg", torch.neg: "neg",
    operator.mul: "mul", torch.mul: "mul", operator.imul: "mul",
    operator.truediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.pow: "pow", torch.pow: "pow", torch.square: "pow",
    operator.matmul: "matmul", torch.matmul: "matmul", torch.mm: "matmul", torch.bmm: "matmul",
    F.linear: "matmul", torch.einsum: "matmul", torch.addmm: "matmul",
    torch.rsqrt: "rsqrt", torch.sqrt: "sqrt", torch.exp: "exp", torch.exp2: "exp2",
    torch.log2: "log2", torch.ceil: "ceil", torch.abs: "abs",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.softmax: "softmax", F.softmax: "softmax",
    torch.relu: "relu", F.relu: "relu", F.silu: "silu",
    torch.sum: "sum", torch.mean: "mean", torch.amax: "amax", torch.max: "max",
    torch.clamp: "clamp", torch.clamp_min: "clamp", torch.clip: "clamp",
    torch.cat: "cat", torch.concat: "cat", torch.stack: "stack",
    torch.flatten: "view", torch.reshape: "view", torch.unsqueeze: "view", torch.squeeze: "view",
    torch.transpose: "permute", torch.permute: "permute", torch.t: "permute",
    torch.where: "where", torch.masked_fill: "where", torch.gather: "gather",
    torch.index_select: "gather", torch.topk: "topk",
    operator.getitem: "getitem", operator.setitem: "index_put",
    torch.arange: "iota", torch.zeros: "full", torch.ones: "full", torch.full: "full",
    torch.empty: "full", torch.zeros_like: "full", torch.ones_like: "full", torch.full_like: "full",
    F.pad: "pad", F.embedding: "gather", written: "write", write_into: "write",
}

_METHOD_LABELS: dict[str, str] = {
    "float": "cast", "to": "cast", "type_as": "cast", "type": "cast", "bfloat16": "cast",
    "half": "cast", "double": "cast", "int": "cast", "long": "cast",
    "view": "view", "reshape": "view", "flatten": "view", "unflatten": "view", "unsqueeze": "view",
    "squeeze": "view", "expand": "view", "expand_as": "view", "view_as": "view",
    "transpose": "permute", "permute": "permute", "t": "permute", "mT": "permute",
    "contiguous": "copy", "clone": "copy",
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg",
    "pow": "pow", "square": "pow", "rsqrt": "rsqrt", "sqrt": "sqrt", "exp": "exp", "exp2": "exp2",
    "log2": "log2", "ceil": "ceil", "abs": "abs", "sigmoid": "sigmoid", "softmax": "softmax",
    "relu": "relu", "sum": "sum", "mean": "mean", "amax": "amax", "max": "max",
    "clamp": "clamp", "clamp_min": "clamp", "clamp_max": "clamp", "clip": "clamp",
    "matmul": "matmul", "mm": "matmul", "bmm": "matmul",
    "masked_fill": "where", "where": "where", "gather": "gather", "index_select": "gather",
    "index_put_": "index_put", "index_put": "index_put", "copy_": "copy_", "fill_": "fill_",
    "split": "split", "chunk": "split", "unbind": "split", "narrow": "getitem", "select": "getitem",
    "size": "size", "dim": "size", "new_zeros": "full", "new_full": "full", "new_empty": "full",
    "new_ones": "full", "topk": "topk", "__setitem__": "index_put", "__getitem__": "getitem",
}

# Labels of operations that only re-express one tensor input (binder walks through them).
PLUMBING = frozenset({"cast", "view", "permute", "copy", "getitem"})
# Labels that launch no kernel on their own (metadata only).
FREE = frozenset({"view", "permute", "getitem", "size", "placeholder", "get_attr", "output"})


def op_label(node: torch.fx.Node) -> str:
    """Canonical label of ``node``; unknown ops keep their own name, prefixed by their kind."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_function":
        target = node.target
        if target is getattr and len(node.args) > 1:  # x.T, x.mT, x.shape, x.dtype
            return "permute" if node.args[1] in ("T", "mT", "H", "mH") else "size"
        label = _FUNCTION_LABELS.get(target)
        if label:
            return label
        namespace = getattr(getattr(target, "namespace", None), "__str__", lambda: "")()
        if getattr(target, "namespace", None) == "fusegraph" or str(target).startswith("fusegraph."):
            return f"fused:{str(target).split('.')[1]}"
        name = getattr(target, "__name__", str(target))
        return f"fn:{name}" if not namespace else f"{namespace}:{name}"
    if node.op == "call_method":
        return _METHOD_LABELS.get(node.target, f"method:{node.target}")
    if node.op == "call_module":
        return "module"
    return node.op


_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift, operator.imatmul})


def is_inplace(node: torch.fx.Node) -> bool:
    """Does ``node`` write into one of its inputs (setitem, ``index_put_``, ``copy_``, ``x.add_``)?"""
    if node.op == "call_function":
        if getattr(node.target, "__module__", None) == "_operator":  # operator.and_ is plain `&`
            return node.target in _INPLACE_OPERATORS
        return str(getattr(node.target, "__name__", "")).endswith("_")
    if node.op == "call_method":
        name = str(node.target)
        if name in ("__setitem__", "__iadd__", "__imul__", "__isub__", "__itruediv__", "__ifloordiv__",
                    "__iand__", "__ior__", "__ixor__"):
            return True
        return name.endswith("_") and not name.startswith("__")
    return False


def mutated_input(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node an in-place op writes into (its first argument), if it is one."""
    if is_inplace(node) and node.args and isinstance(node.args[0], torch.fx.Node):
        return node.args[0]
    return None


def tensor_val(node: Any) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node):
        val = node.meta.get("val")
        return val if isinstance(val, torch.Tensor) else None
    return None


# -- no-op elimination ----------------------------------------------------------------------------
def _is_noop(node: torch.fx.Node) -> bool:
    label = op_label(node)
    if label not in ("cast", "view", "copy") or not node.args:
        return False
    src = node.args[0]
    out, inp = tensor_val(node), tensor_val(src)
    if out is None or inp is None:
        return False
    if any(is_inplace(u) for u in node.users):  # a copy that is later written must stay a copy
        return False
    if label == "copy":
        return node.target == "contiguous" and inp.is_contiguous()
    same = out.dtype == inp.dtype and out.shape == inp.shape and out.device == inp.device
    if label == "cast":
        return same and not node.kwargs.get("copy", False)
    return same and out.stride() == inp.stride()


def canonicalize(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Remove no-op casts/views/copies and dead code; label every node. Returns counts by rule."""
    removed = {"noop": 0, "dead": 0, "get_attr": 0}
    removed["writes"] = functionalize_fresh_writes(gm)
    first_attr: dict[str, torch.fx.Node] = {}
    for node in list(gm.graph.nodes):  # one node per attribute: writes and reads then meet
        if node.op != "get_attr":
            continue
        keep = first_attr.setdefault(str(node.target), node)
        if keep is not node:
            node.replace_all_uses_with(keep)
            gm.graph.erase_node(node)
            removed["get_attr"] += 1
    for node in list(gm.graph.nodes):
        if node.op in ("call_method", "call_function") and _is_noop(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed["noop"] += 1
    removed["dead"] = _eliminate_dead_code(gm.graph)
    for node in gm.graph.nodes:
        node.meta["fg_op"] = op_label(node)
    gm.recompile()
    return removed


def _eliminate_dead_code(graph: torch.fx.Graph) -> int:
    """``Graph.eliminate_dead_code(is_impure_node=_is_impure)`` without its lint pass, asking for
    impurity only of nodes nobody reads (torch asks it of every node, after a lint of the graph)."""
    removed = 0
    for node in reversed(graph.nodes):
        if not node.users and not _is_impure(node):
            graph.erase_node(node)
            removed += 1
    return removed


def _is_impure(node: torch.fx.Node) -> bool:
    return is_inplace(node) or node.is_impure()
