"""DSV4 model configuration (spec section 1) and the three presets.

`flash` and `pro` carry the released sizes (decoder layers only: the MTP block is not built, so
`compress_ratios` has one entry per decoder layer). `tiny` is a synthetic model that keeps every
fusable pattern intact (hc_mult 4, head 512 = 448 + 64, ratios 0 / 4 / 128, FP8 paged caches)
while staying fast on a CPU.

The released FFN is an MoE; this reference uses a dense SwiGLU stand-in (spec section 5 allows it)
whose width for `flash`/`pro` is `moe_intermediate_size`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

KVCacheLayout = Literal["fp8_paged", "bf16"]


@dataclass(frozen=True)
class DSV4Config:
    name: str
    vocab_size: int
    dim: int  # D, hidden size
    n_layers: int
    compress_ratios: tuple[int, ...]  # one per decoder layer: 0, 4 or 128
    n_heads: int  # H
    q_lora_rank: int
    o_groups: int  # G
    o_lora_rank: int
    ffn_intermediate: int
    index_n_heads: int
    index_topk: int
    index_head_dim: int = 128
    head_dim: int = 512  # Dh = nope 448 + rope 64
    rope_dim: int = 64  # Dr
    window_size: int = 128
    hc_mult: int = 4  # C
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    hc_post_mult: float = 2.0
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # ratio-0 layers, no YaRN
    compress_rope_theta: float = 160000.0  # ratio > 0 layers, with YaRN
    yarn_factor: float = 16.0
    yarn_original_seq_len: int = 65536
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    swiglu_limit: float = 10.0
    fp8_amax_eps: float = 1e-4  # official clamp of the FP8 tile amax
    fp8_tile: int = 64
    fp4_tile: int = 32
    # Cache geometry. Slots are absolute positions (no ring): capacity = max_seq_len tokens.
    max_seq_len: int = 4096
    kv_cache_layout: KVCacheLayout = "fp8_paged"
    page_size: int = 64

    def __post_init__(self) -> None:
        if len(self.compress_ratios) != self.n_layers:
            raise ValueError(f"compress_ratios has {len(self.compress_ratios)} entries, n_layers is {self.n_layers}")
        if any(r not in (0, 4, 128) for r in self.compress_ratios):
            raise ValueError(f"compress ratios must be 0, 4 or 128, got {self.compress_ratios}")
        if self.n_heads % self.o_groups:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of o_groups {self.o_groups}")
        if self.kv_cache_layout not in ("fp8_paged", "bf16"):
            raise ValueError(f"unknown kv_cache_layout {self.kv_cache_layout!r}")
        if (self.head_dim - self.rope_dim) % self.fp8_tile:
            raise ValueError("nope dim must be a multiple of the FP8 tile")

    @property
    def nope_dim(self) -> int:
        return self.head_dim - self.rope_dim

    @property
    def hc_dim(self) -> int:  # K = C * D
        return self.hc_mult * self.dim

    @property
    def hc_mix(self) -> int:  # N3 = C * (2 + C)
        return self.hc_mult * (2 + self.hc_mult)

    def with_(self, **changes) -> "DSV4Config":
        return replace(self, **changes)


FLASH = DSV4Config(
    name="flash",
    vocab_size=129280,
    dim=4096,
    n_layers=43,
    compress_ratios=(0, 0) + (4, 128) * 20 + (4,),
    n_heads=64,
    q_lora_rank=1024,
    o_groups=8,
    o_lora_rank=1024,
    ffn_intermediate=2048,
    index_n_heads=64,
    index_topk=512,
)

PRO = DSV4Config(
    name="pro",
    vocab_size=129280,
    dim=7168,
    n_layers=61,
    compress_ratios=(128, 128) + (4, 128) * 29 + (4,),
    n_heads=128,
    q_lora_rank=1536,
    o_groups=16,
    o_lora_rank=1024,
    ffn_intermediate=3072,
    index_n_heads=64,
    index_topk=1024,
)

TINY = DSV4Config(
    name="tiny",
    vocab_size=512,
    dim=256,
    n_layers=3,
    compress_ratios=(0, 4, 128),
    n_heads=4,
    q_lora_rank=128,
    o_groups=2,
    o_lora_rank=128,
    ffn_intermediate=512,
    index_n_heads=4,
    index_topk=16,
    max_seq_len=512,
)

CONFIGS: dict[str, DSV4Config] = {c.name: c for c in (TINY, FLASH, PRO)}
