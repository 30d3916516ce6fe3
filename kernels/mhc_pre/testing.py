"""Test helpers for the mHC providers: error metric and output poisoning.

* ``rel_l2(actual, expected)``: ``||a - e|| / ||e||`` in float64 (the tests' error metric).
* ``poisoned_outputs()``: while active, every output and workspace the mHC Triton launchers
  allocate is filled with NaN first, so a test sees any element a kernel failed to write.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor


def rel_l2(actual: Tensor, expected: Tensor) -> float:
    e = expected.detach().to(torch.float64)
    a = actual.detach().to(device=e.device, dtype=torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(e.shape)}")
    if e.numel() == 0:
        return 0.0
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[list[Tensor]]:
    """Make ``triton_kernels.empty`` return NaN-filled tensors; yields the list of them."""
    from fusegraph.kernels.mhc_pre import triton_kernels

    made: list[Tensor] = []
    original = triton_kernels.empty

    def poisoned(shape, dtype, device):
        t = original(shape, dtype, device)
        t.fill_(float("nan"))
        made.append(t)
        return t

    triton_kernels.empty = poisoned
    try:
        yield made
    finally:
        triton_kernels.empty = original
