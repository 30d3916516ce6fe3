"""Launch plan of the Triton sparse_attn_sink: head blocking, kv tile, split-K.

* Heads: one program handles ``block_h`` heads of one token, so each gathered and dequantized kv
  tile feeds all of them (MQA: one kv row per token serves every head). ``tl.dot`` wants >= 16
  rows, so fewer heads are padded (masked) up to 16.
* kv tiles: ``block_n`` index entries per step of the online softmax; the two index lists are
  tiled separately (a tile never straddles the window and compressed lists) but walked by one
  loop, so the pipeliner prefetches across the boundary.
* Split-K: with few tokens a grid of ``T * head_blocks`` leaves most SMs idle (one program at
  T = 1, flash), so the tiles of a token are spread over ``splits`` programs that write fp32
  partials (unnormalized accumulator, running max, running sum); a combine kernel merges them and
  folds in the sink. Each split costs ``H * 2 KiB`` of partials, so the split count only grows
  until the grid covers the SMs once (never beyond the tile count). ``splits == 1`` skips the
  partials: the attention kernel finishes the output itself.

``OVERRIDES`` lets benchmarks sweep fields (e.g. ``{"block_h": 32}``) without code changes.

GPU defaults, from ``benchmarks/ops_sparse.py --sweep`` on an H200 (CUDA-graph µs,
``benchmarks/results/ops_sparse_h200_tuned.json``): 64 heads x 64 rows, 8 warps, 3 stages.
flash T=512: 272 (block_n 32: 341, 2 stages: 309, 16 heads / 4 warps: 852); pro T=512: 901
(1145, 1025, 2950). One program per SM either way (255 registers, 170 KB shared memory): the
fp32 accumulator of 64 heads x 512 channels is half the register file. At T = 1 the plans are
within ~3 µs of each other (13.8 .. 18.9), all far above the launch/latency floor.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

OVERRIDES: dict[str, Any] = {}


@dataclass(frozen=True)
class AttnPlan:
    block_h: int           # heads per program (power of two >= 16)
    block_n: int           # index entries per kv tile (power of two >= 16)
    num_warps: int
    num_stages: int
    max_splits: int        # upper bound on programs per (token, head block)
    splits: int = 1        # programs per (token, head block), filled by make_plan
    tiles_per_split: int = 0

    @property
    def split(self) -> bool:
        return self.splits > 1


def _pow2_at_least(n: int, floor: int) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def base_plan(num_heads: int, gpu: bool) -> AttnPlan:
    if not gpu:  # interpreter: the smallest legal tiles keep CPU tests fast
        return AttnPlan(block_h=16, block_n=16, num_warps=4, num_stages=1, max_splits=64)
    block_h = min(64, _pow2_at_least(num_heads, 16))
    return AttnPlan(block_h=block_h, block_n=64, num_warps=4 if block_h <= 16 else 8, num_stages=3,
                    max_splits=64)


def make_plan(num_tokens: int, num_heads: int, k_swa: int, k_cmp: int, num_sms: int, gpu: bool,
              overrides: dict[str, Any] | None = None) -> AttnPlan:
    """The plan for ``num_tokens`` queries of ``num_heads`` heads over ``k_swa + k_cmp`` indices."""
    plan = replace(base_plan(num_heads, gpu), **{**OVERRIDES, **(overrides or {})})
    tiles = cdiv(k_swa, plan.block_n) + cdiv(k_cmp, plan.block_n)
    programs = max(1, num_tokens) * cdiv(num_heads, plan.block_h)
    want = min(plan.max_splits, tiles, max(1, num_sms // programs))
    if "splits" in (overrides or {}) or "splits" in OVERRIDES:  # forced (tests, sweeps)
        want = min(plan.splits, max(tiles, 1))
    if want <= 1 or tiles == 0:
        return replace(plan, splits=1, tiles_per_split=max(tiles, 1))
    per_split = cdiv(tiles, want)
    return replace(plan, splits=cdiv(tiles, per_split), tiles_per_split=per_split)
