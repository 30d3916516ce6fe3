"""Triton provider of compressor_pool: APE add + per-channel online-softmax pool + RMSNorm + RoPE.

Pool: program ``(j, c)`` pools block ``j`` on a tile of ``BLOCK_D`` channels. It walks the block's
window (``2r`` entries for ratio 4, ``r`` otherwise) in chunks of ``BLOCK_S`` entries, loading
``[BLOCK_S, BLOCK_D]`` tiles of kv, score and ape, and keeps a running max / sum / weighted sum per
channel (flash-style online softmax; an all ``-inf`` prefix is guarded so nothing becomes NaN). For
ratio 4, entries ``< r`` come from the previous block's tokens on channels ``[0, d)`` (masked off
for block 0: score -inf, kv 0) and entries ``>= r`` from the block's tokens on channels ``[d, 2d)``.

Epilogue: the pooled row is rounded to bf16, RMSNorm'd (rounded to bf16) and RoPE'd on its last 64
channels; RoPE pairs are formed in registers (reshape to ``[d/2, 2]`` + split), so no re-load is
needed. When one program holds a whole row (``BLOCK_D >= d``), the epilogue runs in the pool
kernel: one launch. When there are too few blocks to fill the GPU (ratio 128 at modest T), the
channels are split over programs and a small second kernel normalizes the pooled rows in place.
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._rope import ROPE_DIM
from fusegraph.kernels.compressor_pool.reference import compressor_pool, overlap
from fusegraph.kernels.kv_norm_rope_quant.triton import check_rope_tables, round_bf16

triton, tl = tc.triton, tc.tl

TILE_ELEMENTS = 4096       # elements of one [BLOCK_S, BLOCK_D] chunk
SMALL_WORK = 1 << 18       # window entries x channels below which one launch beats parallelism


@triton.jit
def norm_rope_row(x, ch, D, w_ptr, cos_row, sin_row, eps,
                  DR: tl.constexpr, BLOCK_D: tl.constexpr, SOFT_BF16: tl.constexpr):
    """bf16-valued fp32 row ``x [BLOCK_D]`` (zeros past ``D``) -> RMSNorm * w (bf16) -> RoPE on the last DR."""
    w = tl.load(w_ptr + ch, mask=ch < D, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    y = round_bf16(x * rstd * w, SOFT_BF16)
    y0, y1 = tl.split(tl.reshape(y, (BLOCK_D // 2, 2)))
    pair = tl.arange(0, BLOCK_D // 2)
    rope_pair = pair - (D - DR) // 2
    is_rope = (rope_pair >= 0) & (pair < D // 2)
    cos = tl.load(cos_row + rope_pair, mask=is_rope, other=1.0)
    sin = tl.load(sin_row + rope_pair, mask=is_rope, other=0.0)
    r0 = tl.where(is_rope, round_bf16(y0 * cos - y1 * sin, SOFT_BF16), y0)
    r1 = tl.where(is_rope, round_bf16(y0 * sin + y1 * cos, SOFT_BF16), y1)
    return tl.reshape(tl.join(r0, r1), (BLOCK_D,))


@triton.jit
def pool_kernel(
    kv_ptr, score_ptr, ape_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
    stride_kv, stride_score, stride_ape, stride_cos, stride_sin, stride_out, D, eps,
    RATIO: tl.constexpr, OVERLAP: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    EPILOGUE: tl.constexpr, DR: tl.constexpr, USE_PDL: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    WINDOW: tl.constexpr = 2 * RATIO if OVERLAP else RATIO
    j = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ch_ok = ch < D
    run_max = tl.full((BLOCK_D,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_D,), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)

    tc.pdl_wait(USE_PDL)
    for start in tl.range(0, WINDOW, BLOCK_S):
        e = start + tl.arange(0, BLOCK_S)
        if OVERLAP:  # entries < RATIO: previous block, channels [0, D); then this block, channels [D, 2D)
            prev = e < RATIO
            token = tl.where(prev, (j - 1) * RATIO + e, j * RATIO + e - RATIO)
            col0 = tl.where(prev, 0, D)
            ape_row = tl.where(prev, e, e - RATIO)
            e_ok = (e < WINDOW) & (token >= 0)
        else:
            token = j * RATIO + e
            col0 = tl.zeros_like(e)
            ape_row = e
            e_ok = e < WINDOW
        cols = col0[:, None] + ch[None, :]
        mask = e_ok[:, None] & ch_ok[None, :]
        kv = tl.load(kv_ptr + token[:, None] * stride_kv + cols, mask=mask, other=0.0)
        score = tl.load(score_ptr + token[:, None] * stride_score + cols, mask=mask, other=float("-inf"))
        score += tl.load(ape_ptr + ape_row[:, None] * stride_ape + cols, mask=mask, other=0.0)
        new_max = tl.maximum(run_max, tl.max(score, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # all -inf so far: weights 0, not NaN
        decay = tl.exp(run_max - safe_max)
        p = tl.exp(score - safe_max[None, :])
        run_sum = run_sum * decay + tl.sum(p, axis=0)
        acc = acc * decay + tl.sum(p * kv, axis=0)
        run_max = new_max
    pooled = round_bf16(tl.where(run_sum > 0, acc / tl.where(run_sum > 0, run_sum, 1.0), 0.0), SOFT_BF16)

    if EPILOGUE:
        pooled = norm_rope_row(pooled, ch, D, w_ptr, cos_ptr + j * stride_cos, sin_ptr + j * stride_sin, eps,
                               DR, BLOCK_D, SOFT_BF16)
    tl.store(out_ptr + j * stride_out + ch, pooled.to(tl.bfloat16), mask=ch_ok)
    tc.pdl_launch_dependents(USE_PDL)


@triton.jit
def norm_rope_kernel(out_ptr, w_ptr, cos_ptr, sin_ptr, stride_out, stride_cos, stride_sin, D, eps,
                     DR: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr, SOFT_BF16: tl.constexpr):
    """In-place epilogue on pooled bf16 rows (every load precedes the row reduction, hence every store)."""
    j = tl.program_id(0).to(tl.int64)
    ch = tl.arange(0, BLOCK_D)
    tc.pdl_wait(USE_PDL)
    x = tl.load(out_ptr + j * stride_out + ch, mask=ch < D, other=0.0).to(tl.float32)
    y = norm_rope_row(x, ch, D, w_ptr, cos_ptr + j * stride_cos, sin_ptr + j * stride_sin, eps,
                      DR, BLOCK_D, SOFT_BF16)
    tl.store(out_ptr + j * stride_out + ch, y.to(tl.bfloat16), mask=ch < D)
    tc.pdl_launch_dependents(USE_PDL)


def channel_block(blocks: int, window: int, d: int, device: torch.device) -> int:
    """Channels per pool program: the whole row (fused epilogue) unless that leaves SMs idle on big work."""
    full = tc.next_pow2(d)
    wanted = 2 * tc.num_sms(device)
    if blocks >= wanted or blocks * window * d <= SMALL_WORK:
        return full
    return max(64, full // tc.next_pow2(tc.cdiv(wanted, blocks)))


def launch(kv, score, ape, norm_weight, cos, sin, ratio: int, eps: float, out, block_d: int) -> None:
    """Run the pool (and, for a split channel tile, the epilogue) into ``out [T//ratio, d]``."""
    blocks, d = out.shape
    window = 2 * ratio if overlap(ratio) else ratio
    full = tc.next_pow2(d)
    block_s = min(tc.next_pow2(window), max(1, TILE_ELEMENTS // block_d))
    epilogue = block_d >= d
    use_pdl, extra = tc.pdl_enabled(out.device), tc.launch_kwargs(out.device)
    pool_kernel[(blocks, tc.cdiv(d, block_d))](
        kv, score, ape, norm_weight, cos, sin, out,
        kv.stride(0), score.stride(0), ape.stride(0), cos.stride(0), sin.stride(0), out.stride(0), d, eps,
        RATIO=ratio, OVERLAP=overlap(ratio), BLOCK_S=block_s, BLOCK_D=block_d, EPILOGUE=epilogue,
        DR=ROPE_DIM, USE_PDL=use_pdl, SOFT_BF16=tc.interpreting(),
        num_warps=max(1, min(8, block_s * block_d // 512)), **extra,
    )
    if not epilogue:
        norm_rope_kernel[(blocks,)](
            out, norm_weight, cos, sin, out.stride(0), cos.stride(0), sin.stride(0), d, eps,
            DR=ROPE_DIM, BLOCK_D=full, USE_PDL=use_pdl, SOFT_BF16=tc.interpreting(),
            num_warps=max(1, min(8, full // 256)), **extra,
        )


def _supports(kv, score, ape, norm_weight, cos, sin, ratio: int, eps: float) -> str | None:
    if ratio < 1 or ratio > 1024:
        return f"ratio {ratio} outside [1, 1024]"
    co = 2 if overlap(ratio) else 1
    for name, t in (("kv", kv), ("score", score), ("ape", ape)):
        if t.dtype != torch.float32 or t.dim() != 2 or t.stride(1) != 1:
            return f"{name} must be fp32 2-D with contiguous rows, got {t.dtype} {tuple(t.shape)}"
    width = kv.shape[1]
    if score.shape != kv.shape or width % co or tuple(ape.shape) != (ratio, width):
        return f"kv {tuple(kv.shape)} / score {tuple(score.shape)} / ape {tuple(ape.shape)} disagree for ratio {ratio}"
    d = width // co
    if d % 2 or d < ROPE_DIM or d > 8192:
        return f"head dim {d} must be even and in [{ROPE_DIM}, 8192]"
    if norm_weight.dim() != 1 or norm_weight.shape[0] != d or norm_weight.stride(0) != 1 \
            or not norm_weight.is_floating_point():
        return f"norm_weight must be a contiguous float [{d}], got {norm_weight.dtype} {tuple(norm_weight.shape)}"
    reason = check_rope_tables(cos, sin, kv.shape[0] // ratio)
    if reason:
        return reason
    devices = {t.device for t in (kv, score, ape, norm_weight, cos, sin)}
    return None if len(devices) == 1 else "tensors on several devices"


@compressor_pool.provider("triton", targets=tc.provider_targets(), priority=20,
                          available=tc.triton_missing, supports_args=_supports)
def compressor_pool_triton(kv, score, ape, norm_weight, cos, sin, ratio, eps):
    blocks = kv.shape[0] // ratio
    d = kv.shape[1] // (2 if overlap(ratio) else 1)
    out = torch.empty(blocks, d, dtype=torch.bfloat16, device=kv.device)
    if blocks:
        window = 2 * ratio if overlap(ratio) else ratio
        launch(kv, score, ape, norm_weight, cos, sin, ratio, eps, out, channel_block(blocks, window, d, kv.device))
    return out
