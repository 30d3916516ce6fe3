"""KV compressor pooling + RMSNorm + RoPE (spec 3.1-3.3, pattern F7), ratios 4 (overlapping windows)
and 128: APE added to the gate scores, softmax over each window per channel, weighted sum of kv,
bf16 round, weighted RMSNorm, RoPE on the last 64 channels at the block positions.

Found from ``ape`` (an ``[r, co*d]`` fp32 value added to the scores). The two projections (kv and
score) stay outside: they are real GEMMs.
"""
from ._common import EPS, F32, near_one, rope_specs
from fusegraph.pattern import Pattern, Regime, TensorSpec, randn


def _constraints(d):
    r, w, dim = d["R"], d["W"], d["d"]
    if r < 1:
        return "compress ratio must be >= 1"
    if w != (2 if r == 4 else 1) * dim:
        return f"kv width {w} is not {'2 x' if r == 4 else '1 x'} the head dim {dim} (ratio {r})"
    if 64 > dim:
        return f"rope width 64 exceeds the head dim {dim}"
    return None


PATTERN = Pattern(
    name="compressor_pool",
    op="compressor_pool",
    inputs={
        "ape": TensorSpec(("R", "W"), F32, randn(0.5), param=True),
        "score": TensorSpec(("T", "W"), F32),
        "kv": TensorSpec(("T", "W"), F32),
        "norm_weight": TensorSpec(("d",), None, near_one(), param=True),
        **rope_specs("NB"),
    },
    literals={"ratio": lambda d: d["R"], "eps": EPS},
    seed="ape",
    seed_label="add",
    constraints=_constraints,
    regimes=(Regime("normal"), Regime("tiny", {"kv": randn(1e-5)}), Regime("sharp", {"score": randn(30.0)})),
    interchangeable=(("kv", "score"), ("cos", "sin")),
    priority=20,
    description="ape add + window softmax pool + RMSNorm + RoPE -> compressor_pool",
)
