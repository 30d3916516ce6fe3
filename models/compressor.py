"""KV compressor (spec section 3): gated softmax pooling of `ratio` tokens into one KV entry.

Ratio 128 pools disjoint blocks; ratio 4 pools overlapping windows of 2r tokens (the previous
block through channels `[0, d)`, the current block through `[d, 2d)`; `co = 2` doubles the
projection width). Each pooled row is cast to bf16, RMSNorm'd (`norm.weight`) and RoPE'd on its
last 64 channels at the block's first position `j * r` (the layer's compressed RoPE table).
The output is bf16 `[n, d]`, before any FP8 / Hadamard+FP4 simulation (the callers do that).

Two paths with identical results (pinned by tests):
* prefill (`start_pos == 0`, traceable, F7 form): `kv = F.linear(x.float(), wkv.float())`,
  `score = F.linear(x.float(), wgate.float())`, `compressor_pool(...)` over all complete blocks;
  the state buffers are then set to what token-by-token decoding would have left.
* decode (`start_pos > 0`, eager): token by token, rows of `kv_state` / `score_state`
  (fp32 `[co*r, co*d]`; scores stored already biased by `ape`) as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusegraph.models.layers import Linear, RMSNorm, rms_norm
from fusegraph.models.rope import apply_rope


def overlap_windows(x: Tensor, d: int, fill: float) -> Tensor:
    """[n, r, 2d] -> [n, 2r, d]: block j = (block j-1, channels [0,d)) ++ (block j, channels [d,2d)).

    Block 0's previous half is `fill` (0 for kv, -inf for scores)."""
    n, r = x.size(0), x.size(1)
    prev = torch.cat([x.new_full((1, r, d), fill), x[:, :, :d]], 0)[:n]
    return torch.cat([prev, x[:, :, d:]], 1)


def norm_rope_block(pooled: Tensor, norm_weight: Tensor, cos: Tensor, sin: Tensor, eps: float, rope_dim: int) -> Tensor:
    """Pooled fp32 rows -> bf16 -> RMSNorm -> RoPE on the last rope_dim channels (spec 3.3 steps 1-2)."""
    c = rms_norm(pooled.to(torch.bfloat16), norm_weight, eps)
    rope = apply_rope(c[..., -rope_dim:], cos, sin).to(torch.bfloat16)
    return torch.cat([c[..., :-rope_dim], rope], -1)


def compressor_pool(
    kv: Tensor,
    score: Tensor,
    ape: Tensor,
    norm_weight: Tensor,
    cos: Tensor,
    sin: Tensor,
    ratio: int,
    eps: float,
    head_dim: int,
    rope_dim: int,
) -> Tensor:
    """Prefill pooling of every complete block (F7). kv/score fp32 [T, co*d] -> bf16 [T//r, d]."""
    n = kv.size(0) // ratio
    kv_blocks = kv[: n * ratio].unflatten(0, (n, ratio))
    score_blocks = score[: n * ratio].unflatten(0, (n, ratio)) + ape
    if ratio == 4:
        kv_blocks = overlap_windows(kv_blocks, head_dim, 0.0)
        score_blocks = overlap_windows(score_blocks, head_dim, float("-inf"))
    pooled = (score_blocks.softmax(dim=1) * kv_blocks).sum(dim=1)
    return norm_rope_block(pooled, norm_weight, cos, sin, eps, rope_dim)


