"""KV norm + RoPE + FP8 quant followed by the paged FP8 store of the same row (spec 4.3: the engines'
``fused_k_norm_rope_flashmla``). A composition of ``kv_norm_rope_quant`` and ``store_fp8_paged``."""
from fusegraph.pattern import Composition

COMPOSITION = Composition(
    name="kv_norm_rope_quant_store",
    first="kv_norm_rope_quant",
    second="store_fp8_paged",
    link={"k_nope": 0, "k_rope": 1},
    op="kv_norm_rope_quant_store",
    description="kv_norm_rope_quant -> store_fp8_paged of its parts  =>  kv_norm_rope_quant_store",
)
