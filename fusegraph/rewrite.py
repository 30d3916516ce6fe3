"""Rewrite: replace each matched region with one call of its fused op, then compose neighbours.

The call is ``torch.ops.fusegraph.<op>.default(*args)`` with arguments in the op's signature order:
bound graph values, literals, ``None`` for parameters the pattern leaves out. It goes where the region
fed its first outside user (mutating ops: where the region wrote), get_attr inputs are moved before it
if needed, every output node's uses move to the call's results (with a reshape when the model kept
the value under another shape of the same layout), and the region is erased.

Compositions (``Composition``) then merge two fused calls that feed each other into one composed op,
e.g. ``mhc_post`` whose result is the residual of the next ``mhc_pre`` becomes ``mhc_post_pre``. The
composed op is by definition the composition of the two, so no verification is needed, only the
checks that nothing else reads the first call's result before the second one runs.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fusegraph import ops
from fusegraph.canonicalize import tensor_val
from fusegraph.match.matcher import Match
from fusegraph.pattern import Composition


@dataclass
class Rewritten:
    call: torch.fx.Node
    replaced: list[str]
    outputs: dict[int, str]           # output index -> replaced node name
    inputs: dict[str, str]            # op parameter -> input node name
    results: dict[torch.fx.Node, torch.fx.Node]  # replaced output node -> node now holding its value


def apply(gm: torch.fx.GraphModule, match: Match) -> Rewritten:
    graph = gm.graph
    op = ops.get(match.pattern.op)
    region = match.region
    anchor = _insertion_point(match)
    literals = match.pattern.literal_values(match.binding.dims)
    args = []
    for name in op.signature.parameters:
        if name in match.binding.nodes:
            node = match.binding.nodes[name]
            if node.op == "get_attr":
                _move_before(node, anchor)
            args.append(node)
        else:
            args.append(literals.get(name))
    with graph.inserting_before(anchor):
        call = graph.call_function(op.torch_op, tuple(args))
        call.meta["fg_pattern"] = match.pattern.name
        results: dict[int, torch.fx.Node] = {}
        if len(region.outputs) == 1 and not _returns_tuple(op):
            results[0] = call
        else:
            for i in region.outputs:
                results[i] = graph.call_function(operator.getitem, (call, i))
        for i, old in region.outputs.items():
            new = results[i]
            want = tensor_val(old)
            if want is not None and "val" in old.meta:
                new.meta["val"] = old.meta["val"]
            ref_shape = match.ref_shapes.get(i)
            if want is not None and ref_shape is not None and tuple(want.shape) != ref_shape:
                new = graph.call_method("reshape", (new, tuple(int(s) for s in want.shape)))
                new.meta["val"] = old.meta["val"]
            results[i] = new
    for i, old in region.outputs.items():
        old.replace_all_uses_with(results[i])
    for node in region.mutations:
        if node.users:  # index_put_ returns the written tensor
            node.replace_all_uses_with(_root(node))
    replaced = [n.name for n in region.nodes]
    inside = set(region.nodes)
    for node in region.nodes:  # sizes read off erased intermediates are known: inline them
        for user in [u for u in node.users if u not in inside]:
            _inline_static(user)
    for node in reversed(region.nodes):
        if not node.users:
            graph.erase_node(node)
    return Rewritten(call, replaced, {i: n.name for i, n in region.outputs.items()},
                     {k: v.name for k, v in match.binding.nodes.items()},
                     {old: results[i] for i, old in region.outputs.items()})


def _insertion_point(match: Match) -> torch.fx.Node:
    """Before the first outside user of an output as the graph stands now (earlier rewrites may
    have replaced the user seen at match time); mutating ops stay where the model wrote."""
    region = match.region
    if region.mutations:
        return region.mutations[-1]
    inside = set(region.nodes)
    users = [u for o in region.outputs.values() for u in o.users if u not in inside]
    return min(users, key=lambda n: n._sort_key) if users else region.nodes[-1]  # graph order


def _inline_static(node: torch.fx.Node) -> None:
    """Replace a size/shape node by its value (from shape propagation) in all its users."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) or "val" not in node.meta:
        return
    value = tuple(int(v) for v in val) if isinstance(val, (tuple, list, torch.Size)) else val
    for user in list(node.users):
        user.args = torch.fx.node.map_arg(user.args, lambda a: value if a is node else a)
        user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)
    node.graph.erase_node(node)


