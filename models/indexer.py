"""Lightning indexer (spec 3.6): picks the top-k compressed entries per query on ratio-4 layers.

`qi = wq_b(qr)` viewed `[T, nh, 128]`, RoPE on channels `[64, 128)`, Hadamard(128) * 128^-0.5,
FP4 simulation. Keys come from the indexer's own ratio-4 compressor (d = 128), get the same
Hadamard + FP4 treatment and are kept in `key_cache` (bf16 `[max_seq_len // 4, 128]`, slot =
block id). `w = weights_proj(x) * 128^-0.5 * nh^-0.5`;
`score[t, j] = sum_h w[t, h] * relu(qi[t, h] . k_j)`, blocks `j >= (p + 1) // 4` masked to -inf.
Top-k (stable sort, ties to the lower block) is taken on the scores right-padded with `index_topk` columns of -inf, so it needs no
Python `min(topk, n_blocks)` (traceable); entries whose score is -inf become index -1; each row is sorted ascending.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusegraph.models.compressor import Compressor
from fusegraph.models.layers import Linear
from fusegraph.models.quant import fp4_quant_dequant, hadamard_matrix
from fusegraph.models.rope import apply_rope


class Indexer(nn.Module):
    def __init__(
        self, dim: int, q_lora_rank: int, n_heads: int, head_dim: int, rope_dim: int, topk: int,
        ratio: int, max_seq_len: int, eps: float, fp4_tile: int,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.rope_dim = rope_dim
        self.topk = topk
        self.ratio = ratio
        self.fp4_tile = fp4_tile
        self.wq_b = Linear(q_lora_rank, n_heads * head_dim)
        self.weights_proj = Linear(dim, n_heads)
        self.compressor = Compressor(dim, head_dim, ratio, rope_dim, eps)
        self.register_buffer("hadamard", hadamard_matrix(head_dim) * head_dim**-0.5, persistent=False)
        self.register_buffer(
            "key_cache", torch.zeros(max_seq_len // ratio, head_dim, dtype=torch.bfloat16), persistent=False
        )

    def rotate_quant(self, x: Tensor) -> Tensor:
        return fp4_quant_dequant(x.float() @ self.hadamard, self.fp4_tile)

    def forward(
        self, x: Tensor, qr: Tensor, positions: Tensor, cos: Tensor, sin: Tensor,
        cos_table: Tensor, sin_table: Tensor, start_pos: int = 0,
    ) -> Tensor:
        """-> compressed-entry indices int64 [T, topk] (-1 = none)."""
        end_pos = start_pos + x.size(0)
        rd = self.rope_dim
        q = self.wq_b(qr).unflatten(-1, (self.n_heads, self.head_dim))
        q_rope = apply_rope(q[..., -rd:], cos.unsqueeze(-2), sin.unsqueeze(-2))
        q = self.rotate_quant(torch.cat([q[..., :-rd].float(), q_rope], -1))

        keys, block_ids = self.compressor(x, cos_table, sin_table, start_pos)
        self.key_cache[block_ids] = self.rotate_quant(keys).to(torch.bfloat16)
        blocks = torch.arange(end_pos // self.ratio, device=x.device)
        k = self.key_cache[blocks].float()

        weights = self.weights_proj(x).float() * (self.head_dim**-0.5 * self.n_heads**-0.5)
        score = torch.einsum("thd,jd->thj", q, k).relu()
        score = (score * weights.unsqueeze(-1)).sum(1)
        visible = blocks.unsqueeze(0) < ((positions + 1) // self.ratio).unsqueeze(1)
        score = score.masked_fill(~visible, float("-inf"))
        # Stable descending sort: ties go to the lower block id, so the selection does not depend
        # on T (FP4-simulated scores tie often). Then sorted ascending: the result is a set.
        values, idx = F.pad(score, (0, self.topk), value=float("-inf")).sort(dim=-1, descending=True, stable=True)
        values, idx = values[:, : self.topk], idx[:, : self.topk]
        return idx.masked_fill(values == float("-inf"), -1).sort(-1).values
