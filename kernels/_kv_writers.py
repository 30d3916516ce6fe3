"""What the two CUDA KV writers share: one JIT extension, the launch plan, the measured dispatch.

The writers (``set_mla_kv_buffer/cuda.py``, ``store_fp8_paged/cuda.py``) have the same shape (see
``kernels/_cuda/kv_writer.cuh``): a persistent grid of warps, each warp loading every input vector
and cache slot of a task of ``rows_per_task`` rows before its first store, and writing the rows
with either a plain 16-byte warp copy (``"vector"``) or one ``cp.async.bulk`` per row staged in
shared memory (``"bulk"``, sm90+). This module holds what they share:

* ``SPEC``: one extension built from both ``.cu`` files and the shared header, with one C++
  binding exposing ``set_mla_kv_buffer`` and ``store_fp8_paged`` (shared argument checks); one
  nvcc build (cached on disk by source hash and arch, ``kernels/_cuda_jit.py``) serves both ops.
* :class:`Dispatch`: which writer runs from which row count, ``((min_rows, writer), ...)`` with
  writer ``"triton"``, ``"vector"`` or ``"bulk"``. Each op keeps its table in one line
  (``DISPATCH`` in its ``cuda.py``) citing the measurement it comes from
  (``benchmarks/ops_hopper.py``; device run: ``bash benchmarks/gpu_batch.sh WRITERS``). A
  ``"triton"`` entry makes the CUDA provider decline those calls through the ``measured`` gate, so
  dispatch goes to the Triton provider; ``FUSEGRAPH_CUDA_COPY=vector|bulk`` forces a copy (and
  the CUDA provider) for every row count, for experiments.
* :func:`plan`: rows per warp task and warps per CTA for a call (the grid size, the number of
  CTAs that fit on the device at once, is the launcher's: ``fg_kv::launch_persistent``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fusegraph.kernels import _cuda_jit as jit

KERNELS = Path(__file__).parent
SET_MLA_CU = KERNELS / "set_mla_kv_buffer" / "set_mla_kv_buffer.cu"
STORE_FP8_CU = KERNELS / "store_fp8_paged" / "store_fp8_paged.cu"
HEADER_DIR = KERNELS / "_cuda"

COPY_ENV = "FUSEGRAPH_CUDA_COPY"      # "vector" or "bulk": force a copy for every row count
VARIANTS = ("vector", "bulk")         # the CUDA writers' copies
WRITERS = ("triton",) + VARIANTS      # what a dispatch table may name
TARGETS = frozenset({"sm90", "sm100"})
PRIORITY_CUDA, PRIORITY_BELOW_TRITON = 25, 15  # Triton providers register at 20
MAX_WARPS = 8                         # fg_kv::kMaxWarpsPerCta
TASK_ROWS = (4, 2, 1)                 # rows a warp task may take (instantiated in the .cu files)
# Rows per warp task, measured on an H200 (benchmarks/results/writers_h200_2026-11-21.log, store_fp8_paged):
# at 4096 rows 1 row/task 3.44 us < 2: 3.58 < 4: 4.00; at 16384 rows 2 rows/task 9.39 us < 1: 9.90 < 4: 10.99.
MULTI_ROW_FROM = 8192                 # rows from which a task takes several rows (below: one, more warps)
MULTI_ROWS = 2                        # how many, then


# -- measured dispatch ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """Which writer runs from which row count.

    ``steps``: ``((min_rows, writer), ...)`` with ascending ``min_rows``, the first 0; ``writer`` is
    ``"triton"``, ``"vector"`` or ``"bulk"``; a call of ``rows`` rows takes the last step with
    ``min_rows <= rows``. ``source``: where the numbers come from (device, date, result file).
    """

    steps: tuple[tuple[int, str], ...]
    source: str

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError(f"dispatch steps must start at 0 rows: {self.steps}")
        bounds = [rows for rows, _ in self.steps]
        if bounds != sorted(set(bounds)):
            raise ValueError(f"dispatch steps must have strictly ascending row counts: {self.steps}")
        unknown = [w for _, w in self.steps if w not in WRITERS]
        if unknown:
            raise ValueError(f"unknown writers {unknown}; expected one of {WRITERS}")

    def writer(self, rows: int) -> str:
        chosen = self.steps[0][1]
        for min_rows, writer in self.steps:
            if rows >= min_rows:
                chosen = writer
        return chosen

    @property
    def uses_cuda(self) -> bool:
        return any(w != "triton" for _, w in self.steps)

    def priority(self) -> int:
        """Above Triton when some row count was measured faster with a CUDA copy, else below."""
        return PRIORITY_CUDA if self.uses_cuda else PRIORITY_BELOW_TRITON


def forced_variant() -> str | None:
    forced = os.environ.get(COPY_ENV)
    return forced if forced in VARIANTS else None


def copy_variant(dispatch: Dispatch, rows: int) -> str:
    """The copy a CUDA launch of ``rows`` rows uses: forced, else the table's (vector where the
    table says Triton: a direct launch still needs a copy)."""
    writer = forced_variant() or dispatch.writer(rows)
    return "vector" if writer == "triton" else writer


def measured_reason(dispatch: Dispatch, rows: int) -> str | None:
    """``measured`` gate: why the CUDA provider declines ``rows`` rows (None: it takes them)."""
    if forced_variant() or dispatch.writer(rows) != "triton":
        return None
    return f"{rows} rows: Triton measured at least as fast here ({dispatch.source})"


# -- launch plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchPlan:
    rows_per_task: int   # rows a warp loads before it stores (kRows)
    warps: int           # warps a CTA


@functools.lru_cache(maxsize=None)
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # (plans made off-GPU, e.g. in tests: an H100/H200)
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


def plan(rows: int, sms: int, max_rows_per_task: int, rows_per_task: int | None = None) -> LaunchPlan:
    """Rows per task: one below ``MULTI_ROW_FROM`` rows (more warps, each one round trip), else
    ``MULTI_ROWS`` as far as the row allows (``max_rows_per_task``; ``rows_per_task`` overrides, for
    measurements).
    Warps per CTA: 8 when there are tasks for 8 warps on every SM, else fewer, so that a small call
    still spreads over many SMs (one warp per CTA at a few hundred rows)."""
    if rows_per_task is None:
        rows_per_task = 1 if rows < MULTI_ROW_FROM else MULTI_ROWS
    rows_per_task = next(r for r in TASK_ROWS if r <= min(rows_per_task, max_rows_per_task))
    tasks = -(-max(rows, 1) // rows_per_task)
    per_sm = max(1, tasks // max(sms, 1))
    warps = 1 << min(per_sm.bit_length() - 1, MAX_WARPS.bit_length() - 1)
    return LaunchPlan(rows_per_task, warps)


# -- the extension ----------------------------------------------------------------------------------
BINDING = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

cudaError_t fg_set_mla_kv_buffer(void* buf, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                                 int64_t rows, int64_t buf_stride, int64_t nope_stride, int64_t rope_stride,
                                 int nope_bytes, int rope_bytes, int vec_bytes, int rows_per_task, bool bulk,
                                 int warps, bool pdl, cudaStream_t stream);
cudaError_t fg_store_fp8_paged(void* cache, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                               int64_t rows, int64_t nope_stride, int64_t rope_stride, int64_t page_stride,
                               int64_t page_size, float quant_eps, int rows_per_task, bool bulk, int warps, bool pdl,
                               cudaStream_t stream);

namespace {

// What both writers take: CUDA tensors on one device, loc a contiguous int32/int64 vector, k_nope and
// k_rope [rows, n] with contiguous rows, the cache [S, W] with contiguous rows.
void check_writer_args(const char* op, const torch::Tensor& cache, const torch::Tensor& loc,
                       const torch::Tensor& k_nope, const torch::Tensor& k_rope) {
  for (const torch::Tensor* t : {&cache, &loc, &k_nope, &k_rope}) {
    TORCH_CHECK(t->is_cuda(), op, " (CUDA): tensors must be CUDA tensors");
    TORCH_CHECK(t->device() == cache.device(), op, " (CUDA): tensors on several devices");
  }
  TORCH_CHECK(loc.dim() == 1 && (loc.scalar_type() == torch::kInt32 || loc.scalar_type() == torch::kInt64) &&
              (loc.numel() <= 1 || loc.stride(0) == 1), op, " (CUDA): loc must be a contiguous int32/int64 vector");
  TORCH_CHECK(cache.dim() == 2 && k_nope.dim() == 2 && k_rope.dim() == 2, op, " (CUDA): expected 2-D cache and rows");
  TORCH_CHECK(k_nope.size(0) == loc.size(0) && k_rope.size(0) == loc.size(0), op, " (CUDA): row counts differ");
  for (const torch::Tensor* t : {&cache, &k_nope, &k_rope}) {
    TORCH_CHECK(t->size(1) <= 1 || t->stride(1) == 1, op, " (CUDA): rows must be contiguous");
  }
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA) launch failed: ", cudaGetErrorString(err));
}

}  // namespace

void set_mla_kv_buffer(torch::Tensor kv_buffer, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                       int64_t vec_bytes, int64_t rows_per_task, bool bulk, int64_t warps, bool pdl) {
  check_writer_args("set_mla_kv_buffer", kv_buffer, loc, k_nope, k_rope);
  TORCH_CHECK(k_nope.scalar_type() == kv_buffer.scalar_type() && k_rope.scalar_type() == kv_buffer.scalar_type(),
              "set_mla_kv_buffer (CUDA): k_nope and k_rope must have the buffer's dtype");
  TORCH_CHECK(k_nope.size(1) + k_rope.size(1) == kv_buffer.size(1),
              "set_mla_kv_buffer (CUDA): nope + rope widths differ from the buffer's");
  const int64_t item = kv_buffer.element_size();
  TORCH_CHECK(kv_buffer.size(1) * item <= (1 << 20), "set_mla_kv_buffer (CUDA): row too wide");
  const c10::cuda::CUDAGuard guard(kv_buffer.device());
  check_launch("set_mla_kv_buffer", fg_set_mla_kv_buffer(
      kv_buffer.data_ptr(), loc.data_ptr(), loc.scalar_type() == torch::kInt64, k_nope.data_ptr(), k_rope.data_ptr(),
      loc.size(0), kv_buffer.stride(0) * item, k_nope.stride(0) * item, k_rope.stride(0) * item,
      static_cast<int>(k_nope.size(1) * item), static_cast<int>(k_rope.size(1) * item), static_cast<int>(vec_bytes),
      static_cast<int>(rows_per_task), bulk, static_cast<int>(warps), pdl,
      c10::cuda::getCurrentCUDAStream().stream()));
}

void store_fp8_paged(torch::Tensor cache, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                     int64_t page_size, double quant_eps, int64_t rows_per_task, bool bulk, int64_t warps, bool pdl) {
  check_writer_args("store_fp8_paged", cache, loc, k_nope, k_rope);
  TORCH_CHECK(cache.scalar_type() == torch::kUInt8, "store_fp8_paged (CUDA): cache must be uint8 [pages, bytes]");
  TORCH_CHECK(k_nope.scalar_type() == torch::kBFloat16 && k_rope.scalar_type() == torch::kBFloat16 &&
              k_nope.size(1) == 448 && k_rope.size(1) == 64,
              "store_fp8_paged (CUDA): expected bf16 k_nope [T, 448] and k_rope [T, 64]");
  TORCH_CHECK(page_size > 0 && cache.size(1) >= page_size * (576 + 8),
              "store_fp8_paged (CUDA): cache pages are too small for page_size");
  const c10::cuda::CUDAGuard guard(cache.device());
  check_launch("store_fp8_paged", fg_store_fp8_paged(
      cache.data_ptr(), loc.data_ptr(), loc.scalar_type() == torch::kInt64, k_nope.data_ptr(), k_rope.data_ptr(),
      loc.size(0), k_nope.stride(0) * 2, k_rope.stride(0) * 2, cache.stride(0), page_size,
      static_cast<float>(quant_eps), static_cast<int>(rows_per_task), bulk, static_cast<int>(warps), pdl,
      c10::cuda::getCurrentCUDAStream().stream()));
}
"""

SPEC = jit.ExtensionSpec("kv_writers", (SET_MLA_CU, STORE_FP8_CU), BINDING, ("set_mla_kv_buffer", "store_fp8_paged"),
                         include_dirs=(HEADER_DIR,))


def available() -> str | None:
    """``available`` of both CUDA writers: no device / no nvcc / a failed build of the extension."""
    return jit.cuda_missing() or jit.build_failure(SPEC)


def extension(device: torch.device, variant: str):
    """The built extension for ``device`` (built on first use), after checking ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown copy variant {variant!r}; expected one of {VARIANTS}")
    if variant == "bulk" and jit.arch_of(device)[0] < 9:
        raise ValueError("the bulk copy needs sm90 or later")
    return jit.load(SPEC, device)
