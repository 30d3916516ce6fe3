"""hc_head: final hyper-connection collapse (+ optional final RMSNorm). Reference, then providers."""
from fusegraph.kernels.hc_head import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.hc_head import triton  # noqa: F401  (registers the Triton provider)
