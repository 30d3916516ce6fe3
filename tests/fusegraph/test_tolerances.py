"""fusegraph.tolerances and the metrics that apply them (fusegraph.cli.numerics).

The bounds must admit what a correct fused kernel does (a different rounding here and there) and
reject what a wrong one does (a wrong eps, a missing term, a transposed matrix).
"""
from __future__ import annotations

import math

import pytest
import torch

from fusegraph import tolerances
from fusegraph.cli import numerics


def test_every_tolerance_says_why():
    tols = list(tolerances.BY_DTYPE.values()) + [t for pair in tolerances.BY_OP.values() for t in pair if t]
    tols += [tolerances.MODEL_OUTPUT, tolerances.EXACT]
    for tol in tols:
        assert tol.why.strip(), tol
        assert tol.rel_l2 >= 0 and (tol.max_ulps is None or tol.max_ulps > 0)


def test_lookup_by_dtype_and_op():
    assert tolerances.for_site_output(torch.bfloat16) is tolerances.BF16
    assert tolerances.for_site_output(torch.float32) is tolerances.FP32
    assert tolerances.for_site_output(torch.int64) is tolerances.EXACT
    assert tolerances.for_site_output(torch.uint8) is tolerances.EXACT
    fp8_float = tolerances.for_site_output(torch.bfloat16, "kv_norm_rope_quant")
    assert fp8_float.max_ulps is None and fp8_float.rel_l2 > tolerances.BF16.rel_l2
    assert tolerances.for_site_output(torch.uint8, "store_fp8_paged").mismatch > 0
    assert tolerances.for_site_output(torch.int64, "kv_norm_rope_quant") is tolerances.EXACT
    assert tolerances.for_model_output(torch.float32) is tolerances.MODEL_OUTPUT
    assert tolerances.for_model_output(torch.int32) is tolerances.EXACT


def test_bf16_ulp():
    x = torch.tensor([1.0, 1.5, 2.0, 3.0, 0.75, 1e-3], dtype=torch.float64)
    ulp = numerics.bf16_ulp(x)
    assert ulp.tolist()[:5] == [2 ** -7, 2 ** -7, 2 ** -6, 2 ** -6, 2 ** -8]
    # 1e-3 lies in [2^-10, 2^-9): ulp 2^-17
    assert ulp[5].item() == 2 ** -17
    # consecutive bf16 numbers are one ulp apart
    a = torch.tensor([1.0], dtype=torch.bfloat16)
    b = torch.tensor([1.0078125], dtype=torch.bfloat16)  # 1 + 2^-7: the next bf16 after 1
    assert numerics.ulp_distance(b.double(), a.double()) == 1.0


def _fresh(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def test_one_rounding_flip_everywhere_passes_bf16():
    ref = _fresh((64, 96))
    exact = ref.to(torch.bfloat16)
    # a correct fused kernel: same value, or the neighbouring bf16 number (a different rounding)
    flip = torch.nextafter(exact.float(), exact.float() * 2).to(torch.bfloat16)
    fused = torch.where(torch.rand(ref.shape, generator=torch.Generator().manual_seed(1)) < 0.5, exact, flip)
    c = numerics.check("y", fused, exact, ref, tolerances.BF16)
    assert c.passed, c.reason
    assert 0 < c.ulps <= 1.6 and c.rel_l2 < tolerances.BF16.rel_l2


def test_systematic_errors_fail_bf16():
    ref = _fresh((64, 96))
    exact = ref.to(torch.bfloat16)
    scaled = (ref * 1.02).to(torch.bfloat16)          # a 2% gain error (wrong eps / norm)
    c = numerics.check("y", scaled, exact, ref, tolerances.BF16)
    assert not c.passed and "rel L2" in c.reason
    wrong = ref.flip(0).to(torch.bfloat16)            # rows mixed up (a transposed comb): O(1) error
    c = numerics.check("y", wrong, exact, ref, tolerances.BF16)
    assert not c.passed and c.rel_l2 > 1


def test_growth_rule_tracks_the_unfused_error():
    ref = _fresh((128,))
    unfused = ref + 0.05 * _fresh((128,), seed=3)     # the original graph is itself loose (5%)
    fused_close = ref + 0.06 * _fresh((128,), seed=4)
    fused_far = ref + 0.2 * _fresh((128,), seed=5)
    tol = tolerances.MODEL_OUTPUT
    assert numerics.check("o", fused_close.float(), unfused.float(), ref, tol).passed
    far = numerics.check("o", fused_far.float(), unfused.float(), ref, tol)
    assert not far.passed and far.rel_l2_unfused == pytest.approx(numerics.rel_l2(unfused.float().double(), ref), rel=1e-6)


def test_nan_shape_and_dtype_handling():
    ref = _fresh((8, 8))
    u = ref.float()
    f = u.clone()
    f[3, 3] = float("nan")
    c = numerics.check("o", f, u, ref, tolerances.FP32)
    assert not c.passed and "NaN" in c.reason
    c = numerics.check("o", u[:4], u, ref, tolerances.FP32)
    assert not c.passed and "[4, 8]" in c.reason
    # the subgraph kept fp32 where the op returns bf16: compared after rounding, with a note
    c = numerics.check("o", u.bfloat16(), u, ref, tolerances.BF16)
    assert c.passed and "rounding to bfloat16" in c.note and c.dtype == "bfloat16"


def test_exact_outputs():
    u = torch.arange(1000, dtype=torch.int64)
    f = u.clone()
    assert numerics.check("i", f, u, None, tolerances.EXACT).passed
    f[7] += 1
    c = numerics.check("i", f, u, None, tolerances.EXACT)
    assert not c.passed and c.mismatch == pytest.approx(1e-3) and "1 of 1000" in c.reason
    loose = tolerances.for_site_output(torch.uint8, "store_fp8_paged")
    b = torch.randint(0, 255, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b2 = b.clone()
    b2[:10] ^= 1
    assert numerics.check("cache", b2, b, None, loose).passed


def test_empty_tensors_and_scalars():
    e = torch.empty(0, 16)
    c = numerics.check("e", e, e, e.double(), tolerances.FP32)
    assert c.passed and c.rel_l2 == 0 and c.ulps == 0
    assert numerics.check("n", 3, 3, None, tolerances.EXACT).passed
    assert not numerics.check("n", 3, 4, None, tolerances.EXACT).passed


def test_upcast_keeps_fp8_and_integers():
    vals = (torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float8_e4m3fn),
            torch.ones(2, dtype=torch.int32), [torch.ones(1, dtype=torch.float16)], 1.5)
    up = numerics.upcast64(vals)
    assert up[0].dtype == torch.float64 and up[1].dtype == torch.float8_e4m3fn and up[2].dtype == torch.int32
    assert up[3][0].dtype == torch.float64 and up[4] == 1.5
    assert not math.isnan(float(up[0][0]))


def test_view_form_and_broken_reference_are_handled_with_a_note():
    ref = _fresh((6, 448))
    unfused = ref.float().reshape(6, 7, 64)             # the subgraph's value, under another view
    fused = ref.to(torch.bfloat16)
    c = numerics.check("k_nope", fused, unfused, ref, tolerances.BF16)
    assert c.passed and c.shape == (6, 448) and "[6, 7, 64]" in c.note and "bfloat16" in c.note
    broken_ref = ref.clone()
    broken_ref[0, 0] = float("nan")
    c = numerics.check("k_nope", fused, fused, broken_ref, tolerances.BF16)
    assert c.passed and c.rel_l2_unfused is None and "fp64 reference has NaN" in c.note
