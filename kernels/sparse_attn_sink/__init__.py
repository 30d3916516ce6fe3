"""sparse_attn_sink: DSV4 sparse attention with sink over paged FP8 caches (spec 4.5). Reference, then providers."""
from . import reference  # noqa: F401
from . import triton  # noqa: F401
from . import cuda  # noqa: F401  (decode CUDA kernel; reports itself unavailable without nvcc/GPU, off until measured)
