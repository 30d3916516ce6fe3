"""KV-cache row store, ``buffer[loc] = cat([k_nope, k_rope], -1)`` (spec 4.3, pattern F6), written as
``setitem`` or ``index_put_``. Becomes the generic MLA row scatter ``set_mla_kv_buffer``."""
from ._common import INDEX, unique_rows
from fusegraph.pattern import Pattern, TensorSpec

PATTERN = Pattern(
    name="set_mla_kv_buffer",
    op="set_mla_kv_buffer",
    inputs={
        "kv_buffer": TensorSpec(("S", "W")),
        "loc": TensorSpec(("T",), INDEX, unique_rows("S")),
        "k_nope": TensorSpec(("T", "n"), check=lambda d: d["n"] < d["W"]),
        "k_rope": TensorSpec(("T", "r"), check=lambda d: d["n"] + d["r"] == d["W"]),
    },
    seed="kv_buffer",
    seed_label="index_put",
    mutates=("kv_buffer",),
    constraints=lambda d: None if d["T"] <= d["S"] else "more rows than the buffer holds",
    priority=10,
    description="buffer[loc] = cat(nope, rope) -> set_mla_kv_buffer",
)
