"""DSV4 decoder layer and model (spec section 5), eager reference for one sequence.

`DSV4Model.forward(input_ids: LongTensor[T], start_pos: int = 0) -> fp32 logits [T, vocab]`.
`start_pos == 0` is a prefill of all T tokens (resets every cache/state it reads); later calls
with `start_pos > 0` decode with the state left behind (any T, tokens processed in order).

Tracing: the whole model traces with
`torch.fx.symbolic_trace(model, concrete_args={"start_pos": 0})` with no leaf modules of ours
(`Linear`/`Embedding`/`RMSNorm` are plain modules that trace through to `F.linear` etc.). Caches
and compressor states are non-persistent buffers mutated in place (`__setitem__`, `index_put_`,
`copy_` nodes on `get_attr` values); the traced module shares them with the eager one. The prefill
path has no Python control flow on tensor values or traced sizes.

Parameters are named so that `state_dict()` keys are the checkpoint names (spec section 1).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusegraph.models.attention import Attention
from fusegraph.models.config import DSV4Config
from fusegraph.models.ffn import FeedForward
from fusegraph.models.layers import Embedding, Linear, RMSNorm
from fusegraph.models.mhc import hc_expand, hc_head, hc_post, hc_pre


def _hc_params(module: nn.Module, prefix: str, rows: int, cols: int, scales: int) -> None:
    setattr(module, f"{prefix}_fn", nn.Parameter(torch.zeros(rows, cols, dtype=torch.float32)))
    setattr(module, f"{prefix}_base", nn.Parameter(torch.zeros(rows, dtype=torch.float32)))
    setattr(module, f"{prefix}_scale", nn.Parameter(torch.zeros(scales, dtype=torch.float32)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DSV4Config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.hc_mult = cfg.hc_mult
        self.norm_eps = cfg.norm_eps
        self.hc_eps = cfg.hc_eps
        self.sinkhorn_iters = cfg.hc_sinkhorn_iters
        self.post_mult = cfg.hc_post_mult
        _hc_params(self, "hc_attn", cfg.hc_mix, cfg.hc_dim, 3)
        _hc_params(self, "hc_ffn", cfg.hc_mix, cfg.hc_dim, 3)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_intermediate, cfg.swiglu_limit)

    def _pre(self, x: Tensor, fn: Tensor, scale: Tensor, base: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return hc_pre(x, fn, scale, base, self.hc_mult, self.norm_eps, self.hc_eps, self.sinkhorn_iters, self.post_mult)

    def forward(self, x: Tensor, positions: Tensor, start_pos: int = 0) -> Tensor:
        """Residual bf16 [T, C, D] -> bf16 [T, C, D]."""
        h, post, comb = self._pre(x, self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base)
        h = self.attn(self.attn_norm(h), positions, start_pos)
        x = hc_post(h, x, post, comb)
        h, post, comb = self._pre(x, self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base)
        h = self.ffn(self.ffn_norm(h))
        return hc_post(h, x, post, comb)


class DSV4Model(nn.Module):
    def __init__(self, config: DSV4Config, seed: Optional[int] = 0, device: Optional[torch.device | str] = None) -> None:
        super().__init__()
        self.config = config
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.embed = Embedding(config.vocab_size, config.dim)
            self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
            _hc_params(self, "hc_head", config.hc_mult, config.hc_dim, 1)
            self.norm = RMSNorm(config.dim, config.norm_eps)
            self.head = Linear(config.dim, config.vocab_size)
        if seed is not None:
            init_parameters(self, seed)

    def forward(self, input_ids: Tensor, start_pos: int = 0) -> Tensor:
        cfg = self.config
        n_tokens = input_ids.size(0)
        if isinstance(n_tokens, int) and start_pos + n_tokens > cfg.max_seq_len:
            raise ValueError(f"positions up to {start_pos + n_tokens} exceed max_seq_len {cfg.max_seq_len}")
        positions = torch.arange(n_tokens, device=input_ids.device)
        if start_pos:
            positions = positions + start_pos
        x = hc_expand(self.embed(input_ids), cfg.hc_mult)
        for layer in self.layers:
            x = layer(x, positions, start_pos)
        h = hc_head(x, self.hc_head_fn, self.hc_head_scale, self.hc_head_base, cfg.norm_eps, cfg.hc_eps)
        h = self.norm(h)
        return F.linear(h.float(), self.head.weight.float())


def _init_value(name: str, shape: torch.Size, g: torch.Generator) -> Tensor:
    """Deterministic init keeping activations O(1) (so numerics tests are meaningful)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.endswith("_fn"):  # hc mixes ~ N(0, 1) for unit-RMS input
        return torch.randn(shape, generator=g) / math.sqrt(shape[-1])
    if leaf.endswith("_base"):
        return torch.randn(shape, generator=g) * 0.5
    if leaf.endswith("_scale"):
        return 0.1 + 0.4 * torch.rand(shape, generator=g)
    if leaf == "ape":
        return torch.randn(shape, generator=g) * 0.5
    if leaf == "attn_sink":
        return torch.randn(shape, generator=g)
    if name == "embed.weight":
        return torch.randn(shape, generator=g)
    if len(shape) == 1:  # RMSNorm weights
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(shape[-1])


@torch.no_grad()
def init_parameters(model: nn.Module, seed: int) -> None:
    """Seeded init of every parameter (skipped for meta tensors), independent of the device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if p.is_meta:
            continue
        p.copy_(_init_value(name, p.shape, g).to(p.dtype))
