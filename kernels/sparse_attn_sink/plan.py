"""Launch plan of the Triton sparse_attn_sink: path, head blocking, kv tile, split-K.

Two paths (``AttnPlan.path``):

* ``"two_kernel"`` (batches): ``sparse_attn_kernel`` + ``combine_kernel`` (when it splits).
  Defaults from ``benchmarks/ops_sparse.py --sweep`` on an H200 (CUDA-graph µs,
  ``benchmarks/results/ops_sparse_h200_tuned.json``): 64 heads x 64 rows, 8 warps, 3 stages.
  flash T=512: 272 (block_n 32: 341, 2 stages: 309, 16 heads / 4 warps: 852); pro T=512: 901
  (1145, 1025, 2950). One program per SM either way (255 registers, 170 KB shared memory): the
  fp32 accumulator of 64 heads x 512 channels is half the register file. At T = 1 every plan
  of this path took 13.8 .. 18.9 µs: a fixed cost (two launches, 64-head q tiles, a 3-stage
  pipeline for one tile, 1.3 MB of partials) dominates.
* ``"one_launch"`` (decode, small T): ``sparse_attn_decode_kernel``. Wider and shallower: small
  head blocks (16) times more splits, about one kv tile per program, no software pipeline
  (``num_stages`` 1; 2 when the grid is full and a program gets several tiles); the last split
  to arrive at a (token, head block) merges the partials (a ticket per group) in the same
  launch. Chosen on GPUs while ``T * head_blocks <= one_launch_max_fill * SMs`` (the crossover,
  a plan field so sweeps can move it; under the interpreter only when forced). The finisher reads
  ``splits * group_h * 2 KB`` of partials (fp32; 1 KB with ``partial_dtype="bf16"``) on one SM,
  so ``group_h`` 8, bf16 partials and ``min_tiles_per_split`` trade that against depth.
  Registers (ptxas for sm90, flash T = 1): 16 heads x 64 rows / 8 warps 196 regs, 0 spills;
  16 x 32 / 4 warps 194, 0; 32-head blocks spill 180+ bytes, 64-head blocks 28.

Common fields:

* Heads: one program handles ``block_h`` heads of one token (``tl.dot`` wants >= 16 rows, so
  fewer heads are padded), or only ``group_h`` of them (one-launch path; the rest are padding
  rows): each finisher then merges fewer partials.
* kv tiles: ``block_n`` index entries per online-softmax step; the two index lists are tiled
  separately (a tile never straddles the window and compressed lists) but walked by one loop.
* Split-K: the tiles of a (token, head block) are spread over ``splits`` programs that write
  partials (unnormalized accumulator, running max, running sum). The split count grows until the
  grid covers the SMs once, never beyond the tile count (``/ min_tiles_per_split``: fewer, deeper
  splits mean fewer partial bytes for the finisher). ``splits == 1`` skips partials.

Where the two-kernel path loses time at T >= 64 (sm90 SASS of the default plan, read 2026-11-21):
Triton's pipeliner issues tile i's gathered rows at the end of iteration i - 1 and waits for them at
the top of iteration i, with no compute in between (the rows' addresses come from the index tile
loaded one stage earlier), so each tile pays a full random-read latency, and one program per SM
(255 registers, 170 KB shared memory) leaves nothing to hide it; with 64 head rows on 8 warps both
warpgroups compute the whole ``S = Q K^T`` (each needs all of P as the PV dot's register operand).
A variant that prefetched tile i + 1 into registers during tile i (no pipeliner) was measured slower
on an H100 (flash T = 64 / 512: 65 / 355 µs vs 54 / 271 µs; register pressure, 32-row tiles) and
was dropped (``benchmarks/results/ops_sparse_h100_prefetch_trial.log``). Fixing both needs explicit
layouts and asynchronous wgmma (Triton's Gluon dialect or CUDA): a FlashMLA-style kernel.

``OVERRIDES`` lets benchmarks sweep fields (e.g. ``{"path": "one_launch", "block_h": 32}``) without
code changes; ``make_plan(..., overrides=)`` does the same per call (tests).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

OVERRIDES: dict[str, Any] = {}

PATHS = ("auto", "one_launch", "two_kernel")

# One launch while T * head_groups <= this fraction of the SMs. Measured on an H100 (132 SMs,
# CUDA-graph µs, benchmarks/results/ops_sparse_h100_sweep.log): flash T=1 12.7 (8-head groups) vs
# 15.9 two-kernel; pro T=1 24.6 vs 19.2; flash T=8 >= 24.9 vs 21.2. So only flash-sized T=1
# (8 groups of 8 heads) takes it: 0.07 * 132 = 9.2 groups.
ONE_LAUNCH_MAX_FILL = 0.07


@dataclass(frozen=True)
class AttnPlan:
    block_h: int           # head rows per program (power of two >= 16)
    block_n: int           # index entries per kv tile (power of two >= 16)
    num_warps: int
    num_stages: int        # 0: one-launch auto, 1 for one tile per program (nothing to overlap), else 2
    max_splits: int        # upper bound on programs per (token, head block)
    path: str = "auto"     # "auto" (resolved by make_plan) | "one_launch" | "two_kernel"
    one_launch_max_fill: float = ONE_LAUNCH_MAX_FILL   # the crossover (see the module docstring)
    group_h: int = 0       # heads per program, <= block_h (0: block_h); one-launch path only
    min_tiles_per_split: int = 1
    partial_dtype: str = "fp32"   # one-launch partial accumulators: "fp32" or "bf16" (acc / l, half the bytes)
    splits: int = 1        # programs per (token, head block), filled by make_plan
    tiles_per_split: int = 0

    @property
    def split(self) -> bool:
        return self.splits > 1

    @property
    def one_launch(self) -> bool:
        return self.path == "one_launch"

    @property
    def heads_per_program(self) -> int:
        return self.group_h or self.block_h


def _pow2_at_least(n: int, floor: int) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def base_plan(num_heads: int, gpu: bool) -> AttnPlan:
    """The two-kernel path's defaults."""
    if not gpu:  # interpreter: the smallest legal tiles keep CPU tests fast
        return AttnPlan(block_h=16, block_n=16, num_warps=4, num_stages=1, max_splits=64, path="two_kernel")
    block_h = min(64, _pow2_at_least(num_heads, 16))
    return AttnPlan(block_h=block_h, block_n=64, num_warps=4 if block_h <= 16 else 8, num_stages=3,
                    max_splits=64, path="two_kernel")


