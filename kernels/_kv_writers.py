"""What the two CUDA KV writers share: one JIT extension, the launch variants and plan, the measured dispatch.

The writers (``set_mla_kv_buffer/cuda.py``, ``store_fp8_paged/cuda.py``) have the same shape (see
``kernels/_cuda/kv_writer.cuh``): warps each load every input vector and cache slot of a task of
``rows_per_task`` rows before their first store, and write the rows with either a plain 16-byte warp
copy (``"vector"``) or one ``cp.async.bulk`` per row staged in shared memory (``"bulk"``, sm90+);
set_mla_kv_buffer also has ``"tma"`` (sm90+): bulk copies global -> shared per input part on an
mbarrier, then shared -> global per row, no registers holding data (the FP8 store, which quantizes
in registers, runs its vector copy for it).
This module holds what they share:

* :class:`Variant`: how a writer is launched, as a spec string ``"<copy>[/r<rows>][/w<warps>][/<grid>]
  [/<hint>][/c<ctas>]"``, e.g. ``"vector/r4/w4/flat/stream"``: the copy (``vector`` | ``bulk`` | ``tma``), rows
  per warp task (1, 2, 4, 8), warps per CTA (1 .. 16), the grid (``persistent``: as many CTAs as fit
  at once, warps looping over the tasks; ``flat``: one warp per task, the hardware schedules the
  CTAs), the cache hint of the loads and stores (``plain``: ld/st.global; ``nc``:
  ld.global.nc.L1::no_allocate; ``stream``: ld/st.global.cs, i.e. ``__ldcs`` / ``__stcs``) and a cap
  on the grid's CTAs (``c132``: one CTA per H100/H200 SM; tests use small caps to make warps loop).
  What a spec leaves out, :func:`plan` picks (the defaults below). The benchmark sweeps specs
  (``benchmarks/ops_hopper.py``) without a code change: every (rows, hint, copy) is instantiated in
  the ``.cu`` files.
* :class:`Dispatch`: which writer runs from which row count, ``((min_rows, writer), ...)`` with
  writer ``"triton"`` or a variant spec. Each op keeps its table in one line (``DISPATCH`` in its
  ``cuda.py``) citing the measurement it comes from (device run: ``bash benchmarks/gpu_batch.sh
  WRITERS``, which prints the suggested line). A ``"triton"`` entry makes the CUDA provider decline
  those calls through the ``measured`` gate, so dispatch goes to the Triton provider;
  ``FUSEGRAPH_CUDA_COPY=<spec>`` forces a variant (and the CUDA provider) for every row count, for
  experiments (a value that does not parse is ignored).
* ``SPEC``: one extension built from both ``.cu`` files and the shared headers, with one C++ binding
  exposing ``set_mla_kv_buffer`` and ``store_fp8_paged`` (shared argument checks, one helper that
  turns the tensors into the launchers' ``fg_kv::RowsIn``); one nvcc build (cached on disk by source
  hash and arch, ``kernels/_cuda_jit.py``) serves both ops.
* :func:`resolve` (the extension and the variant of a call) and :func:`plan` (a variant made
  concrete for a call: the grid size of a persistent plan is the launcher's,
  ``fg_kv::launch_tasks``).
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

COPY_ENV = "FUSEGRAPH_CUDA_COPY"      # a variant spec: force it for every row count
VARIANTS = ("vector", "bulk", "tma")  # the CUDA writers' copies (fg_kv::Copy, in its order)
HINTS = ("plain", "nc", "stream")     # fg_kv::Hint, in its order
GRIDS = ("persistent", "flat")
TARGETS = frozenset({"sm90", "sm100"})
PRIORITY_CUDA, PRIORITY_BELOW_TRITON = 25, 15  # Triton providers register at 20
MAX_WARPS = 16                        # fg_kv::kMaxWarpsPerCta
MAX_STAGE_BYTES = 48 * 1024           # fg_kv::kMaxDynamicSmem: a CTA's bulk / tma staging
BARRIER_BYTES = 8 * MAX_WARPS         # the tma copy's mbarriers (set_mla_kv_buffer.cu's kBarrierBytes)
TASK_ROWS = (8, 4, 2, 1)              # rows a warp task may take (instantiated in the .cu files)
# Defaults of what a variant leaves out (the plan of the kernels measured on 2026-11-21: persistent
# grid, nc loads, at most 8 warps a CTA). Rows per warp task, measured on an H200
# (benchmarks/results/writers_h200_2026-11-21.log, store_fp8_paged): at 4096 rows 1 row/task 3.44 us <
# 2: 3.58 < 4: 4.00; at 16384 rows 2 rows/task 9.39 us < 1: 9.90 < 4: 10.99.
MULTI_ROW_FROM = 8192                 # rows from which a task takes several rows (below: one, more warps)
MULTI_ROWS = 2                        # how many, then
DEFAULT_MAX_WARPS = 8
DEFAULT_GRID, DEFAULT_HINT = "persistent", "nc"


# -- launch variants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How a CUDA writer is launched; ``None`` fields are :func:`plan`'s choice (see the module doc)."""

    copy: str = "vector"
    rows: int | None = None    # rows per warp task
    warps: int | None = None   # warps per CTA
    grid: str | None = None    # "persistent" | "flat"
    hint: str | None = None    # "plain" | "nc" | "stream"
    ctas: int | None = None    # cap on the grid's CTAs

    def __post_init__(self) -> None:
        if self.copy not in VARIANTS:
            raise ValueError(f"unknown copy {self.copy!r}; expected one of {VARIANTS}")
        if self.rows is not None and self.rows not in TASK_ROWS:
            raise ValueError(f"rows per task must be one of {sorted(TASK_ROWS)}, got {self.rows}")
        if self.warps is not None and not 1 <= self.warps <= MAX_WARPS:
            raise ValueError(f"warps per CTA must be 1..{MAX_WARPS}, got {self.warps}")
        if self.grid is not None and self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; expected one of {GRIDS}")
        if self.hint is not None and self.hint not in HINTS:
            raise ValueError(f"unknown cache hint {self.hint!r}; expected one of {HINTS}")
        if self.ctas is not None and self.ctas < 1:
            raise ValueError(f"a CTA cap must be positive, got {self.ctas}")
        if self.copy != "vector" and self.hint not in (None, "nc"):
            raise ValueError(f"the {self.copy} copy is instantiated with the nc hint only")

    @classmethod
    def parse(cls, spec: "str | Variant") -> "Variant":
        """``"vector/r4/w4/flat/stream"`` -> Variant (the copy first, the other parts in any order)."""
        if isinstance(spec, Variant):
            return spec
        copy, *parts = spec.strip().split("/")
        fields: dict[str, object] = {}

        def put(name: str, value: object) -> None:
            if name in fields:
                raise ValueError(f"variant {spec!r} sets its {name} twice")
            fields[name] = value

        for part in parts:
            if part[:1] in ("r", "w", "c") and part[1:].isdigit():
                put({"r": "rows", "w": "warps", "c": "ctas"}[part[0]], int(part[1:]))
            elif part in GRIDS:
                put("grid", part)
            elif part in HINTS:
                put("hint", part)
            else:
                raise ValueError(f"variant {spec!r}: unknown part {part!r} (expected rN, wN, cN, {GRIDS}, {HINTS})")
        return cls(copy, **fields)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        parts = [self.copy]
        if self.rows is not None:
            parts.append(f"r{self.rows}")
        if self.warps is not None:
            parts.append(f"w{self.warps}")
        parts += [x for x in (self.grid, self.hint) if x is not None]
        if self.ctas is not None:
            parts.append(f"c{self.ctas}")
        return "/".join(parts)