class Compressor(nn.Module):
    def __init__(self, dim: int, head_dim: int, ratio: int, rope_dim: int, eps: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.head_dim = head_dim
        self.rope_dim = rope_dim
        self.eps = eps
        self.overlap = ratio == 4
        co = 2 if self.overlap else 1
        self.width = co * head_dim
        self.state_rows = co * ratio
        self.wkv = Linear(dim, self.width)
        self.wgate = Linear(dim, self.width)
        self.ape = nn.Parameter(torch.zeros(ratio, self.width, dtype=torch.float32))
        self.norm = RMSNorm(head_dim, eps)
        self.register_buffer("kv_state", torch.zeros(self.state_rows, self.width), persistent=False)
        self.register_buffer("score_state", torch.full((self.state_rows, self.width), float("-inf")), persistent=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kv = F.linear(x.float(), self.wkv.weight.float())
        score = F.linear(x.float(), self.wgate.weight.float())
        return kv, score

    def forward(self, x: Tensor, cos_table: Tensor, sin_table: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor]:
        """x: normed layer input bf16 [T, D] at positions start_pos.. -> (blocks bf16 [n, d], block ids int64 [n])."""
        if start_pos == 0:
            return self.prefill(x, cos_table, sin_table)
        return self.decode(x, cos_table, sin_table, start_pos)

    def prefill(self, x: Tensor, cos_table: Tensor, sin_table: Tensor) -> tuple[Tensor, Tensor]:
        kv, score = self.project(x)
        r = self.ratio
        block_ids = torch.arange(x.size(0) // r, device=x.device)
        block_pos = block_ids * r
        blocks = compressor_pool(
            kv, score, self.ape, self.norm.weight, cos_table[block_pos], sin_table[block_pos],
            r, self.eps, self.head_dim, self.rope_dim,
        )
        self.save_prefill_state(kv, score)
        return blocks, block_ids

    def save_prefill_state(self, kv: Tensor, score: Tensor) -> None:
        """Leave the state that token-by-token decoding of the same tokens would leave (spec 3.5)."""
        r = self.ratio
        n = kv.size(0) // r
        cutoff = n * r
        rem_kv = kv[cutoff:]
        rem_score = score[cutoff:] + self.ape[: kv.size(0) - cutoff]
        kv_rows = [rem_kv]
        score_rows = [rem_score]
        if self.overlap:
            # rows [0, r): the last complete block (raw kv, biased score); initial values if none.
            biased = (score[:cutoff].unflatten(0, (n, r)) + self.ape).flatten(0, 1)
            last_kv = torch.cat([kv.new_zeros(r, self.width), kv[:cutoff]], 0)[-r:]
            last_score = torch.cat([score.new_full((r, self.width), float("-inf")), biased], 0)[-r:]
            kv_rows = [last_kv, rem_kv]
            score_rows = [last_score, rem_score]
        kv_rows.append(kv.new_zeros(r, self.width))
        score_rows.append(score.new_full((r, self.width), float("-inf")))
        self.kv_state.copy_(torch.cat(kv_rows, 0)[: self.state_rows])
        self.score_state.copy_(torch.cat(score_rows, 0)[: self.state_rows])

    def decode(self, x: Tensor, cos_table: Tensor, sin_table: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        kv, score = self.project(x)
        r, d = self.ratio, self.head_dim
        offset = r if self.overlap else 0
        blocks: list[Tensor] = []
        block_ids: list[int] = []
        for i in range(x.size(0)):
            pos = start_pos + i
            row = offset + pos % r
            self.kv_state[row] = kv[i]
            self.score_state[row] = score[i] + self.ape[pos % r]
            if (pos + 1) % r:
                continue
            if self.overlap:
                window_kv = torch.cat([self.kv_state[:r, :d], self.kv_state[r:, d:]], 0)
                window_score = torch.cat([self.score_state[:r, :d], self.score_state[r:, d:]], 0)
            else:
                window_kv, window_score = self.kv_state, self.score_state
            pooled = (window_score.softmax(dim=0) * window_kv).sum(dim=0, keepdim=True)
            block_pos = pos + 1 - r
            cos, sin = cos_table[block_pos : block_pos + 1], sin_table[block_pos : block_pos + 1]
            blocks.append(norm_rope_block(pooled, self.norm.weight, cos, sin, self.eps, self.rope_dim))
            block_ids.append(pos // r)
            if self.overlap:
                self.kv_state[:r] = self.kv_state[r:].clone()
                self.score_state[:r] = self.score_state[r:].clone()
        if not blocks:
            return x.new_zeros(0, d), torch.zeros(0, dtype=torch.long, device=x.device)
        return torch.cat(blocks, 0), torch.tensor(block_ids, dtype=torch.long, device=x.device)
