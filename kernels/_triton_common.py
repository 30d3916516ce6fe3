"""Shared helpers for the Triton providers: where they run, PDL, launch sizing, interpreter.

Every Triton provider registers the same way::

    from fusegraph.kernels import _triton_common as tc

    @op.provider("triton", targets=tc.provider_targets(), priority=20, available=tc.triton_missing,
                 supports_args=lambda *a: ... or tc.interpreter_too_large(big_input))

and launches its kernels on the tensors' device with the PDL switch taken from it::

    with tc.device_guard(x.device):
        kernel[grid](..., USE_PDL=tc.pdl_enabled(x.device), **tc.launch_kwargs(x.device))

and inside the kernel (``USE_PDL: tl.constexpr``)::

    tc.pdl_wait(USE_PDL)               # before the first load of anything a predecessor wrote
    ...                                # (and before any store: the predecessor may still read)
    tc.pdl_launch_dependents(USE_PDL)  # after the last store

API: ``pdl_enabled(device)``, ``launch_kwargs(device)``, ``pdl_wait`` / ``pdl_launch_dependents``
(jit helpers), ``provider_targets()``, ``triton_missing()``, ``interpreting()``,
``interpreter_too_large(*tensors)``, ``device_guard(device)``, ``num_sms(device)``,
``dot_precision(device)``, ``next_pow2``, ``cdiv``.

Programmatic dependent launch (PDL, kernel-anchors section 5) exists on Hopper and later
(``fusegraph.targets.supports_pdl``) and needs Triton's ``gdc_*`` intrinsics (Triton >= 3.4; 3.6
has them). It is off on CPU (the interpreter), on ROCm and before sm90, and when
``FUSEGRAPH_PDL=0`` (read at every launch: handy to measure PDL on/off).

The Triton interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors; only then do the
providers also list the ``cpu`` target (decided at import), so that the CPU test suite exercises
the kernels' code. Importing this module also patches two interpreter bugs of Triton 3.6 (runtime
loop bounds under numpy >= 2.4, truncating fp32 -> bf16 casts): see ``_fix_interpreter``.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

from fusegraph import targets as _targets

try:  # triton is optional: providers report it through ``available``
    import triton
    import triton.language as tl
    _IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the machine
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

__all__ = [
    "triton", "tl", "HAS_TRITON", "interpreting", "triton_missing", "provider_targets", "pdl_enabled",
    "launch_kwargs", "num_sms", "dot_precision", "device_guard", "next_pow2", "cdiv", "pdl_wait",
    "pdl_launch_dependents", "interpreter_too_large",
]

HAS_TRITON = triton is not None

# Number of "SMs" assumed under the interpreter: small, so that split-K paths still split.
_INTERPRETER_SMS = 4


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_missing() -> str | None:
    """``available`` callback: None when Triton can be used, else why not."""
    return _IMPORT_ERROR


def provider_targets() -> frozenset[str]:
    """Targets of a Triton provider: every GPU target, plus ``cpu`` under the interpreter."""
    return _targets.GPU_TARGETS | ({"cpu"} if interpreting() else set())


def _has_gdc() -> bool:
    try:
        from triton.language.extra import cuda as _cuda
    except Exception:
        return False
    return hasattr(_cuda, "gdc_wait") and hasattr(_cuda, "gdc_launch_dependents")


@functools.lru_cache(maxsize=None)
def _pdl_for_target(target: str) -> bool:
    return HAS_TRITON and _targets.supports_pdl(target) and _has_gdc()


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL (sm90+, real GPU, Triton has gdc_*)."""
    if device.type != "cuda" or interpreting() or os.environ.get("FUSEGRAPH_PDL", "1") == "0":
        return False
    return _pdl_for_target(_targets.of_device(device))


def launch_kwargs(device: torch.device) -> dict:
    """Extra launch keywords for a kernel on ``device``: ``{"launch_pdl": True}`` with PDL, else ``{}``."""
    return {"launch_pdl": True} if pdl_enabled(device) else {}


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small fixed number off-GPU, for split heuristics)."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return _INTERPRETER_SMS


def dot_precision(device: torch.device) -> str:
    """``tl.dot`` input precision for fp32 operands: TF32 tensor cores on NVIDIA, exact elsewhere."""
    if device.type == "cuda" and torch.version.hip is None and not interpreting():
        return "tf32"
    return "ieee"


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current while launching: Triton launches on the current CUDA device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


if HAS_TRITON:

    @triton.jit
    def pdl_wait(USE_PDL: tl.constexpr):
        """Wait until the predecessor grid finished and its writes are visible (no-op without PDL)."""
        if USE_PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def pdl_launch_dependents(USE_PDL: tl.constexpr):
        """Let the next PDL-launched kernel start its prologue (no-op without PDL)."""
        if USE_PDL:
            tl.extra.cuda.gdc_launch_dependents()

else:  # pragma: no cover
    pdl_wait = pdl_launch_dependents = None  # type: ignore[assignment]


def _fix_interpreter() -> None:
    """Two fixes to Triton 3.6's CPU interpreter (compiled kernels are unaffected).

    * ``for i in range(n)`` with a runtime ``n``: the interpreter keeps scalars as 1-element
      arrays and converts them with ``int(array)``, which numpy >= 2.4 refuses ("only
      0-dimensional arrays can be converted"); ``__index__`` now takes the element explicitly.
    * ``x.to(tl.bfloat16)`` from fp32 truncated the mantissa; GPUs round to nearest even. The
      cast now rounds like the GPU (through torch), so interpreter results match GPU rounding.
    """
    try:
        import numpy as np
        from triton.runtime import interpreter as _interp
    except Exception:  # pragma: no cover
        return
    original_patch = getattr(_interp, "_patch_lang_tensor", None)
    if original_patch is not None and not getattr(original_patch, "_fusegraph_fixed", False):
        def patch_lang_tensor(tensor, scope):
            original_patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        patch_lang_tensor._fusegraph_fixed = True  # type: ignore[attr-defined]
        _interp._patch_lang_tensor = patch_lang_tensor

    builder = getattr(_interp, "InterpreterBuilder", None)
    original_cast = getattr(builder, "cast_impl", None)
    if original_cast is not None and not getattr(original_cast, "_fusegraph_fixed", False):
        def cast_impl(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                data = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
                bits = data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                return _interp.TensorHandle(bits, dst_type.scalar)
            return original_cast(self, src, dst_type)

        cast_impl._fusegraph_fixed = True  # type: ignore[attr-defined]
        builder.cast_impl = cast_impl


if HAS_TRITON:
    _fix_interpreter()


# Under the interpreter every program runs as numpy code (an mhc_pre token costs ~0.1 s): a model-sized
# call would take minutes. Providers pass such calls to the reference, so CPU model tests stay fast;
# the interpreter is for unit-testing kernel code at tiny sizes (tests may call a provider directly).
INTERPRETER_MAX_ELEMENTS = 1 << 15


def interpreter_too_large(*tensors: torch.Tensor | None, limit: int = INTERPRETER_MAX_ELEMENTS) -> str | None:
    """``supports_args`` helper: a reason when CPU tensors are too big for the Triton interpreter."""
    cpu = [t for t in tensors if t is not None and t.device.type == "cpu"]
    total = sum(t.numel() for t in cpu)
    if cpu and total > limit:
        return f"{total} elements on CPU: too large for the Triton interpreter (limit {limit})"
    return None
