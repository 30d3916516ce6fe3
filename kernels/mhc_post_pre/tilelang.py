"""TileLang provider of mhc_post_pre (Hopper, sm90): the TileLang post kernel, then mhc_pre's two
TileLang kernels on the new residual (three PDL-chained launches; what the Triton provider does
outside 2..64 tokens, where fusing the GEMM into the post kernel measured slower). Kernels:
``kernels/mhc_pre/tilelang_kernels.py``; availability, targets and the crossover gate as for
mhc_pre (``kernels/mhc_pre/tilelang.py``).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusegraph.kernels.mhc_post import tilelang as tl_post
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_pre import crossover, gates
from fusegraph.kernels.mhc_pre import tilelang as tl_pre


def supports(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
             norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float, norm_eps: float, sinkhorn_iters: int,
             post_mult: float) -> Optional[str]:
    # the two halves' kernel gates
    return gates.first_reason(
        tl_post.kernel_reason(f, residual, post, comb),
        tl_pre.kernel_reason(residual, fn, scale, base, norm_weight),
    )


def measured(f: Tensor, residual: Tensor, *rest) -> Optional[str]:
    """This op's own crossover entry (post+pre is measured as one op)."""
    return crossover.reason_against(tl_pre.NAME, "mhc_post_pre", residual.shape[2], residual.shape[0],
                                    residual.device)


@mhc_post_pre.provider(tl_pre.NAME, targets=tl_pre.TARGETS, priority=tl_pre.PRIORITY,
                       available=lambda: tl_pre.tilelang_missing(), supports_args=lambda *a, **k: supports(*a, **k),
                       measured=lambda *a, **k: measured(*a, **k))
def mhc_post_pre_tilelang(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor, fn: Tensor, scale: Tensor,
                          base: Tensor, norm_weight: Optional[Tensor], rms_eps: float, hc_eps: float,
                          norm_eps: float, sinkhorn_iters: int, post_mult: float
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tl_pre.kernels().mhc_post_pre_forward(f, residual, post, comb, fn, scale, base, norm_weight, rms_eps,
                                                 hc_eps, norm_eps, sinkhorn_iters, post_mult)
