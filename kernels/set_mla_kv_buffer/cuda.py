"""CUDA provider of set_mla_kv_buffer (Hopper/Blackwell): one warp per row, PDL, JIT-built.

The kernels are in ``set_mla_kv_buffer.cu`` (plain CUDA, comments there); they come in two
variants selected by a template flag, so that a GPU run can compare them:

* ``"vector"``: the warp copies the row with 16-byte (or 8/4-byte) vector loads and stores;
* ``"bulk"``: the warp stages the row in shared memory and writes it with one
  ``cp.async.bulk.global.shared::cta`` (the sglang PR #25311 design; sm90+).

Which one runs is decided by measurement (``benchmarks/ops_hopper.py`` times both against the Triton
provider and eager): ``BULK_MIN_ROWS`` is the row count from which the bulk copy measured faster
(None until measured: the vector copy runs), ``FUSEGRAPH_CUDA_COPY=bulk|vector`` forces one. The
provider ranks below Triton (priority 15 < 20) until ``MEASURED_FASTER`` says the H100 run showed
it faster.

Rows must meet the bulk copy's alignment (checked by ``supports_args``, which otherwise leaves the
call to Triton): the row's byte width a multiple of 16, each part's a multiple of 4, the buffer's
rows 16-byte aligned, the inputs' rows 4-byte aligned, rows contiguous, at most 4 KB a row.
The extension is compiled at first use (``kernels/_cuda_jit.py``: nvcc, cached on disk by source
hash and arch); ``available`` says why not when there is no CUDA device, no nvcc, or the build failed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels.set_mla_kv_buffer.reference import check_args, set_mla_kv_buffer

MEASURED_FASTER = False          # set after the H100 run shows this provider beating Triton
PRIORITY = 25 if MEASURED_FASTER else 15
BULK_MIN_ROWS: int | None = None  # rows from which the bulk copy measured faster than the vector copy
COPY_ENV = "FUSEGRAPH_CUDA_COPY"  # "bulk" or "vector": force a variant (benchmarks, experiments)
VARIANTS = ("vector", "bulk")
TARGETS = frozenset({"sm90", "sm100"})
MAX_ROW_BYTES = 4096              # the .cu's shared slot per warp (kMaxRowBytes)
BULK_ALIGN, PART_ALIGN = 16, 4

BINDING = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

cudaError_t fg_set_mla_kv_buffer(void* buf, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                                 int64_t rows, int64_t buf_stride, int64_t nope_stride, int64_t rope_stride,
                                 int nope_bytes, int rope_bytes, int vec_bytes, bool bulk, int warps, bool pdl,
                                 cudaStream_t stream);

void set_mla_kv_buffer(torch::Tensor kv_buffer, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                       int64_t vec_bytes, bool bulk, int64_t warps, bool pdl) {
  TORCH_CHECK(kv_buffer.is_cuda() && loc.is_cuda() && k_nope.is_cuda() && k_rope.is_cuda(),
              "set_mla_kv_buffer (CUDA): tensors must be CUDA tensors");
  TORCH_CHECK(loc.device() == kv_buffer.device() && k_nope.device() == kv_buffer.device() &&
              k_rope.device() == kv_buffer.device(), "set_mla_kv_buffer (CUDA): tensors on several devices");
  TORCH_CHECK(kv_buffer.dim() == 2 && k_nope.dim() == 2 && k_rope.dim() == 2 && loc.dim() == 1,
              "set_mla_kv_buffer (CUDA): expected kv_buffer [S, W], loc [T], k_nope [T, n], k_rope [T, W - n]");
  TORCH_CHECK(loc.scalar_type() == torch::kInt32 || loc.scalar_type() == torch::kInt64,
              "set_mla_kv_buffer (CUDA): loc must be int32 or int64");
  TORCH_CHECK(loc.numel() == 0 || loc.stride(0) == 1, "set_mla_kv_buffer (CUDA): loc must be contiguous");
  TORCH_CHECK(k_nope.scalar_type() == kv_buffer.scalar_type() && k_rope.scalar_type() == kv_buffer.scalar_type(),
              "set_mla_kv_buffer (CUDA): k_nope and k_rope must have the buffer's dtype");
  const int64_t rows = loc.size(0);
  TORCH_CHECK(k_nope.size(0) == rows && k_rope.size(0) == rows, "set_mla_kv_buffer (CUDA): row counts differ");
  TORCH_CHECK(k_nope.size(1) + k_rope.size(1) == kv_buffer.size(1),
              "set_mla_kv_buffer (CUDA): nope + rope widths differ from the buffer's");
  TORCH_CHECK((k_nope.size(1) <= 1 || k_nope.stride(1) == 1) && (k_rope.size(1) <= 1 || k_rope.stride(1) == 1) &&
              (kv_buffer.size(1) <= 1 || kv_buffer.stride(1) == 1), "set_mla_kv_buffer (CUDA): rows must be contiguous");
  const int64_t item = kv_buffer.element_size();
  TORCH_CHECK(kv_buffer.size(1) * item <= (1 << 20), "set_mla_kv_buffer (CUDA): row too wide");
  const c10::cuda::CUDAGuard guard(kv_buffer.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = fg_set_mla_kv_buffer(
      kv_buffer.data_ptr(), loc.data_ptr(), loc.scalar_type() == torch::kInt64, k_nope.data_ptr(), k_rope.data_ptr(),
      rows, kv_buffer.stride(0) * item, k_nope.stride(0) * item, k_rope.stride(0) * item,
      static_cast<int>(k_nope.size(1) * item), static_cast<int>(k_rope.size(1) * item), static_cast<int>(vec_bytes),
      bulk, static_cast<int>(warps), pdl, stream);
  TORCH_CHECK(err == cudaSuccess, "set_mla_kv_buffer (CUDA) launch failed: ", cudaGetErrorString(err));
}
"""

