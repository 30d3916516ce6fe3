"""Sparse attention with attention sink over the window cache only (ratio-0 layers; spec 4.5, F8).

``sparse_attn_sink`` without compressed entries: ``cmp_cache``/``cmp_idx`` are left None. Inputs,
generators and regimes are that pattern's (see its module docstring); tried after it, so a layer
with a compressed cache is never taken for a window-only one.
"""
from __future__ import annotations

from . import sparse_attn_sink as full
from fusegraph.pattern import Pattern

PATTERN = Pattern(
    name="sparse_attn_sink_swa",
    op="sparse_attn_sink",
    inputs={**full.WINDOW_INPUTS, "sink": full.SINK, **full.rope_tables(tuple(full.WINDOW_INPUTS))},
    literals={"softmax_scale": full.SOFTMAX_SCALE, "swa_page_size": full.PATTERN.literals["swa_page_size"],
              "cmp_page_size": 0},
    seed="sink",
    seed_label=full.SINK_LABELS,
    regimes=full.REGIMES,
    interchangeable=(("cos", "sin"),),
    priority=full.PATTERN.priority - 1,
    description="FP8 gather + dequant of the window cache, scores, -1 mask, softmax with sink, weighted sum, "
                "inverse RoPE -> sparse_attn_sink (no compressed entries)",
)