# -- measured dispatch ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """Which writer runs from which row count.

    ``steps``: ``((min_rows, writer), ...)`` with ascending ``min_rows``, the first 0; ``writer`` is
    ``"triton"`` or a :class:`Variant` spec (``"vector"``, ``"bulk"``, ``"vector/r8/w4/flat"`` ...); a
    call of ``rows`` rows takes the last step with ``min_rows <= rows``. ``source``: where the
    numbers come from (device, date, result file).
    """

    steps: tuple[tuple[int, str], ...]
    source: str

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError(f"dispatch steps must start at 0 rows: {self.steps}")
        bounds = [rows for rows, _ in self.steps]
        if bounds != sorted(set(bounds)):
            raise ValueError(f"dispatch steps must have strictly ascending row counts: {self.steps}")
        unknown = [w for _, w in self.steps if w != "triton" and _parse_or_none(w) is None]
        if unknown:
            raise ValueError(f"unknown writers {unknown}; expected 'triton' or a variant spec such as "
                             f"'vector/r4/w4/flat/nc' (see kernels/_kv_writers.Variant)")

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


def _parse_or_none(spec: str) -> Variant | None:
    try:
        return Variant.parse(spec)
    except ValueError:
        return None


def forced_variant() -> Variant | None:
    """``FUSEGRAPH_CUDA_COPY``'s variant (None when unset or not a valid spec)."""
    forced = os.environ.get(COPY_ENV)
    return _parse_or_none(forced) if forced else None


