"""KV RMSNorm + RoPE + FP8 quant-dequant (spec 4.3, pattern F5 up to the concat): the window KV row
of every layer, returned as its two parts (448 nope, 64 rope) so that the store that follows can be
fused as well (``kv_norm_rope_quant_store`` or ``set_mla_kv_buffer``)."""
from ._common import BF16, EPS, FP8_AMAX_EPS, near_one, rope_specs
from fusegraph.pattern import Pattern, Regime, TensorSpec, randn

PATTERN = Pattern(
    name="kv_norm_rope_quant",
    op="kv_norm_rope_quant",
    inputs={"kv": TensorSpec(("T", 512), BF16), "weight": TensorSpec((512,), None, near_one(), param=True), **rope_specs("T")},
    literals={"eps": EPS, "quant_eps": FP8_AMAX_EPS},
    seed="weight",
    seed_label="mul",
    regimes=(Regime("normal"), Regime("tiny", {"kv": randn(1e-5)}), Regime("small_weight", {"weight": randn(1e-6)})),
    interchangeable=(("cos", "sin"),),
    priority=20,
    description="RMSNorm + RoPE + FP8 quant-dequant -> kv_norm_rope_quant",
)
