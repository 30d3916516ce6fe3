"""Host-side plumbing shared by the mHC launchers (Triton, TileLang, DeepGEMM): pure Python/torch.

* ``contiguous(*tensors)``: every argument made contiguous (None stays None), the launchers' first step.
* ``pre_outputs(residual, empty)``: mhc_pre's three outputs ``(layer_input [T, D], post [T, C],
  comb [T, C, C])``, allocated through the launcher module's own ``empty``.
* ``poisoned_empty(module)``: while active, ``module.empty`` returns NaN-filled tensors (the seam
  tests use to see any output element a kernel failed to write); yields the list of them.

Each launcher module keeps its own ``empty`` function and looks it up at call time, so passing
``empty`` from there (not a reference bound at import) keeps the poisoning seam working.
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

Empty = Callable[[tuple[int, ...], torch.dtype, torch.device], Tensor]


def contiguous(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    return tuple(None if t is None else t.contiguous() for t in tensors)


def pre_outputs(residual: Tensor, empty: Empty) -> tuple[Tensor, Tensor, Tensor]:
    T, C, D = residual.shape
    dev = residual.device
    return (empty((T, D), residual.dtype, dev), empty((T, C), torch.float32, dev),
            empty((T, C, C), torch.float32, dev))


@contextlib.contextmanager
def poisoned_empty(module: ModuleType) -> Iterator[list[Tensor]]:
    """Make ``module.empty`` return NaN-filled tensors while active; yields the list of them."""
    made: list[Tensor] = []
    original = module.empty

    def poisoned(shape, dtype, device):
        t = original(shape, dtype, device)
        t.fill_(float("nan"))
        made.append(t)
        return t

    module.empty = poisoned
    try:
        yield made
    finally:
        module.empty = original