def decode_plan(num_heads: int, gpu: bool) -> AttnPlan:
    """The one-launch path's defaults: 16-head blocks, about one 64-row tile per program, no
    pipeline unless a program has several tiles."""
    if not gpu:
        return AttnPlan(block_h=16, block_n=16, num_warps=4, num_stages=1, max_splits=64, path="one_launch")
    return AttnPlan(block_h=16, block_n=64, num_warps=8, num_stages=0, max_splits=64, path="one_launch",
                    group_h=8)


def _decode_warps(block_h: int, block_n: int) -> int:
    """Warps of a one-launch program when a sweep changes its tile but not its warps: 4 for the
    small tiles, 8 once the dequantized tile or the accumulator would crowd 128 threads."""
    return 4 if block_h <= 16 and block_n <= 32 else 8


def _resolve_path(num_tokens: int, num_heads: int, num_sms: int, gpu: bool, fields: dict[str, Any]) -> str:
    path = fields.get("path", "auto")
    if path not in PATHS:
        raise ValueError(f"unknown sparse_attn_sink path {path!r} (one of {PATHS})")
    if path != "auto":
        return path
    if not gpu:  # CPU tests force the one-launch path explicitly; the interpreter default stays put
        return "two_kernel"
    probe = replace(decode_plan(num_heads, gpu), **{k: v for k, v in fields.items() if k != "path"})
    groups = max(1, num_tokens) * cdiv(num_heads, probe.heads_per_program)
    return "one_launch" if groups <= probe.one_launch_max_fill * num_sms else "two_kernel"


def make_plan(num_tokens: int, num_heads: int, k_swa: int, k_cmp: int, num_sms: int, gpu: bool,
              overrides: dict[str, Any] | None = None) -> AttnPlan:
    """The plan for ``num_tokens`` queries of ``num_heads`` heads over ``k_swa + k_cmp`` indices."""
    fields = {**OVERRIDES, **(overrides or {})}
    path = _resolve_path(num_tokens, num_heads, num_sms, gpu, fields)
    base = decode_plan(num_heads, gpu) if path == "one_launch" else base_plan(num_heads, gpu)
    if path == "one_launch" and gpu and "num_warps" not in fields and ("block_h" in fields or "block_n" in fields):
        base = replace(base, num_warps=_decode_warps(fields.get("block_h", base.block_h),
                                                     fields.get("block_n", base.block_n)))
    plan = replace(base, **{**fields, "path": path})
    if path == "two_kernel":
        plan = replace(plan, group_h=0)
    elif plan.group_h > plan.block_h or plan.group_h < 0:
        raise ValueError(f"group_h {plan.group_h} must be in 1..block_h ({plan.block_h})")
    if plan.partial_dtype not in ("fp32", "bf16"):
        raise ValueError(f"partial_dtype must be 'fp32' or 'bf16', got {plan.partial_dtype!r}")
    tiles = cdiv(k_swa, plan.block_n) + cdiv(k_cmp, plan.block_n)
    programs = max(1, num_tokens) * cdiv(num_heads, plan.heads_per_program)
    want = min(plan.max_splits, cdiv(tiles, max(1, plan.min_tiles_per_split)), max(1, num_sms // programs))
    if "splits" in fields:  # forced (tests, sweeps)
        want = min(plan.splits, max(tiles, 1))
    if want <= 1 or tiles == 0:
        plan = replace(plan, splits=1, tiles_per_split=max(tiles, 1))
    else:
        per_split = cdiv(tiles, want)
        plan = replace(plan, splits=cdiv(tiles, per_split), tiles_per_split=per_split)
    if plan.num_stages == 0:
        plan = replace(plan, num_stages=1 if plan.tiles_per_split == 1 else 2)
    return plan
