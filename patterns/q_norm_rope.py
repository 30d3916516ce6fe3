"""Q per-head RMSNorm (unweighted) + RoPE on the last 64 channels (spec 4.2, pattern F4)."""
from ._common import BF16, EPS, rope_specs
from fusegraph.pattern import Pattern, Regime, TensorSpec, randn

PATTERN = Pattern(
    name="q_norm_rope",
    op="q_norm_rope",
    inputs={"q": TensorSpec(("T", "H", "Dh"), BF16), **rope_specs("T")},
    literals={"eps": EPS},
    seed="cos",
    seed_label="mul",
    constraints=lambda d: None if d["Dh"] > 64 else f"head dim {d['Dh']} leaves no room for the 64 rope channels",
    regimes=(Regime("normal"), Regime("tiny", {"q": randn(1e-5)})),
    interchangeable=(("cos", "sin"),),
    priority=20,
    description="per-head RMSNorm + RoPE -> q_norm_rope",
)
