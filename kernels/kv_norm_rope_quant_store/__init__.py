"""Fused op ``kv_norm_rope_quant_store``: the torch reference (``reference.py``, the spec) and its providers."""
from fusegraph.kernels import _triton_common as _tc

from .reference import kv_norm_rope_quant_store  # noqa: F401  (declares the op)

if _tc.HAS_TRITON:
    from . import triton  # noqa: F401  (registers the Triton provider)
