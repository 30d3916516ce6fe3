"""mhc_post: the hyper-connection post-mix of DSV4 (spec 2.3, pattern F2). Plain torch, fp32 math.

``out[t, k, d] = bf16(post[t, k] * f[t, d] + sum_j comb[t, j, k] * residual[t, j, d])``: output
stream k gathers COLUMN k of comb (comb's row index is the source stream), as in the official code.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.ops import fused_op


def mhc_post_math(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor,
                  acc_dtype: torch.dtype = torch.float32) -> Tensor:
    """mhc_post with the math in ``acc_dtype``; the result has the residual's dtype."""
    mixed = post.to(acc_dtype).unsqueeze(-1) * f.to(acc_dtype).unsqueeze(-2)
    carried = (comb.to(acc_dtype).unsqueeze(-1) * residual.to(acc_dtype).unsqueeze(-2)).sum(dim=-3)
    return (mixed + carried).to(residual.dtype)


@fused_op("mhc_post")
def mhc_post(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """f bf16[T,D], residual bf16[T,C,D], post f32[T,C], comb f32[T,C,C] -> new residual bf16[T,C,D]."""
    return mhc_post_math(f, residual, post, comb, torch.float32)
