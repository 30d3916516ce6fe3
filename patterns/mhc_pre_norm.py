"""mHC pre with the following RMSNorm folded in (spec 2.1 + 2.2, pattern F1 with its epilogue).

Matches ``hc_pre`` (sum of squares, 24-wide mix GEMM, sigmoid pre/post, 20-step softmax-first
Sinkhorn, weighted collapse of the 4 streams) followed by the attn_norm / ffn_norm RMSNorm of the
collapsed row. Becomes ``mhc_pre(..., norm_weight=w)``: the model's norm call disappears too.
"""
from ._common import EPS, F32, MHC_REGIMES, POST_MULT, SINKHORN_ITERS, fan_in, hc_constraints, near_one, \
    residual_spec
from fusegraph.pattern import Pattern, TensorSpec, randn

PATTERN = Pattern(
    name="mhc_pre_norm",
    op="mhc_pre",
    inputs={
        "residual": residual_spec(),
        "fn": TensorSpec(("N3", "K"), F32, fan_in("K"), param=True),
        "scale": TensorSpec((3,), F32, randn(0.5), param=True),
        "base": TensorSpec(("N3",), F32, randn(0.5), param=True),
        "norm_weight": TensorSpec(("D",), None, near_one(), param=True),
    },
    literals={"rms_eps": EPS, "hc_eps": EPS, "norm_eps": EPS, "sinkhorn_iters": SINKHORN_ITERS,
              "post_mult": POST_MULT},
    seed="fn",
    seed_label="matmul",
    constraints=lambda d: hc_constraints(d, 24),
    regimes=MHC_REGIMES,
    priority=30,
    description="hc_pre + RMSNorm -> mhc_pre(norm_weight=w)",
)