def copy_variant(dispatch: Dispatch, rows: int) -> Variant:
    """The variant a CUDA launch of ``rows`` rows uses: forced, else the table's (the default vector
    copy where the table says Triton: a direct launch still needs one)."""
    forced = forced_variant()
    if forced is not None:
        return forced
    writer = dispatch.writer(rows)
    return Variant() if writer == "triton" else Variant.parse(writer)


def measured_reason(dispatch: Dispatch, rows: int) -> str | None:
    """``measured`` gate: why the CUDA provider declines ``rows`` rows (None: it takes them)."""
    if forced_variant() is not None or dispatch.writer(rows) != "triton":
        return None
    return f"{rows} rows: Triton measured at least as fast here ({dispatch.source})"


# -- launch plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchPlan:
    """A variant made concrete for one call (what the launchers' ``fg_kv::Plan`` holds)."""

    rows_per_task: int   # rows a warp loads before it stores (kRows)
    warps: int           # warps a CTA
    persistent: bool = True
    hint: str = DEFAULT_HINT
    copy: str = "vector"
    max_ctas: int = 0    # 0: no cap

    def args(self, pdl: bool) -> tuple[int, int, int, bool, int, int, bool]:
        """The binding's trailing arguments: rows_per_task, warps, copy, persistent, hint, max_ctas, pdl."""
        return (self.rows_per_task, self.warps, VARIANTS.index(self.copy), self.persistent, HINTS.index(self.hint),
                self.max_ctas, pdl)


@functools.lru_cache(maxsize=None)
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # (plans made off-GPU, e.g. in tests: an H100/H200)
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


