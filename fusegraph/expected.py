"""The DSV4 match set a model should produce: the expected-coverage contract.

For a DSV4 model with L decoder layers (compress ratio r_l each), one compilation should give:
- mHC: 2L pre sites and 2L post sites. Every post but the last feeds the next pre, so these fuse as
  ``mhc_post_pre`` (2L - 1 sites), leaving one ``mhc_pre_norm`` (the first layer's attention site)
  and one ``mhc_post`` (the last layer's FFN site, which feeds ``hc_head_norm``).
- ``hc_head_norm`` once.
- per layer: ``q_norm_rope`` once; the KV path once (``kv_norm_rope_quant_store`` when the window
  cache is the paged FP8 layout, else ``kv_norm_rope_quant`` + ``set_mla_kv_buffer``).
- ``compressor_pool`` at least once per layer with r > 0 (the attention compressor; the indexer's own
  ratio-4 compressor is a further site when it matches, not counted here).
- the attention core (sparse attention with sink + inverse RoPE) once per layer when the caches are
  the paged FP8 layout (the fused op reads FP8 pages; bf16 caches are not its input):
  ``sparse_attn_sink`` on layers with r > 0 (window + compressed cache), ``sparse_attn_sink_swa`` on
  layers with r = 0 (window cache only).
The model describes itself through ``model.config`` (``fusegraph.models.DSV4Config`` or anything with
``n_layers``/``num_hidden_layers`` and ``compress_ratios``); other models get no expectations.
"""
from __future__ import annotations

from collections import Counter

import torch


def _get(cfg, *names, default=None):
    for n in names:
        if hasattr(cfg, n):
            return getattr(cfg, n)
    return default


def expected_sites(model: torch.nn.Module) -> dict[str, int]:
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    n_layers = _get(cfg, "n_layers", "num_hidden_layers") if cfg is not None else None
    ratios = _get(cfg, "compress_ratios") if cfg is not None else None
    if not n_layers or ratios is None:
        return {}
    ratios = list(ratios)[:n_layers]
    out: Counter = Counter()
    out["mhc_pre_norm"] = 1
    out["mhc_post_pre"] = 2 * n_layers - 1
    out["mhc_post"] = 1
    out["hc_head_norm"] = 1
    out["q_norm_rope"] = n_layers
    layout = _get(cfg, "kv_cache_layout", default="fp8_paged")
    if layout == "bf16":
        out["kv_norm_rope_quant"] = n_layers
        out["set_mla_kv_buffer"] = n_layers
    else:
        out["kv_norm_rope_quant_store"] = n_layers
        out["sparse_attn_sink"] = sum(1 for r in ratios if r)
        out["sparse_attn_sink_swa"] = sum(1 for r in ratios if not r)
    out["compressor_pool"] = sum(1 for r in ratios if r)
    return {k: v for k, v in out.items() if v}
