"""mHC post (spec 2.3, pattern F2): ``X'[k] = post[k] * F + sum_j comb[j, k] * X[j]``, comb transposed.

Found from ``comb`` (a ``[T, 4, 4]`` fp32 value consumed by a multiply or matmul); written as
broadcast-multiply-sum, ``einsum``, or ``matmul(comb.transpose(-1, -2), X)`` alike.
"""
from ._common import BF16, F32, MHC_REGIMES, residual_spec
from fusegraph.pattern import Pattern, Regime, TensorSpec, randn

PATTERN = Pattern(
    name="mhc_post",
    op="mhc_post",
    inputs={
        "comb": TensorSpec(("T", "C", "C"), F32, randn(0.5)),
        "residual": residual_spec(),
        "post": TensorSpec(("T", "C"), F32, randn(0.5, 1.0)),
        "f": TensorSpec(("T", "D"), BF16),
    },
    seed="comb",
    seed_label=("mul", "matmul"),
    constraints=lambda d: None if d["C"] == 4 else f"hc_mult is {d['C']}; the fused mHC ops take 4",
    regimes=(Regime("normal"), Regime("tiny", {"residual": randn(1e-4), "f": randn(1e-4)})),
    priority=10,
    description="hc_post -> mhc_post",
)