SPEC = jit.ExtensionSpec("set_mla_kv_buffer", Path(__file__).with_name("set_mla_kv_buffer.cu"), BINDING,
                         ("set_mla_kv_buffer",))


def available() -> str | None:
    return jit.cuda_missing() or jit.build_failure(SPEC)


def _parts(kv_buffer, k_nope, k_rope) -> list[tuple[str, torch.Tensor, int]]:
    """(name, tensor, bytes per row) of the inputs that have bytes to read."""
    item = kv_buffer.element_size()
    return [(name, t, t.shape[1] * item) for name, t in (("k_nope", k_nope), ("k_rope", k_rope)) if t.shape[1]]


def vector_bytes(kv_buffer, k_nope, k_rope) -> int:
    """Widest load/store (16, 8 or 4 bytes) dividing every part width, row stride and row address."""
    item = kv_buffer.element_size()
    sizes = [kv_buffer.stride(0) * item]
    tensors = [kv_buffer]
    for _, t, width in _parts(kv_buffer, k_nope, k_rope):
        sizes += [width, t.stride(0) * item]
        tensors.append(t)
    for vec in (16, 8, 4):
        if all(s % vec == 0 for s in sizes) and all(jit.aligned(t, vec) for t in tensors):
            return vec
    raise ValueError("rows are not 4-byte aligned (supports_args should have refused them)")


def alignment_reason(kv_buffer, k_nope, k_rope) -> str | None:
    """Why these rows fail the kernel's alignment rules (None: they pass)."""
    item = kv_buffer.element_size()
    nope_bytes, rope_bytes = k_nope.shape[1] * item, k_rope.shape[1] * item
    total = nope_bytes + rope_bytes
    if total % BULK_ALIGN:
        return f"row of {total} bytes is not a multiple of {BULK_ALIGN} (bulk copy rule)"
    if nope_bytes % PART_ALIGN or rope_bytes % PART_ALIGN:
        return f"nope/rope parts of {nope_bytes}/{rope_bytes} bytes are not multiples of {PART_ALIGN}"
    if total > MAX_ROW_BYTES:
        return f"row of {total} bytes is wider than the {MAX_ROW_BYTES}-byte staging slot"
    if (kv_buffer.stride(0) * item) % BULK_ALIGN or not jit.aligned(kv_buffer, BULK_ALIGN):
        return f"kv_buffer rows do not start on {BULK_ALIGN}-byte boundaries"
    for name, t, _ in _parts(kv_buffer, k_nope, k_rope):
        if (t.stride(0) * item) % PART_ALIGN or not jit.aligned(t, PART_ALIGN):
            return f"{name} rows do not start on {PART_ALIGN}-byte boundaries"
    return None


def _supports(kv_buffer, loc, k_nope, k_rope) -> str | None:
    try:
        check_args(kv_buffer, loc, k_nope, k_rope)
    except (ValueError, TypeError) as exc:
        return str(exc)
    for name, t in (("kv_buffer", kv_buffer), ("k_nope", k_nope), ("k_rope", k_rope)):
        if t.shape[1] > 1 and t.stride(1) != 1:
            return f"{name} rows must be contiguous"
    if loc.numel() and loc.stride(0) != 1:
        return "loc must be contiguous"
    devices = {t.device for t in (kv_buffer, loc, k_nope, k_rope)}
    if len(devices) != 1:
        return "tensors on several devices"
    return alignment_reason(kv_buffer, k_nope, k_rope)


def copy_variant(rows: int) -> str:
    """The measured choice between the two copies (``FUSEGRAPH_CUDA_COPY`` overrides it)."""
    forced = os.environ.get(COPY_ENV)
    if forced in VARIANTS:
        return forced
    return "bulk" if BULK_MIN_ROWS is not None and rows >= BULK_MIN_ROWS else "vector"


def warps_per_cta(rows: int) -> int:
    """Rows (warps) per CTA: 4 for small calls (more CTAs over the SMs), 8 for large ones (sglang)."""
    return 4 if rows <= 1024 else 8


def launch(kv_buffer, loc, k_nope, k_rope, variant: str | None = None) -> None:
    """Run the CUDA writer (``variant``: "vector" or "bulk"; default: :func:`copy_variant`)."""
    rows = loc.shape[0]
    if rows == 0:
        return
    variant = variant or copy_variant(rows)
    if variant not in VARIANTS:
        raise ValueError(f"unknown copy variant {variant!r}; expected one of {VARIANTS}")
    device = kv_buffer.device
    if variant == "bulk" and jit.arch_of(device)[0] < 9:
        raise ValueError("the bulk copy needs sm90 or later")
    module = jit.load(SPEC, device)
    module.set_mla_kv_buffer(kv_buffer, loc, k_nope, k_rope, vector_bytes(kv_buffer, k_nope, k_rope),
                             variant == "bulk", warps_per_cta(rows), jit.pdl_enabled(device))


@set_mla_kv_buffer.provider("cuda", targets=TARGETS, priority=PRIORITY, available=available, supports_args=_supports)
def set_mla_kv_buffer_cuda(kv_buffer, loc, k_nope, k_rope):
    launch(kv_buffer, loc, k_nope, k_rope)
