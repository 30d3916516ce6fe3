"""Benchmark cases of the attention-side family: compressor_pool, q_norm_rope, kv_norm_rope_quant,
set_mla_kv_buffer, store_fp8_paged and kv_norm_rope_quant_store (``python -m benchmarks.ops``).

Sizes: T tokens from the command line (default 1, 32, 512, 4096, 16384; rows for the KV writers);
q_norm_rope per preset (64 / 128 heads of 512); the other ops do not depend on the preset and run
once, under the first requested one. The compressor runs at d = 512 for ratio 4 (overlap: kv and
score are the two halves of one fp32 ``[T, 2 x 1024]`` projection, as a fused wkv/wgate GEMM gives
them) and ratio 128. The KV writers scatter T rows to distinct random slots of a cache of
``max(4T, 4096)`` slots (pages of 64), a new cache per input set so that every replay is cold.

Floors (``bytes_floor``): the rows read and written once plus the cos/sin rows; for the paged FP8
cache 584 bytes per token (576-byte row + 8-byte scale slot). ``kv_norm_rope_quant_store+unfused``
chains the two Triton providers the fused kernel replaces, to show what fusing saves.

The KV writers mutate their cache and return nothing, so the harness's fused-vs-eager error is
empty for them; ``tests/kernels`` checks their bytes.

Goals (stated for an H100/H200 under CUDA-graph replay): at T <= 32 at most 5 us per call (one
launch); at T >= 4096 at least 70 % of the copy bandwidth; never slower than torch.compile.
"""
from __future__ import annotations

from typing import Sequence

import torch

from benchmarks.harness import PRESETS, BenchCase, Goal, register_family
from fusegraph.kernels._fp8 import PagedLayout
from fusegraph.kernels.compressor_pool.reference import compressor_pool
from fusegraph.kernels.kv_norm_rope_quant import triton as kv_triton
from fusegraph.kernels.kv_norm_rope_quant.reference import kv_norm_rope_quant
from fusegraph.kernels.kv_norm_rope_quant_store.reference import kv_norm_rope_quant_store
from fusegraph.kernels.q_norm_rope.reference import q_norm_rope
from fusegraph.kernels.set_mla_kv_buffer.reference import set_mla_kv_buffer
from fusegraph.kernels.store_fp8_paged import triton as store_triton
from fusegraph.kernels.store_fp8_paged.reference import store_fp8_paged

RATIOS = (4, 128)
COMPRESS_DIM = 512
PAGE_SIZE = 64
MIN_SLOTS = 4096
EPS, QUANT_EPS = 1e-6, 1e-4
ROPE_ROW_BYTES = 2 * 32 * 4   # one cos + one sin row (fp32)
FP8_TOKEN_BYTES = 576 + 8     # one token in the paged FP8 cache
SMALL_T, SMALL_T_MAX_US = 32, 5.0
LARGE_T, LARGE_T_MIN_PCT_COPY = 4096, 70.0


