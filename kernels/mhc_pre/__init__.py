"""mhc_pre: hyper-connection pre-mix (+ optional RMSNorm epilogue). Reference, then providers."""
from fusegraph.kernels.mhc_pre import reference  # noqa: F401  (declares the op)
from fusegraph.kernels.mhc_pre import triton  # noqa: F401  (registers the Triton provider)
from fusegraph.kernels.mhc_pre import tilelang  # noqa: F401,E402  (TileLang provider: sm90, reports itself unavailable without tilelang)
