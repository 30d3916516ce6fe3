"""CUDA provider of sparse_attn_sink for decode (T <= 4, sm90): one launch, split-K over a thread-block cluster.

The kernel (``sparse_attn_decode.cu``, design notes there) runs one CTA per (token, 16 heads, split
rank) with the split ranks of a token forming one Hopper thread-block cluster: each CTA gathers and
dequantizes its share of the token's index entries (window list, then compressed list), computes
its softmax partial with ``mma.sync`` and the CTAs merge the partials through distributed shared
memory (``cluster.map_shared_rank``): no global partials, no ticket counters, no second kernel. PDL
on both ends. Built at first use by ``kernels/_cuda_jit.py`` (its own small extension, ``SPEC``).

Plan (:func:`make_decode_plan`, a pure function): the cluster size is the largest of 16 (one token)
or 8 (two or more), 4, 2, 1 that leaves each CTA at least ``MIN_ROWS_PER_CTA`` entries (flash, 640
entries: 16 CTAs of 40 at T = 1, 8 of 80 above; pro, 1152: 16 of 72, 8 of 144); a CTA stages at
most ``MAX_CHUNK`` entries at once and walks longer shares in equal chunks. Why 16 only for one
token (H100, ``benchmarks/results/sparse_decode_cuda_h100.log``, cold µs): flash T = 1 10.1 (16) vs
11.7 (8); T = 2 12.9 vs 11.9; T = 4 21.3 vs 14.1; pro T = 2 25.1 vs 20.6: once a few tokens fill the
SMs, fewer, deeper splits win. ``OVERRIDES`` / ``FUSEGRAPH_SPARSE_DECODE_CLUSTER`` force a cluster size (benchmarks).

Dispatch: the provider registers above Triton (priority 25) but its ``measured`` gate declines every
call whose (heads, T) is not in ``MEASURED_FASTER``: where a run of ``benchmarks/sparse_decode_cuda.py``
measured it faster than the Triton default (on sm90, the only target it runs on; the file it cites).
Keyed without the device, like the KV writers' tables, so that a plan made off the GPU (meta
tensors, ``fusegraph report --target sm90``) sees the same choice. ``FUSEGRAPH_SPARSE_ATTN_CUDA=1`` lifts the gate (experiments, tests);
``fusegraph.ops.prefer({"sparse_attn_sink": ["cuda"]})`` forces the provider where it is usable.

``supports_args`` declines (with the reason) T > 4, q other than bf16 ``[T, H, 512]`` with contiguous
channels and 16-byte aligned rows, index lists other than int32/int64 ``[T, K]`` with contiguous rows,
caches not uint8 ``[pages, >= page_size * 584]`` with contiguous, 16-byte aligned pages, sink / cos /
sin of other shapes, tensors on several devices and devices before sm90 (clusters).

:func:`emulate` is the kernel's arithmetic in torch (same partition, chunking, log2-domain online
softmax with bf16 P, k-partials, rank-order merge with the sink, rounding points): the CPU tests check
it against the reference, so the merge math is verified without a GPU.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels._fp8 import PagedLayout
from fusegraph.kernels.gather_dequant.reference import HEAD_DIM

from .reference import gather_rows, no_compressed, q_reason, sparse_attn_sink

HERE = Path(__file__).parent
CUDA_FILE = HERE / "sparse_attn_decode.cu"

MAX_TOKENS = 4            # decode only: larger batches belong to the Triton kernels
HEADS_PER_CTA = 16        # the mma M (kHeads)
MAX_CHUNK = 96            # entries a CTA stages at once (kMaxChunk)
CLUSTERS = (16, 8, 4, 2, 1)
MIN_ROWS_PER_CTA = 16
MAX_CLUSTER_ONE_TOKEN, MAX_CLUSTER = 16, 8   # measured (the module docstring)
K_SPLIT = 4               # QK k-partials (kKSplit)
TILE_STRIDE = HEAD_DIM + 8
MAX_SMEM = 227 * 1024     # sm90 dynamic shared memory a CTA
ALIGN = 16
LOG2E = math.log2(math.e)
TARGETS = frozenset({"sm90"})
PRIORITY = 25             # above Triton (20); the measured gate keeps it off until measured
FORCE_ENV = "FUSEGRAPH_SPARSE_ATTN_CUDA"
CLUSTER_ENV = "FUSEGRAPH_SPARSE_DECODE_CLUSTER"

# (target, heads, T) where benchmarks/sparse_decode_cuda.py measured this kernel faster than the Triton
# default under CUDA-graph replay (32 calls a graph, L2 flushed before each replay), H100, 2026-11-21:
# flash (64 heads) T = 1 / 2 / 4: 10.1 / 11.9 / 14.1 µs vs Triton 14.2 / 18.0 / 18.9; pro (128 heads)
# T = 1 / 2: 15.1 / 20.6 vs 20.7 / 21.9 (T = 4: 36.3 vs 29.1, Triton stays).
MEASURED_FASTER: frozenset[tuple[int, int]] = frozenset({(64, 1), (64, 2), (64, 4), (128, 1), (128, 2)})
MEASURED_SOURCE = "H100 2026-11-21, benchmarks/results/sparse_decode_cuda_h100.log"

OVERRIDES: dict[str, Any] = {}   # plan fields forced by benchmarks / tests: "cluster", "max_chunk"


# -- plan ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodePlan:
    cluster: int          # CTAs a token's entries are split over (one cluster)
    rows_per_split: int   # entries a CTA owns (the last ranks may own fewer or none)
    chunk_rows: int       # entries a CTA stages at once
    chunk_pad: int        # staged rows (a multiple of 16)
    chunks: int           # chunks of the largest share
    head_groups: int
    tokens: int

    @property
    def ctas(self) -> int:
        return self.cluster * self.head_groups * self.tokens

    @property
    def smem_bytes(self) -> int:
        return smem_bytes(self.chunk_pad)


def _align16(x: int) -> int:
    return (x + 15) & ~15


def smem_bytes(chunk_pad: int) -> int:
    """Dynamic shared memory of a CTA (``layout_of`` in the .cu file, term for term)."""
    a_bytes = max(HEADS_PER_CTA * TILE_STRIDE * 2, K_SPLIT * HEADS_PER_CTA * (chunk_pad + 4) * 4)
    kv = _align16(a_bytes)
    p = _align16(kv + max(chunk_pad * TILE_STRIDE * 2, HEADS_PER_CTA * HEAD_DIM * 4))
    ptr = _align16(p + HEADS_PER_CTA * (chunk_pad + 8) * 2)
    alpha = _align16(ptr + 2 * chunk_pad * 8)
    ml = _align16(alpha + HEADS_PER_CTA * 4)
    return _align16(ml + HEADS_PER_CTA * 8)


def _forced_cluster(overrides: dict[str, Any]) -> int | None:
    value = overrides.get("cluster", os.environ.get(CLUSTER_ENV) or None)
    if value is None:
        return None
    cluster = int(value)
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster size {cluster} not one of {CLUSTERS}")
    return cluster


def make_decode_plan(tokens: int, heads: int, entries: int, overrides: dict[str, Any] | None = None) -> DecodePlan:
    """The launch plan for ``tokens`` queries of ``heads`` heads over ``entries`` index entries a token
    (window + compressed list lengths)."""
    fields = {**OVERRIDES, **(overrides or {})}
    max_chunk = int(fields.get("max_chunk", MAX_CHUNK))
    if not 1 <= max_chunk <= MAX_CHUNK:
        raise ValueError(f"max_chunk must be in 1..{MAX_CHUNK}, got {max_chunk}")
    cluster = _forced_cluster(fields)
    if cluster is None:
        largest = MAX_CLUSTER_ONE_TOKEN if tokens <= 1 else MAX_CLUSTER
        cluster = next((c for c in CLUSTERS if c <= largest and -(-entries // c) >= MIN_ROWS_PER_CTA), 1)
    rows_per_split = -(-entries // cluster)
    chunks = max(1, -(-rows_per_split // max_chunk))
    chunk_rows = max(1, -(-rows_per_split // chunks))
    chunk_pad = max(16, _align16(chunk_rows))
    return DecodePlan(cluster, rows_per_split, chunk_rows, chunk_pad, chunks, -(-heads // HEADS_PER_CTA), tokens)


# -- the extension ------------------------------------------------------------------------------------
BINDING = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "sparse_attn_decode_args.h"

cudaError_t fg_sparse_attn_decode(const fg_sad::DecodeArgs& a, const fg_sad::DecodePlan& plan, cudaStream_t stream);

namespace {

fg_sad::CacheIn cache_in(const torch::Tensor& cache, const torch::Tensor& idx, int64_t page_size, int64_t tokens,
                         const char* name) {
  TORCH_CHECK(idx.is_cuda() && idx.dim() == 2 && idx.size(0) == tokens &&
              (idx.scalar_type() == torch::kInt32 || idx.scalar_type() == torch::kInt64) &&
              (idx.size(1) <= 1 || idx.stride(1) == 1),
              "sparse_attn_sink (CUDA): ", name, " indices must be int32/int64 [T, K] with contiguous rows");
  fg_sad::CacheIn c{};
  c.k = idx.size(1);
  c.idx = idx.data_ptr();
  c.idx_stride = idx.stride(0);
  c.idx_is_64 = idx.scalar_type() == torch::kInt64;
  c.cache = nullptr;
  c.page_stride = 0;
  c.page_size = 1;
  if (c.k > 0) {
    TORCH_CHECK(cache.is_cuda() && cache.device() == idx.device() && cache.scalar_type() == torch::kUInt8 &&
                cache.dim() == 2 && cache.stride(1) == 1 && page_size > 0 && cache.size(1) >= page_size * 584,
                "sparse_attn_sink (CUDA): ", name, " cache must be uint8 [pages, >= page_size * 584] with contiguous pages");
    c.cache = cache.data_ptr<uint8_t>();
    c.page_stride = cache.stride(0);
    c.page_size = page_size;
  }
  return c;
}

}  // namespace

void sparse_attn_decode(torch::Tensor q, torch::Tensor swa_cache, torch::Tensor swa_idx, torch::Tensor cmp_cache,
                        torch::Tensor cmp_idx, torch::Tensor sink, torch::Tensor cos, torch::Tensor sin,
                        torch::Tensor out, double softmax_scale, int64_t swa_page_size, int64_t cmp_page_size,
                        int64_t cluster, int64_t chunk_rows, int64_t chunk_pad, bool pdl) {
  TORCH_CHECK(q.is_cuda() && q.scalar_type() == torch::kBFloat16 && q.dim() == 3 && q.size(2) == 512 &&
              q.stride(2) == 1, "sparse_attn_sink (CUDA): q must be bf16 [T, H, 512] with contiguous channels");
  const int64_t T = q.size(0), H = q.size(1);
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == torch::kBFloat16 && out.dim() == 3 && out.size(0) == T &&
              out.size(1) == H && out.size(2) == 512 && out.stride(2) == 1, "sparse_attn_sink (CUDA): bad output");
  for (const torch::Tensor* t : {&sink, &cos, &sin, &out, &swa_idx, &cmp_idx}) {
    TORCH_CHECK(t->device() == q.device(), "sparse_attn_sink (CUDA): tensors on several devices");
  }
  TORCH_CHECK(sink.scalar_type() == torch::kFloat32 && sink.dim() == 1 && sink.size(0) == H && sink.stride(0) == 1,
              "sparse_attn_sink (CUDA): sink must be contiguous fp32 [H]");
  for (const torch::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 2 && t->size(0) == T && t->size(1) == 32 &&
                t->stride(1) == 1, "sparse_attn_sink (CUDA): cos / sin must be fp32 [T, 32] with contiguous rows");
  }
  fg_sad::DecodeArgs a{};
  a.q = q.data_ptr();
  a.q_stride_t = q.stride(0);
  a.q_stride_h = q.stride(1);
  a.swa = cache_in(swa_cache, swa_idx, swa_page_size, T, "swa");
  a.cmp = cache_in(cmp_cache, cmp_idx, cmp_page_size, T, "cmp");
  a.sink = sink.data_ptr<float>();
  a.cos = cos.data_ptr<float>();
  a.cos_stride = cos.stride(0);
  a.sin = sin.data_ptr<float>();
  a.sin_stride = sin.stride(0);
  a.out = out.data_ptr();
  a.out_stride_t = out.stride(0);
  a.out_stride_h = out.stride(1);
  a.tokens = T;
  a.heads = H;
  a.softmax_scale = static_cast<float>(softmax_scale);
  fg_sad::DecodePlan plan{static_cast<int>(cluster), static_cast<int>(chunk_rows), static_cast<int>(chunk_pad), pdl};
  const c10::cuda::CUDAGuard guard(q.device());
  const cudaError_t err = fg_sparse_attn_decode(a, plan, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "sparse_attn_sink (CUDA) launch failed: ", cudaGetErrorString(err));
}
"""

