"""DSV4 attention (spec 4.2-4.5): shared-KV MQA over a sliding window plus compressed entries.

Per layer with compress ratio r (0, 4 or 128), for tokens x (normed layer input, bf16 [T, D]):
* q path (F4): `qr = q_norm(wq_a(x))`; `q = wq_b(qr)` viewed `[T, H, 512]`;
  `q_norm_rope`: per-head unweighted RMSNorm (fp32) + RoPE on `[..., 448:]` -> bf16.
* kv path (F5): `kv = wkv(x)` `[T, 512]`; `kv_norm_rope_quant`: weighted RMSNorm (kv_norm) ->
  RoPE on `[..., 448:]` -> FP8 quant-dequant of `[..., :448]` -> `k_nope [T,448]`, `k_rope [T,64]`
  bf16, stored into the window cache at slot = position.
* r > 0: the compressor pools the blocks these tokens complete; FP8 simulation of their nope part;
  stored into the compressed cache at slot = block id. r = 4: the indexer picks the top-k blocks;
  r = 128: every block `j < (p + 1) // 128`.
* sparse attention with sink (F8): the window cache is gathered (+ dequantized) at
  `swa_idx.clamp_min(0)` (`swa_idx` = slots `p-127..p`, -1 below 0), the compressed cache at
  `cmp_idx.clamp_min(0)`, both after every cache write of the step (engines write, then attend);
  rows and indices are concatenated along K (`[T, Kw + Kc, 512]`), one
  softmax with the sink; then inverse RoPE on `[..., 448:]` and the grouped output projection
  (`wo_a` per group as an einsum, then `wo_b`). This is the region of the fused op
  `sparse_attn_sink(q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin, ...)`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fusegraph.models.compressor import Compressor
from fusegraph.models.config import DSV4Config
from fusegraph.models.indexer import Indexer
from fusegraph.models.kv_cache import make_kv_cache
from fusegraph.models.layers import Linear, RMSNorm, rms_norm
from fusegraph.models.quant import fp8_quant_dequant
from fusegraph.models.rope import RotaryTable, YarnScaling, apply_inverse_rope, apply_rope


def q_norm_rope(q: Tensor, cos: Tensor, sin: Tensor, eps: float, rope_dim: int = 64) -> Tensor:
    """q bf16 [T,H,Dh]: per-head unweighted RMSNorm + RoPE on the last rope_dim channels (fp32 math) -> bf16."""
    qf = q.float()
    qf = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + eps)
    rope = apply_rope(qf[..., -rope_dim:], cos.unsqueeze(-2), sin.unsqueeze(-2))
    return torch.cat([qf[..., :-rope_dim], rope], -1).to(torch.bfloat16)


def kv_norm_rope_quant(
    kv: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float, quant_eps: float, rope_dim: int = 64
) -> tuple[Tensor, Tensor]:
    """kv bf16 [T,Dh] -> (k_nope bf16 [T,Dh-rd] FP8-simulated, k_rope bf16 [T,rd])."""
    kv = rms_norm(kv, weight, eps)
    k_rope = apply_rope(kv[..., -rope_dim:], cos, sin).to(torch.bfloat16)
    k_nope = fp8_quant_dequant(kv[..., :-rope_dim], quant_eps)
    return k_nope, k_rope


def sparse_attn_sink(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, scale: float) -> Tensor:
    """q bf16 [T,H,Dh]; kv bf16 [T,K,Dh] rows gathered per query (K = V); indices [T,K] (< 0 = invalid);
    sink f32 [H] -> bf16 [T,H,Dh]. One softmax per (token, head) over the valid rows plus the sink
    logit (which has no value)."""
    rows = kv.float()
    scores = torch.einsum("thd,tkd->thk", q.float(), rows) * scale
    scores = scores.masked_fill((indices < 0).unsqueeze(1), float("-inf"))
    m = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - m)
    den = p.sum(-1, keepdim=True) + torch.exp(sink.unsqueeze(-1) - m)
    out = torch.einsum("thk,tkd->thd", p / den, rows)
    return out.to(torch.bfloat16)


def window_indices(positions: Tensor, window: int) -> Tensor:
    """[T, window]: slots p-window+1 .. p, -1 where negative."""
    idx = positions.unsqueeze(1) + torch.arange(1 - window, 1, device=positions.device)
    return idx.masked_fill(idx < 0, -1)


def causal_block_indices(positions: Tensor, n_blocks, ratio: int) -> Tensor:
    """[T, n_blocks]: block j where j < (p + 1) // ratio, else -1."""
    blocks = torch.arange(n_blocks, device=positions.device).unsqueeze(0)
    visible = blocks < ((positions + 1) // ratio).unsqueeze(1)
    return torch.where(visible, blocks, -1)


class Attention(nn.Module):
    def __init__(self, cfg: DSV4Config, layer_id: int) -> None:
        super().__init__()
        self.ratio = cfg.compress_ratios[layer_id]
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.rope_dim = cfg.rope_dim
        self.nope_dim = cfg.nope_dim
        self.o_groups = cfg.o_groups
        self.o_lora_rank = cfg.o_lora_rank
        self.window = cfg.window_size
        self.eps = cfg.norm_eps
        self.quant_eps = cfg.fp8_amax_eps
        self.max_seq_len = cfg.max_seq_len
        self.softmax_scale = cfg.head_dim**-0.5

        self.wq_a = Linear(cfg.dim, cfg.q_lora_rank)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = Linear(cfg.q_lora_rank, cfg.n_heads * cfg.head_dim)
        self.wkv = Linear(cfg.dim, cfg.head_dim)
        self.kv_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.wo_a = Linear(cfg.n_heads * cfg.head_dim // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank)
        self.wo_b = Linear(cfg.o_groups * cfg.o_lora_rank, cfg.dim)
        self.attn_sink = nn.Parameter(torch.zeros(cfg.n_heads, dtype=torch.float32))

        if self.ratio:
            yarn = YarnScaling(cfg.yarn_factor, cfg.yarn_original_seq_len, cfg.yarn_beta_fast, cfg.yarn_beta_slow)
            self.rope = RotaryTable(cfg.rope_dim, cfg.max_seq_len, cfg.compress_rope_theta, yarn)
        else:
            self.rope = RotaryTable(cfg.rope_dim, cfg.max_seq_len, cfg.rope_theta)
        self.window_cache = make_kv_cache(cfg.kv_cache_layout, cfg.max_seq_len, cfg.page_size, cfg.fp8_amax_eps)
        self.compressor: Optional[Compressor] = None
        self.compressed_cache: Optional[nn.Module] = None
        self.indexer: Optional[Indexer] = None
        if self.ratio:
            self.compressor = Compressor(cfg.dim, cfg.head_dim, self.ratio, cfg.rope_dim, cfg.norm_eps)
            self.compressed_cache = make_kv_cache(
                cfg.kv_cache_layout, cfg.max_seq_len // self.ratio, cfg.page_size, cfg.fp8_amax_eps
            )
        if self.ratio == 4:
            self.indexer = Indexer(
                cfg.dim, cfg.q_lora_rank, cfg.index_n_heads, cfg.index_head_dim, cfg.rope_dim, cfg.index_topk,
                self.ratio, cfg.max_seq_len, cfg.norm_eps, cfg.fp4_tile,
            )

    def forward(self, x: Tensor, positions: Tensor, start_pos: int = 0) -> Tensor:
        """x bf16 [T, D] (normed layer input) at positions start_pos + arange(T) -> bf16 [T, D]."""
        end_pos = start_pos + x.size(0)
        rd = self.rope_dim
        cos = self.rope.cos[positions]
        sin = self.rope.sin[positions]

        qr = self.q_norm(self.wq_a(x))
        q = self.wq_b(qr).unflatten(-1, (self.n_heads, self.head_dim))
        q = q_norm_rope(q, cos, sin, self.eps, rd)

        kv = self.wkv(x)
        k_nope, k_rope = kv_norm_rope_quant(kv, self.kv_norm.weight, cos, sin, self.eps, self.quant_eps, rd)
        self.window_cache.store(positions, k_nope, k_rope)

        swa_idx = window_indices(positions, self.window)
        cmp_idx = None
        if self.ratio:
            blocks, block_ids = self.compressor(x, self.rope.cos, self.rope.sin, start_pos)
            c_nope = fp8_quant_dequant(blocks[..., :-rd], self.quant_eps)
            self.compressed_cache.store(block_ids, c_nope, blocks[..., -rd:])
            if self.indexer is not None:
                cmp_idx = self.indexer(x, qr, positions, cos, sin, self.rope.cos, self.rope.sin, start_pos)
            else:
                cmp_idx = causal_block_indices(positions, end_pos // self.ratio, self.ratio)

        # Every cache write of this step is done: gather what the attention reads (as engines do,
        # reads after all writes).
        kv_rows = self.window_cache.read(swa_idx.clamp_min(0))  # [T, W, Dh]
        indices = swa_idx
        if cmp_idx is not None:
            cmp_rows = self.compressed_cache.read(cmp_idx.clamp_min(0))  # [T, Kc, Dh]
            kv_rows = torch.cat([kv_rows, cmp_rows], 1)
            indices = torch.cat([swa_idx, cmp_idx], 1)

        o = sparse_attn_sink(q, kv_rows, indices, self.attn_sink, self.softmax_scale)
        o_rope = apply_inverse_rope(o[..., -rd:], cos.unsqueeze(-2), sin.unsqueeze(-2)).to(torch.bfloat16)
        o = torch.cat([o[..., :-rd], o_rope], -1)

        o = o.flatten(1).unflatten(1, (self.o_groups, -1))  # [T, G, H/G * Dh]
        wo_a = self.wo_a.weight.unflatten(0, (self.o_groups, self.o_lora_rank))
        z = torch.einsum("tgd,grd->tgr", o, wo_a)
        return self.wo_b(z.flatten(1))
