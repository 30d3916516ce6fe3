"""When two values are the same value: the tolerances the matcher verifies with.

A graph value *is* a reference output when, flattened, every element satisfies
``|a - r| <= atol + rtol * |r|`` with rtol from the reference's dtype and atol relative to the
output's largest magnitude, and non-finite elements agree. bf16 allows 2 units in the last place
(a fused kernel rounds once where eager code may round twice); fp32 allows 1e-4 relative, far
below any eps or constant change the regimes provoke, and a tiny atol so that a missing ``+ eps``
on a ~1e-6 entry is still seen. Layout must agree (a transposed output is a different value).
"""
from __future__ import annotations

import torch

RTOL = {torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9, torch.float32: 1e-4, torch.float64: 1e-9}
ATOL_REL = {torch.bfloat16: 2.0 ** -7, torch.float16: 1e-4, torch.float32: 1e-9, torch.float64: 1e-12}


_SAMPLE = 97  # elements compared first: most candidate values differ everywhere, so this rejects fast


def violation(value: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |a - r| / (atol + rtol |r|) over elements; <= 1 means the same value; inf if incomparable."""
    if not isinstance(value, torch.Tensor) or value.numel() != ref.numel():
        return float("inf")
    if ref.dtype.is_floating_point != value.dtype.is_floating_point:
        return float("inf")
    if ref.numel() == 0:
        return 0.0
    if ref.element_size() == 1 and ref.dtype.is_floating_point:  # fp8: few ops exist, compare as fp32
        value, ref = value.float(), ref.float()
    if ref.numel() > 2 * _SAMPLE:
        step = ref.numel() // _SAMPLE
        quick = _violation(value.detach().reshape(-1)[::step], ref.detach().reshape(-1)[::step], ref.dtype,
                           ref.detach().abs().max())
        if quick > 1.0:
            return quick
    return _violation(value.detach().reshape(-1), ref.detach().reshape(-1), ref.dtype, None)


def _violation(value: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, scale_t) -> float:
    if not dtype.is_floating_point:
        return 0.0 if torch.equal(value.to(torch.int64), ref.to(torch.int64)) else float("inf")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a = value.to(work)
    r = ref.to(work)
    if dtype not in RTOL:
        dtype = torch.float32
    scale = float((scale_t if scale_t is not None else r.abs().max()).item())
    if scale != scale or scale == float("inf"):  # non-finite reference values: compare them exactly
        return _violation_nonfinite(a, r, dtype)
    tol = r.abs().mul_(RTOL[dtype]).add_(ATOL_REL[dtype] * max(scale, 1e-30))
    worst = float((a - r).abs_().div_(tol).max().item())
    return float("inf") if worst != worst else worst  # NaN in the candidate: not the same value


def _violation_nonfinite(a: torch.Tensor, r: torch.Tensor, dtype: torch.dtype) -> float:
    fin = torch.isfinite(r)
    if not torch.equal(fin, torch.isfinite(a)) or not torch.equal(a[~fin].nan_to_num(0), r[~fin].nan_to_num(0)):
        return float("inf")
    if not bool(fin.any()):
        return 0.0
    return _violation(a[fin], r[fin], dtype, None)


def rel_l2(value: torch.Tensor, ref: torch.Tensor) -> float:
    a = value.detach().reshape(-1).to(torch.float64)
    r = ref.detach().reshape(-1).to(torch.float64)
    if r.numel() == 0:
        return 0.0
    den = r.norm().item()
    return (a - r).norm().item() / den if den > 0 else (a - r).norm().item()
