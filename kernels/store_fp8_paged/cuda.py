"""CUDA provider of store_fp8_paged (Hopper/Blackwell): quantize in registers, one warp per token, PDL.

The kernel (``store_fp8_paged.cu``, comments there) quantizes a token's 448 nope channels to e4m3
with ue8m0 tile scales in registers (the exact rule of ``kernels/_fp8.py``, bit-identical to the
reference), and writes the 576-byte row (448 FP8 bytes + 64 bf16 rope) either straight from the
lanes (``"vector"``) or staged in shared memory and written with one
``cp.async.bulk.global.shared::cta`` (``"bulk"``, sm90+); the 8 scale bytes (not 16-byte aligned)
go with one plain 8-byte store. Slots ``loc < 0`` are skipped.

Variant choice, priority and the JIT build work as in ``kernels/set_mla_kv_buffer/cuda.py``
(``BULK_MIN_ROWS``, ``MEASURED_FASTER``, ``FUSEGRAPH_CUDA_COPY``). ``supports_args`` leaves to Triton
what the kernel does not take: other dtypes or widths, rows or pages not 16-byte aligned,
``quant_eps`` below 1e-30 (the scale would leave the fp32 normal range).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM
from fusegraph.kernels.store_fp8_paged.reference import check_args, store_fp8_paged

# H200, 2026-11-21 (benchmarks/results/ops_hopper_writers_h200_97af41c.log): the vector copy took
# 4.17 / 11.84 us at 4096 / 16384 rows vs Triton's 6.88 / 22.18 us; at 128 rows 1.67 vs 1.57 us.
MEASURED_FASTER = True           # above MIN_ROWS; the bulk copy never beat the vector copy
MIN_ROWS = 1024                  # below this Triton measured as fast or faster
PRIORITY = 25 if MEASURED_FASTER else 15
BULK_MIN_ROWS: int | None = None  # rows from which the bulk copy measured faster than the vector copy
COPY_ENV = "FUSEGRAPH_CUDA_COPY"
VARIANTS = ("vector", "bulk")
TARGETS = frozenset({"sm90", "sm100"})
MIN_QUANT_EPS = 1e-30
ALIGN = 16

BINDING = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

cudaError_t fg_store_fp8_paged(void* cache, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                               int64_t rows, int64_t nope_stride, int64_t rope_stride, int64_t page_stride,
                               int64_t page_size, float quant_eps, bool bulk, int warps, bool pdl,
                               cudaStream_t stream);

void store_fp8_paged(torch::Tensor cache, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                     int64_t page_size, double quant_eps, bool bulk, int64_t warps, bool pdl) {
  TORCH_CHECK(cache.is_cuda() && loc.is_cuda() && k_nope.is_cuda() && k_rope.is_cuda(),
              "store_fp8_paged (CUDA): tensors must be CUDA tensors");
  TORCH_CHECK(loc.device() == cache.device() && k_nope.device() == cache.device() && k_rope.device() == cache.device(),
              "store_fp8_paged (CUDA): tensors on several devices");
  TORCH_CHECK(cache.scalar_type() == torch::kUInt8 && cache.dim() == 2 && cache.stride(1) == 1,
              "store_fp8_paged (CUDA): cache must be uint8 [pages, bytes] with contiguous pages");
  TORCH_CHECK(loc.dim() == 1 && (loc.scalar_type() == torch::kInt32 || loc.scalar_type() == torch::kInt64) &&
              (loc.numel() == 0 || loc.stride(0) == 1), "store_fp8_paged (CUDA): loc must be a contiguous int32/int64 vector");
  const int64_t rows = loc.size(0);
  TORCH_CHECK(k_nope.scalar_type() == torch::kBFloat16 && k_rope.scalar_type() == torch::kBFloat16,
              "store_fp8_paged (CUDA): k_nope and k_rope must be bf16");
  TORCH_CHECK(k_nope.dim() == 2 && k_nope.size(0) == rows && k_nope.size(1) == 448 && k_nope.stride(1) == 1 &&
              k_rope.dim() == 2 && k_rope.size(0) == rows && k_rope.size(1) == 64 && k_rope.stride(1) == 1,
              "store_fp8_paged (CUDA): expected k_nope [T, 448] and k_rope [T, 64] with contiguous rows");
  TORCH_CHECK(page_size > 0 && cache.size(1) >= page_size * (576 + 8),
              "store_fp8_paged (CUDA): cache pages are too small for page_size");
  const c10::cuda::CUDAGuard guard(cache.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = fg_store_fp8_paged(
      cache.data_ptr(), loc.data_ptr(), loc.scalar_type() == torch::kInt64, k_nope.data_ptr(), k_rope.data_ptr(),
      rows, k_nope.stride(0) * 2, k_rope.stride(0) * 2, cache.stride(0), page_size, static_cast<float>(quant_eps),
      bulk, static_cast<int>(warps), pdl, stream);
  TORCH_CHECK(err == cudaSuccess, "store_fp8_paged (CUDA) launch failed: ", cudaGetErrorString(err));
}
"""