SPEC = jit.ExtensionSpec("sparse_attn_decode", (CUDA_FILE,), BINDING, ("sparse_attn_decode",), include_dirs=(HERE,))


def available() -> str | None:
    return jit.cuda_missing() or jit.build_failure(SPEC)


# -- gates --------------------------------------------------------------------------------------------
def _aligned(t: Tensor, alignment: int) -> bool:
    return t.device.type == "meta" or jit.aligned(t, alignment)


def _cache_reason(cache: Tensor, page_size: int, name: str) -> str | None:
    if not isinstance(cache, Tensor) or cache.dtype != torch.uint8 or cache.dim() != 2:
        return f"{name} must be a uint8 [num_pages, bytes_per_page] tensor"
    if page_size <= 0:
        return f"{name}: page_size must be positive, got {page_size}"
    need = PagedLayout(page_size).bytes_per_page
    if cache.shape[1] < need:
        return f"{name} pages hold {cache.shape[1]} bytes, page_size {page_size} needs {need}"
    if cache.stride(1) != 1 or cache.stride(0) % ALIGN or not _aligned(cache, ALIGN):
        return f"{name} pages must be contiguous and start on {ALIGN}-byte boundaries (16-byte row loads)"
    return None


def _device_reason(device: torch.device) -> str | None:
    if device.type == "meta":
        return None
    if device.type != "cuda":
        return "needs a CUDA device of sm90+ (thread-block clusters)"
    if jit.arch_of(device)[0] < 9:
        return f"needs sm90+ (thread-block clusters), got sm{''.join(map(str, jit.arch_of(device)))}"
    return None


