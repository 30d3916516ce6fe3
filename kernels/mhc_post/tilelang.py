"""TileLang provider of mhc_post (Hopper, sm90): one bandwidth-bound kernel, a CTA per (token,
1024 columns). Kernel and launcher: ``kernels/mhc_pre/tilelang_kernels.py``; availability, targets
and the crossover gate as for mhc_pre (``kernels/mhc_pre/tilelang.py``).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels.mhc_post.reference import mhc_post
from fusegraph.kernels.mhc_pre import crossover, gates
from fusegraph.kernels.mhc_pre import tilelang as tl_pre


def kernel_reason(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Optional[str]:
    """What the kernel cannot take (shapes, dtypes, devices); no crossover policy."""
    return gates.check_post_args(f, residual, post, comb) or tl_pre.shape_reason(residual)


def measured(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Optional[str]:
    return crossover.reason_against(tl_pre.NAME, "mhc_post", residual.shape[2], residual.shape[0], residual.device)


@mhc_post.provider(tl_pre.NAME, targets=tl_pre.TARGETS, priority=tl_pre.PRIORITY,
                   available=lambda: tl_pre.tilelang_missing(), supports_args=lambda *a, **k: kernel_reason(*a, **k),
                   measured=lambda *a, **k: measured(*a, **k))
def mhc_post_tilelang(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    return tl_pre.kernels().mhc_post_forward(f, residual, post, comb)
