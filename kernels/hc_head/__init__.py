"""hc_head: final hyper-connection collapse (+ optional final RMSNorm). Reference, then providers."""
from fusegraph.kernels.hc_head import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.hc_head import triton  # noqa: F401  (registers the Triton provider)
# DeepGEMM provider for mhc_pre and hc_head (imports hc_head.reference, hence registered here).
from fusegraph.kernels.mhc_pre import deepgemm  # noqa: F401,E402