def _supports(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor], cmp_idx: Optional[Tensor],
              sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int,
              cmp_page_size: int) -> str | None:
    cmp_cache, cmp_idx = no_compressed(swa_cache, swa_idx, cmp_cache, cmp_idx)
    reason = q_reason(q)
    if reason:
        return reason
    T, H, _ = q.shape
    if T > MAX_TOKENS:
        return f"decode kernel: T = {T} > {MAX_TOKENS} tokens (the Triton kernels take batches)"
    if H == 0:
        return "q has no heads"
    if q.stride(0) % 8 or q.stride(1) % 8 or not _aligned(q, ALIGN):
        return f"q rows must start on {ALIGN}-byte boundaries"
    for idx, name in ((swa_idx, "swa_idx"), (cmp_idx, "cmp_idx")):
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64):
            return f"{name} must be an int32 or int64 tensor"
        if idx.dim() != 2 or idx.shape[0] != T or (idx.shape[1] > 1 and idx.stride(1) != 1):
            return f"{name} must be [T={T}, K] with contiguous rows, got {tuple(idx.shape)}"
    for cache, idx, page_size, name in ((swa_cache, swa_idx, swa_page_size, "swa_cache"),
                                         (cmp_cache, cmp_idx, cmp_page_size, "cmp_cache")):
        if idx.shape[1]:
            reason = _cache_reason(cache, page_size, name)
            if reason:
                return reason
    if sink.dtype != torch.float32 or sink.shape != (H,) or sink.stride(0) != 1:
        return f"sink must be contiguous fp32 [{H}]"
    for table, name in ((cos, "cos"), (sin, "sin")):
        if table.dtype != torch.float32 or table.dim() != 2 or table.shape != (T, 32) or table.stride(1) != 1:
            return f"{name} must be fp32 [T={T}, 32] with contiguous rows, got {table.dtype} {tuple(table.shape)}"
    if any(x.device != q.device for x in (swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin)):
        return "all tensors must be on q's device"
    return _device_reason(q.device)


