"""Dispatch planning: which provider each fused call would run on a target, and why not the others.

Planning asks each op's providers (``fusegraph.ops``) with the call's fake arguments, so it works for
any target on any machine. At run time the op selects again from the real tensors' device, so a
plan made for ``sm90`` on a laptop and the choice made on the H100 come from the same code.
"""
from __future__ import annotations

import torch
import torch.fx

from fusegraph import ops
from fusegraph.ops import Selection


def plan_call(call: torch.fx.Node, target: str) -> Selection:
    op = ops.op_of_target(call.target)
    if op is None:
        raise ValueError(f"{call.name} is not a fused call")
    args = torch.fx.node.map_arg(call.args, lambda n: n.meta.get("val"))
    return op.select(target, tuple(args), {})
