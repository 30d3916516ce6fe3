"""fusegraph.models: eager pure-PyTorch DeepSeek-V4 reference model (spec /work/shared/spec/dsv4-ops.md).

Entry points:
* `build_model(name, device="cpu", seed=0, **config_overrides) -> DSV4Model` (`PRESETS`: tiny,
  flash, pro; `build` is an alias) and `example_inputs(model, T) -> (input_ids,)`.
* `DSV4Model(config, seed=0, device=None)`;
  `forward(input_ids: LongTensor[T], start_pos: int = 0) -> fp32 logits [T, vocab]`
  (start_pos 0 = prefill, later calls decode with the cached state). Traces with
  `torch.fx.symbolic_trace(model, concrete_args={"start_pos": 0})`, no leaf modules.
* `load_checkpoint(model, path_or_dir)` (safetensors; raises `CheckpointMismatchError`).

Module map: config (DSV4Config, presets), layers (Linear, Embedding, RMSNorm), rope, quant
(FP8/FP4 simulation, Hadamard), mhc (hc_pre / hc_post / hc_head), kv_cache (set_mla_kv_buffer,
store_fp8_paged, gather_fp8_paged, cache modules), compressor, indexer, attention (q_norm_rope,
kv_norm_rope_quant, sparse_attn_sink, Attention), ffn, model (DecoderLayer, DSV4Model), loader,
presets.
"""
from fusegraph.models.config import FLASH, PRO, TINY, DSV4Config
from fusegraph.models.loader import CheckpointMismatchError, load_checkpoint
from fusegraph.models.model import DecoderLayer, DSV4Model
from fusegraph.models.presets import PRESETS, build, build_model, example_inputs

__all__ = [
    "DSV4Config", "FLASH", "PRO", "TINY", "DSV4Model", "DecoderLayer", "PRESETS", "build", "build_model",
    "example_inputs", "load_checkpoint", "CheckpointMismatchError",
]
