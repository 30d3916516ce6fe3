"""mhc_post_pre: mhc_post of one sublayer fused with mhc_pre of the next. Reference, then providers."""
from fusegraph.kernels.mhc_post_pre import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.mhc_post_pre import triton  # noqa: F401  (registers the Triton provider)
from fusegraph.kernels.mhc_post_pre import tilelang  # noqa: F401,E402  (TileLang provider: sm90, reports itself unavailable without tilelang)