# -- inputs -----------------------------------------------------------------------------------------
def _rope_rows(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    angle = torch.rand(n, 32, device=device) * 6.3
    return angle.cos(), angle.sin()


def _slots(T: int, device: torch.device, dtype: torch.dtype = torch.int64) -> tuple[int, torch.Tensor]:
    """(cache slots, T distinct random slots among them)."""
    num_slots = -(-max(4 * T, MIN_SLOTS) // PAGE_SIZE) * PAGE_SIZE
    return num_slots, torch.randperm(num_slots, device=device)[:T].to(dtype)


def _fp8_cache(num_slots: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(num_slots // PAGE_SIZE, PagedLayout(PAGE_SIZE).bytes_per_page, dtype=torch.uint8,
                       device=device)


def q_args(T: int, device: torch.device, H: int) -> tuple:
    q = torch.randn(T, H, 512, device=device).bfloat16()
    return (q, *_rope_rows(T, device), EPS)


def kv_args(T: int, device: torch.device) -> tuple:
    kv = torch.randn(T, 512, device=device).bfloat16()
    weight = (torch.rand(512, device=device) + 0.5).bfloat16()
    return (kv, weight, *_rope_rows(T, device), EPS, QUANT_EPS)


def store_args(T: int, device: torch.device) -> tuple:
    num_slots, loc = _slots(T, device)
    nope = torch.randn(T, 448, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (_fp8_cache(num_slots, device), loc, nope, rope, PAGE_SIZE, QUANT_EPS)


def kv_store_args(T: int, device: torch.device) -> tuple:
    kv, weight, cos, sin, eps, quant_eps = kv_args(T, device)
    num_slots, loc = _slots(T, device)
    return (kv, weight, cos, sin, eps, quant_eps, _fp8_cache(num_slots, device), loc, PAGE_SIZE)


def set_mla_args(T: int, device: torch.device) -> tuple:
    num_slots, loc = _slots(T, device, torch.int32)
    buffer = torch.zeros(num_slots, 576, dtype=torch.bfloat16, device=device)
    nope = torch.randn(T, 512, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (buffer, loc, nope, rope)


def compressor_args(T: int, device: torch.device, ratio: int) -> tuple:
    co = 2 if ratio == 4 else 1
    projected = torch.randn(T, 2 * co * COMPRESS_DIM, device=device)  # [kv | score] of one GEMM
    kv, score = projected[:, :co * COMPRESS_DIM], projected[:, co * COMPRESS_DIM:]
    ape = torch.randn(ratio, co * COMPRESS_DIM, device=device)
    norm = (torch.rand(COMPRESS_DIM, device=device) + 0.5).bfloat16()
    return (kv, score, ape, norm, *_rope_rows(T // ratio, device), ratio, EPS)


def kv_store_unfused(kv, weight, cos, sin, eps, quant_eps, cache, loc, page_size):
    """The two Triton providers the fused kernel replaces (bf16 rows written and re-read in between)."""
    k_nope, k_rope = kv_triton.kv_norm_rope_quant_triton(kv, weight, cos, sin, eps, quant_eps)
    store_triton.store_fp8_paged_triton(cache, loc, k_nope, k_rope, page_size, quant_eps)


# -- floors and goals -------------------------------------------------------------------------------
def compressor_floor(T: int, ratio: int) -> int:
    co = 2 if ratio == 4 else 1
    blocks = T // ratio
    return 2 * blocks * ratio * co * COMPRESS_DIM * 4 + ratio * co * COMPRESS_DIM * 4 \
        + blocks * (COMPRESS_DIM * 2 + ROPE_ROW_BYTES)


def goals(T: int) -> tuple[Goal, ...]:
    out = [Goal("min_speedup_compile", 1.0)]
    if T <= SMALL_T:
        out.append(Goal("max_us", SMALL_T_MAX_US))
    if T >= LARGE_T:
        out.append(Goal("min_pct_copy", LARGE_T_MIN_PCT_COPY))
    return tuple(out)


# -- cases --------------------------------------------------------------------------------------------
def _case(name: str, op: str, T: int, size: str, make_inputs, eager, bytes_floor: int, fused=None) -> BenchCase:
    return BenchCase(name=name, op=op, T=T, size=size, make_inputs=make_inputs, eager=eager, fused=fused,
                     bytes_floor=bytes_floor, goals=goals(T))


@register_family("attn")
def attn_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    cases = []
    for size in sizes:
        H = PRESETS[size].heads
        for T in tokens:
            cases.append(_case("q_norm_rope", "q_norm_rope", T, size,
                               lambda T, dev, H=H: q_args(T, dev, H), q_norm_rope.reference,
                               2 * T * H * 512 * 2 + T * ROPE_ROW_BYTES))
    size = sizes[0]  # the remaining ops do not depend on the preset
    for T in tokens:
        for ratio in RATIOS:
            if T >= ratio:
                cases.append(_case(f"compressor_pool+r{ratio}", "compressor_pool", T, size,
                                   lambda T, dev, ratio=ratio: compressor_args(T, dev, ratio),
                                   compressor_pool.reference, compressor_floor(T, ratio)))
        cases.append(_case("kv_norm_rope_quant", "kv_norm_rope_quant", T, size, kv_args,
                           kv_norm_rope_quant.reference, T * (512 * 2 * 2 + ROPE_ROW_BYTES)))
        cases.append(_case("set_mla_kv_buffer", "set_mla_kv_buffer", T, size, set_mla_args,
                           set_mla_kv_buffer.reference, T * (2 * 576 * 2 + 4)))
        cases.append(_case("store_fp8_paged", "store_fp8_paged", T, size, store_args,
                           store_fp8_paged.reference, T * (512 * 2 + FP8_TOKEN_BYTES + 8)))
        kv_store_floor = T * (512 * 2 + ROPE_ROW_BYTES + FP8_TOKEN_BYTES + 8)
        cases.append(_case("kv_norm_rope_quant_store", "kv_norm_rope_quant_store", T, size, kv_store_args,
                           kv_norm_rope_quant_store.reference, kv_store_floor))
        cases.append(_case("kv_norm_rope_quant_store+unfused", "kv_norm_rope_quant_store", T, size, kv_store_args,
                           kv_norm_rope_quant_store.reference, kv_store_floor, fused=kv_store_unfused))
    return cases
