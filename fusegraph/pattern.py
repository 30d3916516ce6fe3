"""What a pattern is: a fused op's reference function plus how to find its inputs in a graph.

A ``Pattern`` names a fused op and says, for each parameter of the op's reference function, what
value it takes: a graph value (``TensorSpec``: symbolic shape and dtypes), a literal (``eps``), or
nothing (``None``). The reference function itself is the pattern: a subgraph matches when, on fresh
random inputs, it computes what the reference computes (see ``fusegraph.match``). So a pattern file is
short and declarative; the math lives once, in ``kernels/<op>/reference.py``.

Shapes use symbols: ``("T", "C", "D")`` binds T, C and D on first sight and checks them after;
a string like ``"C*D"`` is an expression over bound symbols. ``constraints`` then turn the bound
symbols into reasons (``"hc_mult is 3; the fused op takes 4"``) so that a model with other shapes is
reported as a near miss instead of silently not matching.

``regimes`` are input distributions under which the subgraph must still agree with the reference:
a tiny-magnitude regime makes every ``+ eps`` dominate (so a different eps cannot pass), a saturating
regime exposes a missing ``+ hc_eps`` after a sigmoid, and so on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

Dims = dict[str, int]
Generator = Callable[[tuple[int, ...], torch.dtype, torch.Generator, Dims], torch.Tensor]


def randn(scale: float = 1.0, shift: float = 0.0) -> Generator:
    def gen(shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator, dims: Dims) -> torch.Tensor:
        work = dtype if dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64) else torch.float32
        x = torch.randn(shape, generator=g, dtype=work)
        if scale != 1.0:
            x.mul_(scale)
        if shift:
            x.add_(shift)
        return x.to(dtype)
    return gen


@dataclass(frozen=True)
class TensorSpec:
    """A graph value a pattern input binds to."""

    shape: tuple[int | str, ...]
    dtypes: tuple[torch.dtype, ...] | None = None    # None: any floating dtype
    gen: Generator = randn()                          # how verification draws this input
    check: Callable[[Dims], bool] | None = None       # extra relation between symbols (n < W, ...)
    param: bool = False                               # a model parameter or buffer (get_attr / input)
    empty_ok: bool = False                            # may bind an empty value (a list of 0 entries)
    source_first: bool = False                        # prefer the value the site's uses fork from (bind)
    reach: int = 8                                    # how many ops behind a consumer it may lie (bind)
    indexed_by: str | None = None                     # the index input it is read at (bind pairs them)
    after: tuple[str, ...] = ()                       # bind once these inputs are bound (bind order)
    behind: tuple[str, ...] = ()                      # look behind these inputs when no site op reads it

    def dtype_ok(self, dtype: torch.dtype) -> bool:
        if self.dtypes is None:
            return dtype.is_floating_point
        return dtype in self.dtypes


@dataclass(frozen=True)
class Regime:
    """A named input distribution: per-input generators overriding the specs' defaults."""

    name: str
    gens: Mapping[str, Generator] = field(default_factory=dict)


@dataclass(frozen=True)
class Pattern:
    name: str
    op: str                                            # fused op name (fusegraph.ops registry)
    inputs: Mapping[str, TensorSpec]                   # op parameter -> graph value
    literals: Mapping[str, Any] = field(default_factory=dict)  # op parameter -> constant or fn(dims)
    seed: str = ""                                     # input the search starts from; every output depends on it
    seed_label: str | None = None                      # canonical op label the seed's user must have
    mutates: tuple[str, ...] = ()                      # inputs whose final state is an output
    constraints: Callable[[Dims], str | None] = lambda dims: None
    regimes: tuple[Regime, ...] = (Regime("normal"),)
    priority: int = 0                                  # larger patterns first
    interchangeable: tuple[tuple[str, str], ...] = ()  # same-spec inputs the binder may swap (cos/sin)
    description: str = ""

    def literal_values(self, dims: Dims) -> dict[str, Any]:
        return {k: (v(dims) if callable(v) else v) for k, v in self.literals.items()}


@dataclass(frozen=True)
class Composition:
    """Two fused calls in a row that one fused op does at once (post then pre, quant then store).

    ``link`` maps a parameter of ``second`` to the output index of ``first`` that feeds it
    (``None`` index: the first op returns a single tensor). The composed op's parameters are the
    union of both ops' parameters by name; shared names must carry equal values.
    """

    name: str
    first: str
    second: str
    link: Mapping[str, int | None]
    op: str
    description: str = ""


def unify_shape(spec: tuple[int | str, ...], shape: tuple[int, ...], dims: Dims) -> Dims | None:
    """Bind ``spec`` against a concrete ``shape``; returns the extended dims or None on mismatch."""
    if len(spec) != len(shape):
        return None
    out = dict(dims)
    deferred = []
    for s, n in zip(spec, shape):
        if isinstance(s, int):
            if s != n:
                return None
        elif s.isidentifier():
            if s in out and out[s] != n:
                return None
            out[s] = n
        else:
            deferred.append((s, n))
    for expr, n in deferred:
        try:
            if eval(expr, {"__builtins__": {}}, dict(out)) != n:  # expressions over bound symbols only
                return None
        except NameError:
            return None
    return out


def concrete_shape(spec: tuple[int | str, ...], dims: Dims) -> tuple[int, ...]:
    return tuple(s if isinstance(s, int) else int(eval(s, {"__builtins__": {}}, dict(dims))) for s in spec)
