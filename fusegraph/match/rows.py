"""Verifying a candidate on fewer rows: the token axis ``T`` cut to ``EVAL_ROWS`` where that is exact.

Evaluation cost is proportional to the example's token count (a ``pro`` sparse attention gathers
``[T, 1152, 512]`` rows per draw), but what verification establishes, "this subgraph computes the
reference's function", does not need many tokens when every token is computed the same way. So a
large candidate (``MIN_ELEMENTS``) is first evaluated with every ``T`` axis of its inputs cut to
``EVAL_ROWS`` rows, under these guards:

1. **the reference is row-wise in T**: replacing a middle row of every ``T``-shaped input changes exactly
   that row of every output, nothing else (``reference_rowwise``, once per pattern and sizes), and it
   mutates nothing (a cache write is cheap to verify at full size anyway);
2. **the candidate's sizes follow its inputs**: every size or shape-derived constant the candidate
   reads is recomputed from the evaluated values (``x.size(0)`` of a bound input gives the cut
   count); one derived from a value outside the candidate (the model input's length) cannot be, and
   the candidate is evaluated at full size (``NotScalable``);
3. **every value keeps its traced shape up to the cut**: each dimension of each evaluated value
   equals its traced dimension or is it scaled by ``EVAL_ROWS / T`` (``check_shapes``); a literal
   row count (``view(128, ...)``) breaks this or fails to run, and the candidate is evaluated at
   full size;
4. **no rows by position**: a tensor the candidate makes from sizes alone along the token axis
   (``arange(T) < 64``) could treat rows differently beyond the cut (``check_row_sources``): such a
   candidate is evaluated at full size;
5. **outputs have the op's full size**: each matched value's traced size equals the fused op's output
   at full size (its fake implementation on meta tensors), as a full evaluation would require
   (``x[:13]`` is 13 rows at either size but no output at ``T = 128``).

``EVAL_ROWS`` is prime, so a literal token shift or block of the model's code (powers of two,
multiples of 4 or 64) is never a multiple of it: a ``roll`` along ``T`` by such a shift is not the
identity on the cut rows and shows. Only a *match* is taken from the cut evaluation; anything else
is evaluated again at full size, so near-miss records (reasons, shapes, divergent nodes) are exactly
those of a full evaluation.

This is what keeps planning time flat in the example's token count: the large evaluations cost the
same at any ``T``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx

from fusegraph.pattern import Dims, Pattern

SYMBOL = "T"             # the token axis of every DSV4 pattern spec
EVAL_ROWS = 13           # rows a cut evaluation draws: prime, so no literal shift or block is a multiple
MIN_ELEMENTS = 1 << 20   # smaller candidates are evaluated at full size (cheap; nothing to gain)


class NotScalable(Exception):
    """The candidate cannot be evaluated on fewer rows exactly: evaluate it at full size."""


@dataclass(frozen=True)
class RowCut:
    full: int   # T as traced
    rows: int   # T as evaluated

    def dims(self, dims: Dims) -> Dims:
        return {**dims, SYMBOL: self.rows}

    def input_shape(self, spec_shape: tuple[int | str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.rows if s == SYMBOL else n for s, n in zip(spec_shape, shape))

    def fits(self, traced: tuple[int, ...], evaluated: tuple[int, ...]) -> bool:
        """Does each evaluated dimension equal the traced one, or the traced one scaled by the cut?"""
        return len(traced) == len(evaluated) and all(
            e == m or e * self.full == m * self.rows for m, e in zip(traced, evaluated))


def plan(pattern: Pattern, dims: Dims, largest: int) -> RowCut | None:
    """The cut for a candidate of ``pattern`` with bound ``dims`` whose largest value has
    ``largest`` elements, or None (evaluate at full size)."""
    full = dims.get(SYMBOL)
    if full is None or full < 2 * EVAL_ROWS or largest < MIN_ELEMENTS or pattern.mutates:
        return None
    for spec in pattern.inputs.values():  # T only as a whole axis, never inside an expression
        if any(isinstance(s, str) and s != SYMBOL and SYMBOL in _symbols(s) for s in spec.shape):
            return None
    return RowCut(full, EVAL_ROWS)


def _symbols(expr: str) -> set[str]:
    out, word = set(), ""
    for ch in expr + " ":
        if ch.isalnum() or ch == "_":
            word += ch
        else:
            if word and not word[0].isdigit():
                out.add(word)
            word = ""
    return out


def check_shapes(cut: RowCut, traced: dict[Any, Any], env: dict[Any, Any]) -> None:
    """Raise ``NotScalable`` unless every evaluated value has its traced shape up to the cut."""
    for node, meta in traced.items():
        want, got = _tensors(meta), _tensors(env.get(node))
        if len(want) != len(got) or not all(cut.fits(tuple(m.shape), tuple(e.shape)) for m, e in zip(want, got)):
            raise NotScalable(f"`{node}` is {[tuple(e.shape) for e in got]} at {cut.rows} rows, "
                              f"traced {[tuple(m.shape) for m in want]} at {cut.full}")


def check_row_sources(cut: RowCut, closure: list[torch.fx.Node]) -> None:
    """Raise ``NotScalable`` if the candidate creates a token-axis tensor from sizes alone.

    ``torch.where(torch.arange(T) < 64, a, b)`` treats rows by position: on ``EVAL_ROWS`` rows every
    row is below 64 and the candidate would pass for a row-wise reference. Tensors made from sizes
    (``arange``, ``ones``, ``full``...) along an axis of ``T`` rows send the candidate to full size."""
    for node in closure:
        if node.op not in ("call_function", "call_method"):
            continue
        if any(isinstance(a.meta.get("val"), torch.Tensor) for a in node.all_input_nodes):
            continue
        for t in _tensors(node.meta.get("val")):
            if cut.full in t.shape:
                raise NotScalable(f"`{node}` makes a {tuple(t.shape)} tensor from sizes alone (rows by position?)")


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def reference_rowwise(pattern: Pattern, dims: Dims,
                      draw: Callable[[int], dict[str, torch.Tensor]],
                      reference: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]) -> bool:
    """Does each output row depend on the same row of the ``T``-shaped inputs only?

    ``draw(seed)`` gives inputs at the cut sizes; a middle row of every T axis is replaced by the
    same row of a second draw, and every output must change in that row only, along an axis of the
    cut length. (Row-wise math does not mix rows; a pooling over rows or a scan, causal or not, does:
    a middle row shows both directions.)"""
    rows = dims[SYMBOL]
    row = rows // 2
    a, b = draw(0), draw(1)
    mixed = {}
    for name, x in a.items():
        axes = [i for i, s in enumerate(pattern.inputs[name].shape) if s == SYMBOL]
        y = x.clone()
        for ax in axes:
            index = [slice(None)] * x.dim()
            index[ax] = row
            y[tuple(index)] = b[name][tuple(index)]
        mixed[name] = y
    try:
        out_a, out_b = reference(a), reference(mixed)
    except Exception:  # noqa: BLE001 - a reference that cannot run cut is simply not cut
        return False
    return len(out_a) > 0 and all(_changes_only_row(oa, ob, rows, row) for oa, ob in zip(out_a, out_b))


def _changes_only_row(a: torch.Tensor, b: torch.Tensor, rows: int, row: int) -> bool:
    """Do ``a`` and ``b`` differ, along some axis of length ``rows``, at index ``row`` only?"""
    if a.shape != b.shape:
        return False
    same = _equal_elements(a, b)
    for ax, n in enumerate(a.shape):
        if n != rows:
            continue
        others = torch.cat([same.narrow(ax, 0, row), same.narrow(ax, row + 1, rows - row - 1)], ax)
        if bool(others.all()) and not bool(same.narrow(ax, row, 1).all()):
            return True
    return False


def _equal_elements(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point and a.element_size() == 1:  # fp8: compare the bytes
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return (a == b) | (torch.isnan(a) & torch.isnan(b)) if a.dtype.is_floating_point else a == b
