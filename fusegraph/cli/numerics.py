"""Error metrics of one output tensor (fused vs unfused vs fp64 reference) and the verdict.

See ``fusegraph.tolerances`` for the meaning of each metric and for the bounds; this module only
measures and applies them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fusegraph import tolerances
from fusegraph.tolerances import Tolerance

_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass(frozen=True)
class TensorCheck:
    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float | None          # max |fused - unfused|
    rel_l2: float | None           # ||fused - ref|| / ||ref||
    rel_l2_unfused: float | None   # ||unfused - ref|| / ||ref|| (None without an fp64 reference)
    ulps: float | None             # max |fused - ref| in bf16 ulps at the tensor's scale
    ulps_unfused: float | None
    mismatch: float | None         # non-float outputs: share of elements that differ
    passed: bool
    reason: str                    # why it failed ("" when it passed)
    tolerance: Tolerance
    note: str = ""                 # how it was compared, when not as-is

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "max_abs": self.max_abs,
                "rel_l2": self.rel_l2, "rel_l2_unfused": self.rel_l2_unfused, "ulps": self.ulps,
                "ulps_unfused": self.ulps_unfused, "mismatch": self.mismatch, "passed": self.passed,
                "reason": self.reason, "tolerance": self.tolerance.as_dict(), "note": self.note}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def bf16_ulp(magnitude: torch.Tensor) -> torch.Tensor:
    """ulp of bf16 at |x| (fp64 tensor): 2^(floor(log2|x|) - 7), normal range."""
    m = magnitude.clamp_min(2.0 ** -126)
    _, exponent = torch.frexp(m)            # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    return torch.ldexp(torch.ones_like(m), exponent - 8)


def ulp_distance(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| in bf16 ulps of max(|ref|, rms(ref)) (fp64 tensors, finite elements)."""
    if ref.numel() == 0:
        return 0.0
    rms = ref.square().mean().sqrt()
    scale = torch.maximum(ref.abs(), rms)
    return float(((x - ref).abs() / bf16_ulp(scale)).max())


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    den = float(ref.norm())
    num = float((x - ref).norm())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _as64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def check(name: str, fused: Any, unfused: Any, ref: Any, tol: Tolerance) -> TensorCheck:
    """Measure ``fused`` against ``unfused`` and the fp64 ``ref`` (None: judge against unfused)."""
    if not isinstance(fused, torch.Tensor) or not isinstance(unfused, torch.Tensor):
        same = _same_value(fused, unfused)
        return TensorCheck(name, type(unfused).__name__, (), None, None, None, None, None, None, same,
                           "" if same else f"fused gave {fused!r}, unfused {unfused!r}", tol)
    notes = []
    if tuple(fused.shape) != tuple(unfused.shape) and fused.numel() == unfused.numel():
        # The replaced node holds the op's output under another view (``[T, 7, 64]`` for
        # ``[T, 448]``): the rewrite re-expresses it with a reshape, so compare in the op's shape.
        notes.append(f"subgraph value is {list(unfused.shape)}; compared as {list(fused.shape)}")
        unfused = unfused.reshape(fused.shape)
    if fused.dtype != unfused.dtype and fused.dtype.is_floating_point and unfused.dtype.is_floating_point \
            and tuple(fused.shape) == tuple(unfused.shape):
        # The subgraph's value is kept at another precision than the fused op returns (the rewrite
        # replaced a value that a cast then rounded): compare in the fused op's dtype.
        notes.append(f"subgraph value is {_dtype_name(unfused.dtype)}; compared after rounding to "
                     f"{_dtype_name(fused.dtype)}")
        unfused = unfused.to(fused.dtype)
    shape = tuple(unfused.shape)
    if isinstance(ref, torch.Tensor) and tuple(ref.shape) == shape and ref.dtype.is_floating_point:
        bad_ref = ~torch.isfinite(_as64(ref)) & torch.isfinite(_as64(unfused))
        if bool(bad_ref.any()):
            notes.append("the fp64 reference has NaN/Inf where the unfused result is finite; judged against "
                         "the unfused result")
            ref = None
    note = "; ".join(notes)
    base = dict(name=name, dtype=_dtype_name(unfused.dtype), shape=shape, tolerance=tol, note=note)
    if tuple(fused.shape) != shape or fused.dtype != unfused.dtype:
        return TensorCheck(**base, max_abs=None, rel_l2=None, rel_l2_unfused=None, ulps=None, ulps_unfused=None,
                           mismatch=None, passed=False,
                           reason=f"fused gave {_dtype_name(fused.dtype)}{list(fused.shape)}, "
                                  f"unfused {_dtype_name(unfused.dtype)}{list(shape)}")
    fused, unfused = fused.detach().cpu(), unfused.detach().cpu()
    if ref is not None:
        ref = ref.detach().cpu() if isinstance(ref, torch.Tensor) else None
        if ref is not None and tuple(ref.shape) != shape:
            ref = None
    if not unfused.dtype.is_floating_point:
        return _check_exact(base, fused, unfused, ref, tol)
    f, u = _as64(fused), _as64(unfused)
    r = _as64(ref) if ref is not None else u
    finite = torch.isfinite(r)
    bad = int((~torch.isfinite(f) & finite).sum())
    keep = finite & torch.isfinite(f) & torch.isfinite(u)
    f_k, u_k, r_k = f[keep], u[keep], r[keep]
    max_abs = float((f_k - u_k).abs().max()) if f_k.numel() else 0.0
    err = rel_l2(f_k, r_k)
    err_u = rel_l2(u_k, r_k) if ref is not None else None
    ulps = ulp_distance(f_k, r_k)
    ulps_u = ulp_distance(u_k, r_k) if ref is not None else None
    reasons = []
    if bad:
        reasons.append(f"{bad} NaN/Inf element(s) where the reference is finite")
    bound = max(tol.rel_l2, tolerances.GROWTH * err_u) if err_u is not None else tol.rel_l2
    if err > bound:
        reasons.append(f"rel L2 {err:.2e} > {bound:.2e}")
    if tol.max_ulps is not None:
        ubound = max(tol.max_ulps, tolerances.GROWTH * ulps_u) if ulps_u is not None else tol.max_ulps
        if ulps > ubound:
            reasons.append(f"{ulps:.1f} bf16 ulps > {ubound:.1f}")
    return TensorCheck(**base, max_abs=max_abs, rel_l2=err, rel_l2_unfused=err_u, ulps=ulps, ulps_unfused=ulps_u,
                       mismatch=None, passed=not reasons, reason="; ".join(reasons))


def _check_exact(base: dict, fused: torch.Tensor, unfused: torch.Tensor, ref: torch.Tensor | None,
                 tol: Tolerance) -> TensorCheck:
    against = ref if ref is not None and ref.dtype == unfused.dtype else unfused
    n = against.numel()
    differ = int((fused != against).sum()) if n else 0
    share = differ / n if n else 0.0
    max_abs = float((fused.to(torch.int64) - unfused.to(torch.int64)).abs().max()) if n else 0.0
    passed = share <= tol.mismatch
    reason = "" if passed else f"{differ} of {n} elements differ ({100 * share:.2f}% > {100 * tol.mismatch:.2f}%)"
    return TensorCheck(**base, max_abs=max_abs, rel_l2=None, rel_l2_unfused=None, ulps=None, ulps_unfused=None,
                       mismatch=share, passed=passed, reason=reason)


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def upcast64(value: Any) -> Any:
    """Float tensors of 16/32 bits -> fp64 (FP8 and integers unchanged), through tuples and lists."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point and value.dtype not in _FP8 and value.dtype != torch.float64:
            return value.detach().to(torch.float64)
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(upcast64(v) for v in value)
    return value


def clone_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(clone_value(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_value(v) for k, v in value.items()}
    return value
