"""Fused op ``store_fp8_paged``: the torch reference (``reference.py``, the spec) and its providers."""
from fusegraph.kernels import _triton_common as _tc

from .reference import store_fp8_paged  # noqa: F401  (declares the op)

if _tc.HAS_TRITON:
    from . import triton  # noqa: F401  (registers the Triton provider)
from . import cuda  # noqa: F401,E402  (CUDA writer, vector or bulk copy; reports itself unavailable without nvcc/GPU)