def plan(rows: int, sms: int, max_rows_per_task: int, variant: Variant | None = None, row_bytes: int = 0,
         hints: tuple[str, ...] = HINTS) -> LaunchPlan:
    """``variant`` made concrete for a call of ``rows`` rows.

    Rows per task: the variant's, else one below ``MULTI_ROW_FROM`` rows (more warps, each one round
    trip) and ``MULTI_ROWS`` from there; at most ``max_rows_per_task`` (what the row allows).
    Warps per CTA: the variant's, else 8 when there are tasks for 8 warps on every SM and fewer
    below, so that a small call still spreads over many SMs (one warp per CTA at a few hundred rows).
    A bulk or tma copy stages ``rows_per_task * row_bytes`` a warp: its warps (then its rows) shrink
    until a CTA's staging (and the tma copy's barriers) fits ``MAX_STAGE_BYTES``. Grid: the variant's,
    else persistent (and its CTA cap).
    Hint: the variant's when the kernel was instantiated with it (``hints``; bulk, tma copies: nc), else nc.
    """
    v = variant or Variant()
    wanted = v.rows or (1 if rows < MULTI_ROW_FROM else MULTI_ROWS)
    rows_per_task = next(r for r in TASK_ROWS if r <= min(wanted, max(max_rows_per_task, 1)))
    staged = v.copy != "vector"
    budget = MAX_STAGE_BYTES - (BARRIER_BYTES if v.copy == "tma" else 0)
    if staged:  # one warp's staging must fit
        while rows_per_task > 1 and rows_per_task * row_bytes > budget:
            rows_per_task //= 2
    tasks = -(-max(rows, 1) // rows_per_task)
    if v.warps is not None:
        warps = v.warps
    else:
        per_sm = max(1, tasks // max(sms, 1))
        warps = 1 << min(per_sm.bit_length() - 1, DEFAULT_MAX_WARPS.bit_length() - 1)
    if staged and row_bytes:
        warps = max(1, min(warps, budget // (rows_per_task * row_bytes)))
    hint = v.hint or DEFAULT_HINT
    if staged or hint not in hints:
        hint = DEFAULT_HINT
    return LaunchPlan(rows_per_task, warps, (v.grid or DEFAULT_GRID) == "persistent", hint, v.copy, v.ctas or 0)


# -- the extension ----------------------------------------------------------------------------------
BINDING = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "kv_writer_args.h"

cudaError_t fg_set_mla_kv_buffer(const fg_kv::RowsIn& in, void* buf, int64_t buf_stride, int nope_bytes,
                                 int rope_bytes, int vec_bytes, const fg_kv::Plan& plan, cudaStream_t stream);
cudaError_t fg_store_fp8_paged(const fg_kv::RowsIn& in, void* cache, int64_t page_stride, int64_t page_size,
                               float quant_eps, const fg_kv::Plan& plan, cudaStream_t stream);

namespace {

// What both writers take: CUDA tensors on one device, loc a contiguous int32/int64 vector, k_nope and
// k_rope [rows, n] with contiguous rows, the cache [S, W] with contiguous rows. Returns the rows as the
// launchers read them (strides in bytes).
fg_kv::RowsIn rows_in(const char* op, const torch::Tensor& cache, const torch::Tensor& loc,
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
  fg_kv::RowsIn in;
  in.loc = loc.data_ptr();
  in.nope = static_cast<const unsigned char*>(k_nope.data_ptr());
  in.rope = static_cast<const unsigned char*>(k_rope.data_ptr());
  in.rows = loc.size(0);
  in.nope_stride = k_nope.stride(0) * k_nope.element_size();
  in.rope_stride = k_rope.stride(0) * k_rope.element_size();
  in.loc_is_64 = loc.scalar_type() == torch::kInt64;
  return in;
}

fg_kv::Plan plan_of(int64_t rows_per_task, int64_t warps, int64_t copy, bool persistent, int64_t hint, int64_t max_ctas,
                    bool pdl) {
  TORCH_CHECK(max_ctas >= 0 && max_ctas < (int64_t{1} << 31), "KV writers (CUDA): bad CTA cap");
  fg_kv::Plan plan;
  plan.rows_per_task = static_cast<int>(rows_per_task);
  plan.warps = static_cast<int>(warps);
  plan.copy = static_cast<int>(copy);
  plan.persistent = persistent;
  plan.hint = static_cast<int>(hint);
  plan.max_ctas = static_cast<int>(max_ctas);
  plan.pdl = pdl;
  return plan;
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA) launch failed: ", cudaGetErrorString(err));
}

}  // namespace

void set_mla_kv_buffer(torch::Tensor kv_buffer, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                       int64_t vec_bytes, int64_t rows_per_task, int64_t warps, int64_t copy, bool persistent,
                       int64_t hint, int64_t max_ctas, bool pdl) {
  const fg_kv::RowsIn in = rows_in("set_mla_kv_buffer", kv_buffer, loc, k_nope, k_rope);
  TORCH_CHECK(k_nope.scalar_type() == kv_buffer.scalar_type() && k_rope.scalar_type() == kv_buffer.scalar_type(),
              "set_mla_kv_buffer (CUDA): k_nope and k_rope must have the buffer's dtype");
  TORCH_CHECK(k_nope.size(1) + k_rope.size(1) == kv_buffer.size(1),
              "set_mla_kv_buffer (CUDA): nope + rope widths differ from the buffer's");
  const int64_t item = kv_buffer.element_size();
  TORCH_CHECK(kv_buffer.size(1) * item <= (1 << 20), "set_mla_kv_buffer (CUDA): row too wide");
  const c10::cuda::CUDAGuard guard(kv_buffer.device());
  check_launch("set_mla_kv_buffer", fg_set_mla_kv_buffer(
      in, kv_buffer.data_ptr(), kv_buffer.stride(0) * item, static_cast<int>(k_nope.size(1) * item),
      static_cast<int>(k_rope.size(1) * item), static_cast<int>(vec_bytes),
      plan_of(rows_per_task, warps, copy, persistent, hint, max_ctas, pdl),
      c10::cuda::getCurrentCUDAStream().stream()));
}

void store_fp8_paged(torch::Tensor cache, torch::Tensor loc, torch::Tensor k_nope, torch::Tensor k_rope,
                     int64_t page_size, double quant_eps, int64_t rows_per_task, int64_t warps, int64_t copy,
                     bool persistent, int64_t hint, int64_t max_ctas, bool pdl) {
  const fg_kv::RowsIn in = rows_in("store_fp8_paged", cache, loc, k_nope, k_rope);
  TORCH_CHECK(cache.scalar_type() == torch::kUInt8, "store_fp8_paged (CUDA): cache must be uint8 [pages, bytes]");
  TORCH_CHECK(k_nope.scalar_type() == torch::kBFloat16 && k_rope.scalar_type() == torch::kBFloat16 &&
              k_nope.size(1) == 448 && k_rope.size(1) == 64,
              "store_fp8_paged (CUDA): expected bf16 k_nope [T, 448] and k_rope [T, 64]");
  TORCH_CHECK(page_size > 0 && cache.size(1) >= page_size * (576 + 8),
              "store_fp8_paged (CUDA): cache pages are too small for page_size");
  const c10::cuda::CUDAGuard guard(cache.device());
  check_launch("store_fp8_paged", fg_store_fp8_paged(
      in, cache.data_ptr(), cache.stride(0), page_size, static_cast<float>(quant_eps),
      plan_of(rows_per_task, warps, copy, persistent, hint, max_ctas, pdl),
      c10::cuda::getCurrentCUDAStream().stream()));
}
"""

SPEC = jit.ExtensionSpec("kv_writers", (SET_MLA_CU, STORE_FP8_CU), BINDING, ("set_mla_kv_buffer", "store_fp8_paged"),
                         include_dirs=(HEADER_DIR,))


def available() -> str | None:
    """``available`` of both CUDA writers: no device / no nvcc / a failed build of the extension."""
    return jit.cuda_missing() or jit.build_failure(SPEC)


def extension(device: torch.device, copy: str):
    """The built extension for ``device`` (built on first use), after checking ``copy``."""
    if copy not in VARIANTS:
        raise ValueError(f"unknown copy variant {copy!r}; expected one of {VARIANTS}")
    if copy != "vector" and jit.arch_of(device)[0] < 9:
        raise ValueError(f"the {copy} copy needs sm90 or later")
    return jit.load(SPEC, device)


def resolve(dispatch: Dispatch, device: torch.device, rows: int, variant: "str | Variant | None"):
    """``(extension, Variant)`` of a launch of ``rows`` rows: ``variant`` (a spec or a Variant), else
    :func:`copy_variant`'s; the extension is built and the copy checked even when ``rows == 0``."""
    chosen = Variant.parse(variant) if variant is not None else copy_variant(dispatch, rows)
    return extension(device, chosen.copy), chosen
