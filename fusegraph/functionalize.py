"""Writes into fresh buffers, as values.

Code in the wild often builds a result by allocating and filling it::

    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out

In an FX graph the result is the ``empty_like`` node, and the writes are side effects that no data
edge connects to the readers of ``out``. The matcher compares *values* and the rewrite replaces
*nodes*, so the filled buffer must be a node of its own. ``functionalize_fresh_writes`` turns each
write into a node that returns the written buffer (``written(buf, key, value)``) and points the
readers at the last one. It only does so when that changes nothing observable:

- the buffer is made in the graph by a factory (``empty_like``, ``zeros``, ``new_empty``, ``clone``, ...),
  so nothing outside the graph can see it;
- every write targets the buffer itself (not a view of it) and returns nothing anyone reads;
- every other use of the buffer comes after the last write, so no reader sees a partly filled
  buffer (and no view taken before a write could observe it).

``written`` copies, which keeps the values distinct while matching. After rewriting,
``restore_inplace_writes`` turns the writes that are left back into in-place writes where the
previous version has no other reader, so unmatched code pays no copy.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx

_FACTORY_FUNCTIONS = frozenset({torch.empty, torch.empty_like, torch.zeros, torch.zeros_like, torch.ones,
                                torch.ones_like, torch.full, torch.full_like, torch.clone})
_FACTORY_METHODS = frozenset({"new_empty", "new_zeros", "new_ones", "new_full", "clone"})


def written(buf: torch.Tensor, key: Any, value: Any) -> torch.Tensor:
    """``buf`` after ``buf[key] = value``, as a new tensor."""
    out = buf.clone()
    out[key] = value
    return out


def write_into(buf: torch.Tensor, key: Any, value: Any) -> torch.Tensor:
    """``buf[key] = value`` in place; returns ``buf`` (the restored form of ``written``)."""
    buf[key] = value
    return buf


def _is_factory(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _FACTORY_FUNCTIONS
    return node.op == "call_method" and node.target in _FACTORY_METHODS


def _write_parts(node: torch.fx.Node, buf: torch.fx.Node) -> tuple[Any, Any] | None:
    """(key, value) when ``node`` is ``buf[key] = value``."""
    is_setitem = (node.op == "call_function" and node.target is operator.setitem) or \
        (node.op == "call_method" and node.target == "__setitem__")
    if is_setitem and len(node.args) == 3 and not node.kwargs and node.args[0] is buf:
        return node.args[1], node.args[2]
    return None


def functionalize_fresh_writes(gm: torch.fx.GraphModule) -> int:
    """Rewrite fills of fresh buffers into value-returning writes; returns how many writes changed."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    changed = 0
    for buf in [n for n in graph.nodes if _is_factory(n)]:
        writes = [u for u in buf.users if _write_parts(u, buf) is not None]
        if not writes or any(w.users for w in writes) or any(buf in w.all_input_nodes[1:] for w in writes):
            continue
        writes.sort(key=order.__getitem__)
        readers = [u for u in buf.users if u not in writes]
        if any(order[r] < order[writes[-1]] for r in readers):
            continue
        current = buf
        for w in writes:
            key, value = _write_parts(w, buf)
            with graph.inserting_before(w):
                new = graph.call_function(written, (current, key, value))
            if "val" in buf.meta:
                new.meta["val"] = buf.meta["val"]
            new.meta["source"] = w.meta.get("source")
            new.meta["nn_module_stack"] = w.meta.get("nn_module_stack", {})
            graph.erase_node(w)
            current = new
            changed += 1
        for r in readers:
            r.replace_input_with(buf, current)
    return changed


def restore_inplace_writes(gm: torch.fx.GraphModule) -> int:
    """Turn ``written`` back into an in-place write wherever the buffer before it has no other reader."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not written:
            continue
        before = node.args[0]
        # Only a buffer the graph made may be written in place (no-op elimination can leave a
        # model input here, e.g. from ``x.clone()``), and only when nothing else reads it.
        fresh = _is_factory(before) or (before.op == "call_function" and before.target in (written, write_into))
        if fresh and len(before.users) == 1:
            node.target = write_into
            changed += 1
    return changed
