"""Numerical tolerances for fused-vs-unfused comparison: every number, and why, in one place.

``fusegraph compare`` measures three things per output tensor (of the model, and of each match site):

* ``max_abs``: max |fused - unfused|, in the output's own units (reported, not judged: it depends on
  the scale of the values);
* ``rel_l2``: ||fused - ref|| / ||ref||, where ``ref`` is an fp64 reference (a site: the op's torch
  reference on the site's inputs upcast to fp64; the model: the unfused graph run in fp64);
* ``ulps``: max |fused - ref| in bf16 units in the last place, measured at the tensor's scale (the
  ulp of max(|ref|, rms(ref)) per element). Measuring at the tensor's scale keeps elements that
  come out near zero by cancellation from reading as thousands of ulps: their absolute error is
  set by the magnitude of the terms that cancelled, which the rms tracks.

A result passes when, for every output, ``rel_l2 <= max(rel_l2 bound, GROWTH * unfused rel_l2)`` and
``ulps <= max(ulp bound, GROWTH * unfused ulps)`` (where an ulp bound is set), no NaN/Inf appears
that the reference does not have, and non-float outputs differ in at most ``mismatch`` of their
elements. The GROWTH rule is the one of ``torch._dynamo.utils.same`` with an fp64 reference (used by
the accuracy minifier): a fused result may be up to twice as far from fp64 as the unfused graph is,
so that outputs the unfused graph itself computes loosely (long chains of bf16 roundings) are not
held to a bound the original model cannot meet.

Reasoning for the numbers (u = unit roundoff: bf16 2^-8, fp16 2^-11, TF32 2^-11, fp32 2^-24):

* bf16 outputs. Fused and unfused round the same fp32 math once to bf16; a different summation
  order moves the fp32 value by ~1e-6 relative, which flips a rounding now and then (<= 1 ulp). The
  DSV4 spec (§2.2) allows 1 ulp for the norm fused after mhc_pre (sum of squares taken before the
  bf16 round), and a chain of two rounded steps (norm then RoPE) can stack two such flips: 2 ulps.
  One ulp on *every* element would be a relative L2 of 2^-8..2^-7; the bound 2^-7 = 7.8e-3 admits
  that and nothing systematic beyond it (a wrong eps or a missing term is >= 1e-2).
* fp32 outputs (mHC ``post``, ``comb``). GPU providers run the 4*D-long GEMM in TF32 (DeepGEMM
  ``tf32_hc_prenorm_gemm``); the spec (§2.1) expects ~1e-3 relative change in ``mixes``, damped by
  the sigmoid/Sinkhorn that follow: rel L2 2e-3, and 1 bf16 ulp (2^-8 relative) per element.
* fp16 outputs: as bf16 with 8x finer rounding: rel L2 1e-3, 2 bf16 ulps.
* fp8 e4m3/e5m2 outputs: one e4m3 ulp is 2^-3 relative (16 bf16 ulps) and a value at a rounding
  boundary may round either way: rel L2 6e-2, ulps not judged.
* Integer and byte outputs (indices, packed caches): exact, unless the op packs FP8 (below).
* Ops with FP8 quantization inside (``kv_norm_rope_quant``, the paged FP8 stores): the bf16
  ``k_nope`` is an FP8 quant-dequant, so a boundary flip moves an element by one e4m3 ulp; the
  ue8m0 scale byte flips when a tile's amax sits at a power of two. rel L2 3e-2 for floats, ulps
  not judged, and up to 2% of cache bytes may differ.
* ``compressor_pool`` rounds the pooled value to bf16 and then applies a bf16-rounded RMSNorm and
  RoPE: three rounded steps, 3 ulps, rel L2 1e-2.
* Model outputs run through every layer: the bf16 residual stream is rounded after each sublayer
  and a one-ulp flip early on is carried and amplified by the following norms. Bound: rel L2 2e-2,
  ulps not judged, always together with the GROWTH rule against the fp64 model run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GROWTH = 2.0  # a fused result may be this many times further from fp64 than the unfused graph


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float                  # bound on ||fused - fp64 ref|| / ||fp64 ref||
    max_ulps: float | None         # bound on bf16 ulps at the tensor's scale; None: not judged
    mismatch: float = 0.0          # non-float outputs: share of elements allowed to differ
    why: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"rel_l2": self.rel_l2, "max_ulps": self.max_ulps, "mismatch": self.mismatch,
                "why": self.why}


BF16 = Tolerance(2 ** -7, 2.0, why="one bf16 rounding (+1 for a fused norm epilogue, spec §2.2)")
FP16 = Tolerance(1e-3, 2.0, why="one fp16 rounding")
FP32 = Tolerance(2e-3, 1.0, why="TF32 GEMM on GPU providers (spec §2.1: ~1e-3 in mixes)")
FP8 = Tolerance(6e-2, None, why="one e4m3 ulp (2^-3) at rounding boundaries")
EXACT = Tolerance(0.0, None, mismatch=0.0, why="integers and bytes must match exactly")

BY_DTYPE: dict[torch.dtype, Tolerance] = {
    torch.bfloat16: BF16,
    torch.float16: FP16,
    torch.float32: FP32,
    torch.float64: FP32,
    torch.float8_e4m3fn: FP8,
    torch.float8_e5m2: FP8,
}

_FP8_OPS_FLOAT = Tolerance(3e-2, None, why="FP8 e4m3 quant-dequant inside the op (boundary flips)")
_FP8_OPS_BYTES = Tolerance(0.0, None, mismatch=0.02,
                           why="packed FP8 bytes and ue8m0 scales flip at rounding boundaries")
# Per-op overrides: op -> (tolerance for float outputs, tolerance for byte/int outputs).
BY_OP: dict[str, tuple[Tolerance | None, Tolerance | None]] = {
    "kv_norm_rope_quant": (_FP8_OPS_FLOAT, None),
    "kv_norm_rope_quant_store": (_FP8_OPS_FLOAT, _FP8_OPS_BYTES),
    "store_fp8_paged": (_FP8_OPS_FLOAT, _FP8_OPS_BYTES),
    "compressor_pool": (Tolerance(1e-2, 3.0, why="bf16 round, then RMSNorm and RoPE rounded (3 steps)"), None),
}

MODEL_OUTPUT = Tolerance(2e-2, None, why="bf16 residual stream rounded after every sublayer")


def for_site_output(dtype: torch.dtype, op: str | None = None) -> Tolerance:
    """Tolerance of one output of a fused op (site-level comparison)."""
    floating = dtype.is_floating_point
    override = BY_OP.get(op or "")
    if override is not None:
        chosen = override[0] if floating else override[1]
        if chosen is not None:
            return chosen
    if floating:
        return BY_DTYPE.get(dtype, FP32)
    return EXACT


def for_model_output(dtype: torch.dtype) -> Tolerance:
    """Tolerance of one output of the whole model (it went through every layer)."""
    if not dtype.is_floating_point:
        return EXACT
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return FP8
    return MODEL_OUTPUT
