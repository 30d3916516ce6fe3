"""hc_head with the final RMSNorm (spec 2.4, pattern F9 + epilogue): once per model, before lm_head."""
from ._common import EPS, F32, MHC_REGIMES, fan_in, hc_constraints, near_one, residual_spec
from fusegraph.pattern import Pattern, TensorSpec, randn

PATTERN = Pattern(
    name="hc_head_norm",
    op="hc_head",
    inputs={
        "residual": residual_spec(),
        "fn": TensorSpec(("C", "K"), F32, fan_in("K"), param=True),
        "scale": TensorSpec((1,), F32, randn(0.5), param=True),
        "base": TensorSpec(("C",), F32, randn(0.5), param=True),
        "norm_weight": TensorSpec(("D",), None, near_one(), param=True),
    },
    literals={"rms_eps": EPS, "hc_eps": EPS, "norm_eps": EPS},
    seed="fn",
    seed_label="matmul",
    constraints=lambda d: hc_constraints(d, None),
    regimes=MHC_REGIMES,
    priority=30,
    description="hc_head + final RMSNorm -> hc_head(norm_weight=w)",
)
