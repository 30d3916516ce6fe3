"""mhc_post: hyper-connection post-mix. Reference, then providers."""
from fusegraph.kernels.mhc_post import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.mhc_post import triton  # noqa: F401  (registers the Triton provider)
from fusegraph.kernels.mhc_post import tilelang  # noqa: F401,E402  (TileLang provider: sm90, reports itself unavailable without tilelang)
