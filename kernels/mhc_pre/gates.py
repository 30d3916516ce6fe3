"""Argument gates shared by the mHC providers (mhc_pre, mhc_post, mhc_post_pre, hc_head).

Each check returns None when the argument is fine, else the reason a provider cannot take it
(the reason ends up in the compile report). They only look at shapes, dtypes and devices, so they
also work on fake/meta tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

HC_MULT = 4
NUM_MIX = HC_MULT * (2 + HC_MULT)  # 24 rows of fn for mhc_pre: pre, post, comb
D_MULTIPLE = 16  # K = 4*D is then a multiple of 64 (the GEMM's k-block), rows stay 32-byte aligned


def first_reason(*reasons: Optional[str]) -> Optional[str]:
    return next((r for r in reasons if r), None)


def check_residual(residual: Tensor, name: str = "residual") -> Optional[str]:
    if residual.dim() != 3:
        return f"{name} must be [T, C, D], got shape {tuple(residual.shape)}"
    T, C, D = residual.shape
    if C != HC_MULT:
        return f"{name} has hc_mult C = {C}; the kernels are built for C = {HC_MULT}"
    if residual.dtype != torch.bfloat16:
        return f"{name} is {residual.dtype}; the kernels take bfloat16"
    if D == 0 or D % D_MULTIPLE:
        return f"hidden size D = {D} is not a positive multiple of {D_MULTIPLE}"
    return None


def check_rows(t: Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype | None) -> Optional[str]:
    if tuple(t.shape) != shape:
        return f"{name} has shape {tuple(t.shape)}, expected {shape}"
    if dtype is not None and t.dtype != dtype:
        return f"{name} is {t.dtype}, expected {dtype}"
    return None


def check_mix_params(fn: Tensor, scale: Tensor, base: Tensor, n_mix: int, D: int, n_scale: int) -> Optional[str]:
    return first_reason(
        check_rows(fn, "fn", (n_mix, HC_MULT * D), torch.float32),
        None if scale.numel() >= n_scale and scale.dtype == torch.float32
        else f"scale must be float32 with >= {n_scale} values, got {scale.dtype} {tuple(scale.shape)}",
        check_rows(base.reshape(-1), "base", (n_mix,), torch.float32),
        None if scale.is_contiguous() and base.is_contiguous() else "scale and base must be contiguous",
    )


def check_norm_weight(norm_weight: Optional[Tensor], D: int) -> Optional[str]:
    if norm_weight is None:
        return None
    if tuple(norm_weight.shape) != (D,):
        return f"norm_weight has shape {tuple(norm_weight.shape)}, expected ({D},)"
    if not norm_weight.dtype.is_floating_point:
        return f"norm_weight is {norm_weight.dtype}"
    return None


def check_post_comb(post: Tensor, comb: Tensor, T: int) -> Optional[str]:
    return first_reason(check_rows(post, "post", (T, HC_MULT), torch.float32),
                        check_rows(comb, "comb", (T, HC_MULT, HC_MULT), torch.float32))


def check_same_device(*tensors: Optional[Tensor]) -> Optional[str]:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        return f"tensors on several devices: {sorted(str(d) for d in devices)}"
    return None


def check_pre_args(residual: Tensor, fn: Tensor, scale: Tensor, base: Tensor, norm_weight: Optional[Tensor],
                   n_mix: int, n_scale: int) -> Optional[str]:
    """Every mhc_pre (``n_mix`` = NUM_MIX, 3 scales) and hc_head (HC_MULT mixes, 1 scale) kernel's
    argument gates (shapes, dtypes, one device). A provider adds its own limits after these: they
    may then read ``residual.shape`` safely."""
    reason = check_residual(residual)
    if reason:
        return reason
    D = residual.shape[2]
    return first_reason(
        check_mix_params(fn, scale, base, n_mix, D, n_scale),
        check_norm_weight(norm_weight, D),
        check_same_device(residual, fn, scale, base, norm_weight),
    )


def check_post_args(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Optional[str]:
    """Every mhc_post kernel's argument gates (shapes, dtypes, one device)."""
    reason = check_residual(residual)
    if reason:
        return reason
    T, _, D = residual.shape
    return first_reason(
        check_rows(f, "f", (T, D), residual.dtype),
        check_post_comb(post, comb, T),
        check_same_device(f, residual, post, comb),
    )