SPEC = jit.ExtensionSpec("store_fp8_paged", Path(__file__).with_name("store_fp8_paged.cu"), BINDING,
                         ("store_fp8_paged",))


def available() -> str | None:
    return jit.cuda_missing() or jit.build_failure(SPEC)


def _supports(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float) -> str | None:
    try:
        check_args(cache, loc, k_nope, k_rope, page_size)
    except (ValueError, TypeError) as exc:
        return str(exc)
    for name, t, width in (("k_nope", k_nope, NOPE_DIM), ("k_rope", k_rope, ROPE_DIM)):
        if t.dtype != torch.bfloat16 or t.stride(1) != 1:
            return f"{name} must be bf16 with contiguous rows, got {t.dtype}"
        if (t.stride(0) * 2) % ALIGN or not jit.aligned(t, ALIGN):
            return f"{name} rows do not start on {ALIGN}-byte boundaries"
    if cache.stride(1) != 1 or cache.stride(0) % ALIGN or not jit.aligned(cache, ALIGN):
        return f"cache pages must be contiguous and start on {ALIGN}-byte boundaries"
    if loc.numel() and loc.stride(0) != 1:
        return "loc must be contiguous"
    if not quant_eps >= MIN_QUANT_EPS:
        return f"quant_eps {quant_eps} below {MIN_QUANT_EPS} (scales would leave the fp32 normal range)"
    if loc.numel() < MIN_ROWS:
        return f"{loc.numel()} rows: below {MIN_ROWS} rows Triton measured as fast (1.57 vs 1.67 us at 128 rows)"
    devices = {t.device for t in (cache, loc, k_nope, k_rope)}
    return None if len(devices) == 1 else "tensors on several devices"


def copy_variant(rows: int) -> str:
    """The measured choice between the two row writes (``FUSEGRAPH_CUDA_COPY`` overrides it)."""
    forced = os.environ.get(COPY_ENV)
    if forced in VARIANTS:
        return forced
    return "bulk" if BULK_MIN_ROWS is not None and rows >= BULK_MIN_ROWS else "vector"


def warps_per_cta(rows: int) -> int:
    return 4 if rows <= 1024 else 8


def launch(cache, loc, k_nope, k_rope, page_size: int, quant_eps: float, variant: str | None = None) -> None:
    """Run the CUDA writer (``variant``: "vector" or "bulk"; default: :func:`copy_variant`)."""
    rows = loc.shape[0]
    if rows == 0:
        return
    variant = variant or copy_variant(rows)
    if variant not in VARIANTS:
        raise ValueError(f"unknown copy variant {variant!r}; expected one of {VARIANTS}")
    device = cache.device
    if variant == "bulk" and jit.arch_of(device)[0] < 9:
        raise ValueError("the bulk copy needs sm90 or later")
    module = jit.load(SPEC, device)
    module.store_fp8_paged(cache, loc, k_nope, k_rope, int(page_size), float(quant_eps), variant == "bulk",
                           warps_per_cta(rows), jit.pdl_enabled(device))


@store_fp8_paged.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available, supports_args=_supports)
def store_fp8_paged_cuda(cache, loc, k_nope, k_rope, page_size, quant_eps):
    launch(cache, loc, k_nope, k_rope, page_size, quant_eps)
