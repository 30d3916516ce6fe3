"""mhc_post: hyper-connection post-mix. Reference, then providers."""
from fusegraph.kernels.mhc_post import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.mhc_post import triton  # noqa: F401  (registers the Triton provider)
