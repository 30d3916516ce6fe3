"""DSV4 paged FP8 KV store (spec 4.3): quantize each row's 448 nope channels to e4m3 in 7 tiles of 64
with ue8m0 scales, write them, the 64 bf16 rope values and the scale bytes at the row's byte offsets
in its page. Found from the ``uint8`` cache written in place."""
import torch

from ._common import BF16, FP8_AMAX_EPS, INDEX, page_size_of, random_bytes, unique_slots
from fusegraph.pattern import Pattern, Regime, TensorSpec, randn

PATTERN = Pattern(
    name="store_fp8_paged",
    op="store_fp8_paged",
    inputs={
        "cache": TensorSpec(("NP", "B"), (torch.uint8,), random_bytes,
                            check=lambda d: page_size_of(d["B"]) > 0, param=True),
        "loc": TensorSpec(("T",), INDEX, unique_slots(lambda d: d["NP"] * page_size_of(d["B"]))),
        "k_nope": TensorSpec(("T", 448), BF16),
        "k_rope": TensorSpec(("T", 64), BF16),
    },
    literals={"page_size": lambda d: page_size_of(d["B"]), "quant_eps": FP8_AMAX_EPS},
    seed="cache",
    seed_label="index_put",
    mutates=("cache",),
    regimes=(Regime("normal"), Regime("tiny", {"k_nope": randn(1e-6)})),
    priority=10,
    description="FP8 quantize + paged byte scatter -> store_fp8_paged",
)