def _returns_tuple(op: ops.FusedOp) -> bool:
    ann = op.signature.return_annotation
    return "tuple" in str(ann).lower()


def _root(node: torch.fx.Node) -> torch.fx.Node:
    return node.args[0]


def _move_before(node: torch.fx.Node, anchor: torch.fx.Node) -> None:
    if node._sort_key > anchor._sort_key:
        anchor.prepend(node)


# -- compositions --------------------------------------------------------------------------------
def compose(gm: torch.fx.GraphModule, comp: Composition) -> list[tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node]]:
    """Merge every (first, second) pair linked as ``comp`` says. Returns (first, second, composed)."""
    first_op, second_op, composed_op = ops.get(comp.first), ops.get(comp.second), ops.get(comp.op)
    done = []
    for second in list(gm.graph.nodes):
        if second.target is not second_op.torch_op:
            continue
        params = list(second_op.signature.parameters)
        first = None
        for pname, out_idx in comp.link.items():
            arg = second.args[params.index(pname)]
            src = _source_call(arg, out_idx, first_op)
            if src is None or (first is not None and src is not first):
                first = None
                break
            first = src
        if first is None:
            continue
        # Nothing may read the first call's results between the two calls, and if the composed op
        # does not return them, nothing may read them at all.
        keeps_first = _n_outputs(composed_op) >= _n_outputs(first_op) + _n_outputs(second_op)
        readers = [u for r in _results(first) for u in r.users
                   if u is not second and (u._sort_key < second._sort_key or not keeps_first)]
        if readers:
            continue
        kwargs: dict[str, Any] = {}
        conflict = False
        for call, op in ((first, first_op), (second, second_op)):
            for pname, value in zip(op.signature.parameters, call.args):
                if call is second and pname in comp.link:
                    continue
                if pname in kwargs and not _same(kwargs[pname], value):
                    conflict = True
                kwargs[pname] = value
        if conflict:
            continue
        args = tuple(kwargs.get(p) for p in composed_op.signature.parameters)
        with gm.graph.inserting_before(second):
            new = gm.graph.call_function(composed_op.torch_op, args)
        _redirect(gm, second, new, _n_outputs(first_op), _returns_tuple(second_op))
        gm.graph.erase_node(second)
        if keeps_first:
            _redirect(gm, first, new, 0, _returns_tuple(first_op))
        else:  # the first call's results fed only the second: they go with it
            for r in _results(first):
                if r is not first and not r.users:
                    gm.graph.erase_node(r)
        gm.graph.erase_node(first)
        done.append((first, second, new))
    return done


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node):
        return a is b
    return a == b


def _n_outputs(op: ops.FusedOp) -> int:
    ann = str(op.signature.return_annotation)
    if "tuple" not in ann.lower():
        return 0 if ann in ("None", "<class 'NoneType'>") else 1
    return ann.count("Tensor")


def _source_call(arg: Any, out_idx: int | None, op: ops.FusedOp) -> torch.fx.Node | None:
    if not isinstance(arg, torch.fx.Node):
        return None
    if out_idx is None:
        return arg if arg.target is op.torch_op else None
    if arg.target is operator.getitem and arg.args[1] == out_idx and \
            isinstance(arg.args[0], torch.fx.Node) and arg.args[0].target is op.torch_op:
        return arg.args[0]
    return None


def _results(call: torch.fx.Node) -> list[torch.fx.Node]:
    getitems = [u for u in call.users if u.target is operator.getitem]
    return getitems or [call]


def _redirect(gm: torch.fx.GraphModule, old: torch.fx.Node, new: torch.fx.Node, offset: int,
              tuple_out: bool) -> None:
    """Uses of ``old``'s outputs now read the outputs of ``new`` starting at ``offset``."""
    if tuple_out:
        for user in list(old.users):
            user.args = (new, user.args[1] + offset)
    elif old.users:  # a single-tensor op used directly
        with gm.graph.inserting_after(new):
            item = gm.graph.call_function(operator.getitem, (new, offset))
        old.replace_all_uses_with(item)
