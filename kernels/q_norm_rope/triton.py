"""Triton provider of q_norm_rope: per-head RMSNorm + interleaved RoPE of the queries.

Grid ``(T, cdiv(H, HEADS))``: a program normalizes ``HEADS`` heads of one token as a
``[HEADS, next_pow2(Dh)]`` block (one head per program for small calls, so that decode still
spreads over many SMs; four for large ones, so that each program moves 4 KB). RoPE needs the
partner channel ``c ^ 1`` of each rope channel: it is re-loaded (an L1 hit) instead of shuffled
across lanes, so every load and store stays contiguous and vectorized. fp32 math, one bf16 rounding.
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._rope import ROPE_DIM
from fusegraph.kernels.kv_norm_rope_quant.triton import check_rope_tables, round_bf16
from fusegraph.kernels.q_norm_rope.reference import q_norm_rope

triton, tl = tc.triton, tc.tl


@triton.jit
def q_norm_rope_kernel(
    q_ptr, out_ptr, cos_ptr, sin_ptr,
    H, stride_qt, stride_qh, stride_ot, stride_oh, stride_cos, stride_sin, eps,
    DH: tl.constexpr, DR: tl.constexpr, HEADS: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    col = tl.arange(0, BLOCK_D)
    rope_col = col - (DH - DR)
    is_rope = (rope_col >= 0) & (col < DH)
    mask = (heads < H)[:, None] & (col < DH)[None, :]
    rope_mask = mask & is_rope[None, :]
    src = q_ptr + t * stride_qt + heads[:, None].to(tl.int64) * stride_qh

    tc.pdl_wait(USE_PDL)
    x = tl.load(src + col[None, :], mask=mask, other=0.0).to(tl.float32)
    partner = tl.load(src + (col ^ 1)[None, :], mask=rope_mask, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + t * stride_cos + rope_col // 2, mask=is_rope, other=1.0)[None, :]
    sin = tl.load(sin_ptr + t * stride_sin + rope_col // 2, mask=is_rope, other=0.0)[None, :]

    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / DH + eps)[:, None]
    x = x * rstd
    partner = partner * rstd
    # even channel: x0*cos - x1*sin; odd channel: x0*sin + x1*cos (the partner is the other one)
    rotated = tl.where((col & 1)[None, :] == 1, partner * sin + x * cos, x * cos - partner * sin)
    y = tl.where(is_rope[None, :], rotated, x)
    dst = out_ptr + t * stride_ot + heads[:, None].to(tl.int64) * stride_oh + col[None, :]
    tl.store(dst, round_bf16(y, SOFT_BF16).to(tl.bfloat16), mask=mask)
    tc.pdl_launch_dependents(USE_PDL)


def heads_per_program(T: int, H: int) -> int:
    """Small calls: one head per program (parallelism); large ones: four (fewer, fuller programs)."""
    return 1 if T * H <= 8192 else min(4, tc.next_pow2(H))


def _supports(q, cos, sin, eps: float) -> str | None:
    if q.dtype != torch.bfloat16 or q.dim() != 3 or q.stride(2) != 1:
        return f"q must be bf16 [T, H, Dh] with contiguous heads, got {q.dtype} {tuple(q.shape)}"
    if q.shape[2] < ROPE_DIM or q.shape[2] % 2 or q.shape[2] > 4096:
        return f"head dim {q.shape[2]} must be even and in [{ROPE_DIM}, 4096]"
    reason = check_rope_tables(cos, sin, q.shape[0])
    if reason:
        return reason
    return None if q.device == cos.device == sin.device else "tensors on several devices"


def launch(q, cos, sin, eps: float, out) -> None:
    """Normalize + rotate ``q [T, H, Dh]`` into ``out`` (same shape, contiguous heads)."""
    T, H, DH = q.shape
    if T == 0 or H == 0:
        return
    heads = heads_per_program(T, H)
    block_d = tc.next_pow2(DH)
    q_norm_rope_kernel[(T, tc.cdiv(H, heads))](
        q, out, cos, sin,
        H, q.stride(0), q.stride(1), out.stride(0), out.stride(1), cos.stride(0), sin.stride(0), eps,
        DH=DH, DR=ROPE_DIM, HEADS=heads, BLOCK_D=block_d,
        USE_PDL=tc.pdl_enabled(q.device), SOFT_BF16=tc.interpreting(),
        num_warps=max(1, min(8, heads * block_d // 256)), **tc.launch_kwargs(q.device),
    )


@q_norm_rope.provider("triton", targets=tc.provider_targets(), priority=20,
                      available=tc.triton_missing, supports_args=_supports)
def q_norm_rope_triton(q, cos, sin, eps):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    launch(q, cos, sin, eps, out)
    return out
