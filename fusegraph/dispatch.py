"""Dispatch planning: which provider each fused call would run on a target, and why not the others.

Planning asks each op's providers (``fusegraph.ops``) with the call's fake arguments, so it works for
any target on any machine. At run time the op selects again from the real tensors' device, so a
plan made for ``sm90`` on a laptop and the choice made on the H100 come from the same code.
"""
from __future__ import annotations

import operator

import torch
import torch.fx

from fusegraph import ops
from fusegraph.capture import memoized_meta
from fusegraph.ops import Selection


def plan_call(call: torch.fx.Node, target: str) -> Selection:
    op = ops.op_of_target(call.target)
    if op is None:
        raise ValueError(f"{call.name} is not a fused call")
    args = torch.fx.node.map_arg(call.args, meta_val)
    return op.select(target, tuple(args), {})


def meta_val(node: torch.fx.Node):
    """``node``'s meta value; results of fused calls made by the rewrite get theirs from the op's
    fake implementation run on meta tensors (rewrites add nodes after shape propagation)."""
    if "val" in node.meta:
        return node.meta["val"]
    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        val = meta_val(node.args[0])[node.args[1]]
    elif ops.op_of_target(node.target) is not None:
        args = torch.fx.node.map_arg(node.args, lambda a: _as_meta(meta_val(a)))
        val = memoized_meta("call_function", node.target, tuple(args), {}, lambda f, a, k: f(*a, **k))
    else:
        return None
    node.meta["val"] = val
    return val


def _as_meta(x):
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x
