"""TileLang provider of mhc_pre (Hopper, sm90): split-K TF32 prenorm GEMM + one big-fuse kernel.

The kernels, their compile cache and launchers are in ``tilelang_kernels.py`` (imported only once
``import tilelang`` works). This file declares where the provider runs and which calls it takes;
the helpers here (``tilelang_missing``, ``kernels``, ``shape_reason``) are shared with the
mhc_post and mhc_post_pre TileLang providers.

* ``available``: "tilelang not installed (...)" when the import fails (tried once per process),
  "no nvcc ..." when TileLang finds no CUDA compiler to JIT with.
* targets: sm90 only (the kernels are compiled for sm_90a).
* priority 30, above Triton (20), but ``measured`` asks the crossover table
  (``crossover.py``): until a measured table for this GPU names TileLang the winner at the call's
  (op, D, T bucket), the call stays with Triton, and the report says why.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from fusegraph.kernels.mhc_pre import crossover, gates
from fusegraph.kernels.mhc_pre.reference import mhc_pre

NAME = "tilelang"
PRIORITY = 30  # above Triton; the crossover table decides per call (measured)
TARGETS = frozenset({"sm90"})
MAX_D = 8192  # the fuse kernel keeps a token's row in registers (tilelang_kernels.MAX_D)

_kernels: Optional[ModuleType] = None
_import_error: Optional[str] = None


def _probe() -> Optional[str]:
    """Import tilelang and the kernels module once; None when usable, else why not."""
    global _kernels, _import_error
    if _kernels is not None or _import_error is not None:
        return _import_error
    try:
        importlib.import_module("tilelang")
    except Exception as exc:  # ImportError, or a broken native library (OSError, RuntimeError)
        _import_error = f"tilelang not installed ({type(exc).__name__}: {exc})"
        return _import_error
    try:
        from tilelang.contrib.nvcc import find_cuda_path

        nvcc = os.path.join(find_cuda_path() or "", "bin", "nvcc")
        if not os.path.exists(nvcc):
            _import_error = f"tilelang found no nvcc to JIT-compile with (looked for {nvcc})"
            return _import_error
        _kernels = importlib.import_module("fusegraph.kernels.mhc_pre.tilelang_kernels")
    except Exception as exc:
        _import_error = f"tilelang kernels unusable ({type(exc).__name__}: {exc})"
    return _import_error


def tilelang_missing() -> Optional[str]:
    """``available`` callback of every mHC TileLang provider."""
    return _probe()


def kernels() -> ModuleType:
    """The ``tilelang_kernels`` module (only call after ``tilelang_missing()`` returned None)."""
    reason = _probe()
    if reason:
        raise RuntimeError(reason)
    assert _kernels is not None
    return _kernels


def shape_reason(residual: Tensor) -> Optional[str]:
    D = residual.shape[2]
    if D > MAX_D:
        return f"hidden size {D} > {MAX_D}: the fuse kernel keeps a token's row in registers"
    if not residual.is_cuda:
        return "tensors are not on a CUDA device"
    return None


def kernel_reason(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor]
                  ) -> Optional[str]:
    """What the kernels cannot take (shapes, dtypes, devices); no crossover policy."""
    return gates.check_pre_args(residual, fn, scale, base, norm_weight, gates.NUM_MIX, 3) or gates.first_reason(
        None if norm_weight is None or norm_weight.dtype in (torch.bfloat16, torch.float32)
        else f"norm_weight is {norm_weight.dtype}; the TileLang kernel takes bfloat16 or float32",
        shape_reason(residual),
    )


def supports(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
             rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float) -> Optional[str]:
    return kernel_reason(residual, fn, scale, base, norm_weight)


def measured(residual: Tensor, *rest) -> Optional[str]:
    """The crossover table's verdict for this (D, T bucket) on this GPU."""
    return crossover.reason_against(NAME, "mhc_pre", residual.shape[2], residual.shape[0], residual.device)


# lambdas: tests replace the module functions; the registered provider must see that
@mhc_pre.provider(NAME, targets=TARGETS, priority=PRIORITY, available=lambda: tilelang_missing(),
                  supports_args=lambda *a, **k: supports(*a, **k), measured=lambda *a, **k: measured(*a, **k))
def mhc_pre_tilelang(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                     rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int, post_mult: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    return kernels().mhc_pre_forward(residual, fn, scale, base, norm_weight, rms_eps, hc_eps, norm_eps,
                                     sinkhorn_iters, post_mult)