def _measured(q: Tensor, *args: Any, **kwargs: Any) -> str | None:
    """Decline unless ``MEASURED_FASTER`` lists (heads, T) or ``FUSEGRAPH_SPARSE_ATTN_CUDA=1``."""
    if os.environ.get(FORCE_ENV) == "1":
        return None
    key = (q.shape[1], q.shape[0])
    if key in MEASURED_FASTER:
        return None
    return (f"not measured faster than Triton at (heads, T) = {key} (MEASURED_FASTER: {MEASURED_SOURCE}; "
            f"benchmarks/sparse_decode_cuda.py measures; {FORCE_ENV}=1 forces it)")


# -- the provider -------------------------------------------------------------------------------------
def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Output allocation (tests replace it to poison outputs)."""
    return torch.empty(shape, dtype=dtype, device=device)


def launch(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Tensor, cmp_idx: Tensor, sink: Tensor,
           cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int, cmp_page_size: int, out: Tensor,
           plan: DecodePlan | None = None) -> DecodePlan:
    """Run the kernel into ``out`` (``cmp_cache`` / ``cmp_idx`` not None); returns the plan it ran."""
    T, H, _ = q.shape
    if plan is None:
        plan = make_decode_plan(T, H, swa_idx.shape[1] + cmp_idx.shape[1])
    module = jit.load(SPEC, q.device)
    if T == 0:
        return plan
    module.sparse_attn_decode(q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin, out, float(softmax_scale),
                              int(swa_page_size), int(cmp_page_size) if cmp_idx.shape[1] else 1, plan.cluster,
                              plan.chunk_rows, plan.chunk_pad, jit.pdl_enabled(q.device))
    return plan


@sparse_attn_sink.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available,
                           supports_args=_supports, measured=_measured)
def sparse_attn_sink_cuda(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor],
                          cmp_idx: Optional[Tensor], sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float,
                          swa_page_size: int, cmp_page_size: int) -> Tensor:
    cmp_cache, cmp_idx = no_compressed(swa_cache, swa_idx, cmp_cache, cmp_idx)
    out = _new_output(tuple(q.shape), torch.bfloat16, q.device)
    launch(q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin, softmax_scale, swa_page_size, cmp_page_size, out)
    return out


# -- the kernel's arithmetic in torch (CPU tests) -----------------------------------------------------
def _bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def emulate(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor], cmp_idx: Optional[Tensor],
            sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int, cmp_page_size: int,
            plan: DecodePlan | None = None) -> Tensor:
    """What the kernel computes, step for step in fp32: the same split of each token's entries over the
    cluster's ranks and chunks, S as the sum of 4 k-partials of 128 channels (in order), log2-domain
    online softmax with -inf guards, P rounded to bf16 for the PV product (l sums the fp32 p), the
    rank-order merge with the sink, bf16 rounding, inverse RoPE on the rounded values. (Inside one mma
    the products' summation order is the hardware's; that is the only difference left.)"""
    cmp_cache, cmp_idx = no_compressed(swa_cache, swa_idx, cmp_cache, cmp_idx)
    T, H, D = q.shape
    K = swa_idx.shape[1] + cmp_idx.shape[1]
    if plan is None:
        plan = make_decode_plan(T, H, K)
    parts = [gather_rows(swa_cache, swa_idx, swa_page_size)]
    if cmp_idx.shape[1]:
        parts.append(gather_rows(cmp_cache, cmp_idx, cmp_page_size))
    kv = torch.cat(parts, 1).float()                                   # [T, K, 512] (zeros where invalid)
    valid = torch.cat([swa_idx, cmp_idx], 1) >= 0
    qk_scale = torch.tensor(softmax_scale, dtype=torch.float32) * torch.tensor(LOG2E, dtype=torch.float32)
    qf = q.float()
    out = torch.empty(T, H, D, dtype=torch.bfloat16)
    sink2 = sink.float() * torch.tensor(LOG2E, dtype=torch.float32)
    for t in range(T):
        ms, ls, accs = [], [], []
        for rank in range(plan.cluster):
            begin = min(K, rank * plan.rows_per_split)
            end = min(K, begin + plan.rows_per_split)
            m = torch.full((H,), float("-inf"))
            l = torch.zeros(H)
            acc = torch.zeros(H, D)
            for c0 in range(begin, end, plan.chunk_rows):
                rows = slice(c0, min(c0 + plan.chunk_rows, end))
                k = kv[t, rows]
                s = torch.zeros(H, k.shape[0])
                for part in range(K_SPLIT):               # ((s0 + s1) + s2) + s3
                    cols = slice(128 * part, 128 * (part + 1))
                    s = s + qf[t, :, cols] @ k[:, cols].T
                s = torch.where(valid[t, rows][None, :], s * qk_scale, torch.tensor(float("-inf")))
                m_new = torch.maximum(m, s.amax(1))
                m_ref = torch.where(m_new == float("-inf"), torch.zeros(()), m_new)
                alpha = torch.exp2(m - m_ref)
                p = torch.exp2(s - m_ref[:, None])
                l = l * alpha + p.sum(1)
                acc = acc * alpha[:, None] + _bf16(p) @ k
                m = m_new
            ms.append(m)
            ls.append(l)
            accs.append(acc)
        M = sink2.clone()
        for m in ms:
            M = torch.maximum(M, m)
        M = torch.where(M == float("-inf"), torch.zeros(()), M)
        den = torch.zeros(H)
        for m, l in zip(ms, ls):
            den = den + l * torch.exp2(m - M)
        den = den + torch.exp2(sink2 - M)
        o = torch.zeros(H, D)
        for m, acc in zip(ms, accs):
            w = torch.where(den > 0, torch.exp2(m - M) / torch.where(den > 0, den, torch.ones(())), torch.zeros(()))
            o = o + acc * w[:, None]
        o = _bf16(o)
        x0, x1 = o[:, 448::2].clone(), o[:, 449::2].clone()
        c, s_ = cos[t].float()[None, :], sin[t].float()[None, :]
        o[:, 448::2] = x0 * c + x1 * s_
        o[:, 449::2] = x1 * c - x0 * s_
        out[t] = o.to(torch.bfloat16)
    return out
