"""Triton provider of mhc_post: one bandwidth-bound pass (read 4D + D, write 4D per token).

The kernel (``_post_mix_kernel`` in ``kernels/mhc_pre/triton_kernels.py``) is shared with
mhc_post_pre, which additionally feeds the new residual into the next pre's split-K GEMM.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_post.reference import mhc_post
from fusegraph.kernels.mhc_pre import gates


def supports(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Optional[str]:
    return gates.check_post_args(f, residual, post, comb) or tc.interpreter_too_large(residual, f)


@mhc_post.provider("triton", targets=tc.provider_targets(), priority=20, available=tc.triton_missing,
                   supports_args=supports)
def mhc_post_triton(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    from fusegraph.kernels.mhc_pre import triton_kernels

    return triton_kernels.mhc_post_forward(f, residual, post, comb)
