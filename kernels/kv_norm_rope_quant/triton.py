"""Triton provider of kv_norm_rope_quant, and the FP8 KV kernel it shares with store_fp8_paged and
kv_norm_rope_quant_store.

One kernel serves the three ops, specialized by two constexpr flags:

- ``NORM_ROPE``: the input is ``kv [T, 512]``; apply the weighted RMSNorm (rounded to bf16) and RoPE
  on the last 64 channels. Without it the inputs are ``k_nope [T, 448]`` / ``k_rope [T, 64]`` as given.
- ``STORE``: write the FP8 bytes, the bf16 rope and the ue8m0 scales into the paged cache at slot
  ``loc`` (slots < 0 are masked off: no address is formed from them). Without it, write the bf16
  quant-dequant ``(k_nope, k_rope)``. With both flags the row is quantized twice, as the op's
  reference (a composition of the two ops) does; FP8 quantization of an FP8-exact row is cheap.

Register layout: a token row is an ``[8, 64]`` block whose tiles 0..6 are the seven FP8 tiles of
the nope channels and tile 7 is the rope part, so the per-tile amax is a reduction over the last
axis. RoPE needs the partner channel ``c ^ 1``; it is re-loaded from the input (an L1 hit) and
normalized the same way, which keeps every load and store a plain contiguous one.

FP8 e4m3 rounding is done with integer arithmetic (``e4m3_round``), not by a hardware conversion:
it is exact on every target (sm80 and ROCm have no e4m3fn convert; the interpreter has no RNE),
and a few integer ops are free in this memory-bound kernel. The ue8m0 exponent is the exact
``ceil(log2(amax / 448))`` of ``kernels/_fp8.py``.
"""
from __future__ import annotations

import torch

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._fp8 import NOPE_DIM, ROPE_DIM, PagedLayout
from fusegraph.kernels.kv_norm_rope_quant.reference import kv_norm_rope_quant

triton, tl = tc.triton, tc.tl

HEAD_DIM = NOPE_DIM + ROPE_DIM  # 512
MIN_QUANT_EPS = 1e-30           # keeps every scale a normal fp32 power of two


# -- device helpers (also used by the other attention-side kernels) --------------------------------
@triton.jit
def round_bf16(x, SOFT: tl.constexpr):
    """fp32 ``x`` rounded to the nearest bf16 (ties to even), as fp32.

    ``SOFT`` does it with integer ops: the interpreter's float->bf16 conversion truncates.
    """
    if SOFT:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def ue8m0_exponent(amax):
    """Exact ``ceil(log2(amax / 448))`` (int32) of positive fp32 ``amax``."""
    v = tl.math.div_rn(amax, 448.0)
    bits = v.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    return exponent + ((bits & 0x7FFFFF) != 0).to(tl.int32)


@triton.jit
def pow2(exponent):
    """``2^exponent`` as fp32 for int32 exponents in [-126, 127] (exact)."""
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_round(y):
    """Round fp32 ``y`` (|y| <= 448) to e4m3fn, ties to even: ``(value as fp32, byte as int32)``."""
    sign = (y.to(tl.int32, bitcast=True) >> 31) & 1
    a = tl.abs(y)
    bits = a.to(tl.int32, bitcast=True)
    # normal range (>= 2^-6): keep 3 mantissa bits; the carry may bump the exponent
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # -1048576 = 0xFFF00000
    normal_value = rounded.to(tl.float32, bitcast=True)
    normal_byte = (((rounded >> 23) - 120) << 3) | ((rounded >> 20) & 7)
    # subnormal range: multiples of 2^-9 (k = 8 is the smallest normal, whose byte is also 8)
    s = a * 512.0
    k = tl.floor(s)
    frac = s - k
    ki = k.to(tl.int32)
    ki = ki + ((frac > 0.5) | ((frac == 0.5) & ((ki & 1) == 1))).to(tl.int32)
    is_normal = a >= 0.015625
    value = tl.where(is_normal, normal_value, ki.to(tl.float32) * 0.001953125)
    byte = tl.where(is_normal, normal_byte, ki) | (sign << 7)
    # sign by bit, not by negation: Triton negates as 0 - x, which turns -0.0 into +0.0
    value = (value.to(tl.int32, bitcast=True) | (sign << 31)).to(tl.float32, bitcast=True)
    return value, byte


@triton.jit
def quantize_tiles(y, is_nope, quant_eps):
    """FP8-quantize ``y [R, 8, 64]`` per tile (last axis) where ``is_nope``: (dequant, bytes, exponents [R, 8])."""
    amax = tl.max(tl.where(is_nope, tl.abs(y), 0.0), axis=2)
    exponent = ue8m0_exponent(tl.maximum(amax, quant_eps))
    scaled = y * pow2(-exponent)[:, :, None]
    scaled = tl.minimum(tl.maximum(scaled, -448.0), 448.0)
    value, byte = e4m3_round(scaled)
    return value * pow2(exponent)[:, :, None], byte, exponent


# -- the kernel ---------------------------------------------------------------------------------------
@triton.jit
def kv_fp8_kernel(
    nope_ptr, rope_ptr, stride_nope, stride_rope,  # inputs; with NORM_ROPE both point into kv
    weight_ptr, cos_ptr, sin_ptr, stride_cos, stride_sin,
    out_nope_ptr, out_rope_ptr,                    # quant-dequant outputs (not STORE), contiguous
    cache_ptr, loc_ptr, stride_page, page_size,    # paged cache (STORE)
    T, eps, quant_eps,
    NORM_ROPE: tl.constexpr, STORE: tl.constexpr, ROWS: tl.constexpr,
    USE_PDL: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    NOPE: tl.constexpr = 448
    ROW_BYTES: tl.constexpr = 576
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    tile = tl.arange(0, 8)
    col = tile[:, None] * 64 + tl.arange(0, 64)[None, :]  # channel 0..511
    is_nope = (col < NOPE)[None, :, :]
    is_rope = (col >= NOPE)[None, :, :]
    rope_col = (col - NOPE)[None, :, :]
    row_ok = (rows < T)[:, None, None]
    r3 = rows[:, None, None]

    tc.pdl_wait(USE_PDL)
    x = tl.load(nope_ptr + r3 * stride_nope + col[None, :, :], mask=row_ok & is_nope, other=0.0).to(tl.float32)
    x_rope = tl.load(rope_ptr + r3 * stride_rope + rope_col, mask=row_ok & is_rope, other=0.0).to(tl.float32)
    y = tl.where(is_rope, x_rope, x)
    if NORM_ROPE:
        partner = tl.load(rope_ptr + r3 * stride_rope + (rope_col ^ 1), mask=row_ok & is_rope,
                          other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + col).to(tl.float32)[None, :, :]
        w_partner = tl.load(weight_ptr + (col ^ 1), mask=col >= NOPE, other=0.0).to(tl.float32)[None, :, :]
        rstd = tl.rsqrt(tl.sum(tl.sum(y * y, axis=2), axis=1) / 512.0 + eps)[:, None, None]
        y = round_bf16(y * rstd * w, SOFT_BF16)
        y_partner = round_bf16(partner * rstd * w_partner, SOFT_BF16)
        pair = rope_col // 2
        cos = tl.load(cos_ptr + r3 * stride_cos + pair, mask=row_ok & is_rope, other=1.0)
        sin = tl.load(sin_ptr + r3 * stride_sin + pair, mask=row_ok & is_rope, other=0.0)
        # even channel: x0*cos - x1*sin; odd channel: x0*sin + x1*cos (the partner is the other one)
        rotated = tl.where((col & 1)[None, :, :] == 1, y_partner * sin + y * cos, y * cos - y_partner * sin)
        y = tl.where(is_rope, round_bf16(rotated, SOFT_BF16), y)

    dequant, byte, exponent = quantize_tiles(y, is_nope, quant_eps)
    if STORE:
        if NORM_ROPE:  # the op stores the quant-dequant row: quantize that once more
            dequant, byte, exponent = quantize_tiles(dequant, is_nope, quant_eps)
        loc = tl.load(loc_ptr + rows, mask=rows < T, other=-1).to(tl.int64)
        valid = (rows < T) & (loc >= 0)
        loc = tl.where(valid, loc, 0)
        page = loc // page_size
        slot = loc - page * page_size
        row_base = (page * stride_page + slot * ROW_BYTES)[:, None, None]
        v3 = valid[:, None, None]
        tl.store(cache_ptr + row_base + col[None, :, :], byte.to(tl.uint8), mask=v3 & is_nope)
        rope_dst = (cache_ptr + row_base + NOPE).to(tl.pointer_type(tl.bfloat16)) + rope_col
        tl.store(rope_dst, y.to(tl.bfloat16), mask=v3 & is_rope)
        scale_base = page * stride_page + page_size * ROW_BYTES + slot * 8
        scale_byte = tl.where(tile[None, :] < 7, exponent + 127, 0)  # 7 scales, then the zero pad
        tl.store(cache_ptr + scale_base[:, None] + tile[None, :], scale_byte.to(tl.uint8), mask=valid[:, None])
    else:
        tl.store(out_nope_ptr + r3 * NOPE + col[None, :, :], dequant.to(tl.bfloat16), mask=row_ok & is_nope)
        tl.store(out_rope_ptr + r3 * 64 + rope_col, y.to(tl.bfloat16), mask=row_ok & is_rope)
    tc.pdl_launch_dependents(USE_PDL)


# -- launcher shared by the three ops ---------------------------------------------------------------
def rows_per_program(T: int) -> int:
    """Token rows per program: one for small calls (more programs), four for large ones (fewer CTAs)."""
    return 1 if T < 4096 else 4


def launch(*, nope, rope, weight=None, cos=None, sin=None, out_nope=None, out_rope=None, cache=None,
           loc=None, page_size: int = 1, eps: float = 0.0, quant_eps: float) -> None:
    """Run :func:`kv_fp8_kernel`; NORM_ROPE when ``weight`` is given, STORE when ``cache`` is."""
    T = nope.shape[0]
    if T == 0:
        return
    norm_rope = weight is not None
    store = cache is not None
    device = nope.device
    rows = rows_per_program(T)
    dummy = nope  # pointer arguments a specialization never reads
    kv_fp8_kernel[(tc.cdiv(T, rows),)](
        nope, rope, nope.stride(0), rope.stride(0),
        weight if norm_rope else dummy, cos if norm_rope else dummy, sin if norm_rope else dummy,
        cos.stride(0) if norm_rope else 0, sin.stride(0) if norm_rope else 0,
        out_nope if not store else dummy, out_rope if not store else dummy,
        cache if store else dummy, loc if store else dummy, cache.stride(0) if store else 0, page_size,
        T, eps, quant_eps,
        NORM_ROPE=norm_rope, STORE=store, ROWS=rows,
        USE_PDL=tc.pdl_enabled(device), SOFT_BF16=tc.interpreting(),
        num_warps=4 if rows == 1 else 8, **tc.launch_kwargs(device),
    )


# -- argument gates -----------------------------------------------------------------------------------
def _same_device(*tensors) -> str | None:
    devices = {t.device for t in tensors}
    return None if len(devices) == 1 else f"tensors on several devices: {sorted(map(str, devices))}"


def check_rope_tables(cos, sin, T: int) -> str | None:
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != torch.float32 or t.dim() != 2 or tuple(t.shape) != (T, ROPE_DIM // 2) or t.stride(1) != 1:
            return f"{name} must be fp32 [{T}, {ROPE_DIM // 2}] with contiguous rows, got {t.dtype} {tuple(t.shape)}"
    return None


def check_kv_input(kv, weight, cos, sin, quant_eps: float) -> str | None:
    """Why the kernel cannot take this ``kv [T, 512]`` input (None: it can)."""
    if kv.dtype != torch.bfloat16 or kv.dim() != 2 or kv.shape[1] != HEAD_DIM or kv.stride(1) != 1:
        return f"kv must be bf16 [T, {HEAD_DIM}] with contiguous rows, got {kv.dtype} {tuple(kv.shape)}"
    if weight.dim() != 1 or weight.shape[0] != HEAD_DIM or weight.stride(0) != 1 or not weight.is_floating_point():
        return f"weight must be a contiguous float [{HEAD_DIM}], got {weight.dtype} {tuple(weight.shape)}"
    reason = check_rope_tables(cos, sin, kv.shape[0])
    if reason:
        return reason
    if not quant_eps >= MIN_QUANT_EPS:
        return f"quant_eps {quant_eps} below {MIN_QUANT_EPS} (scales would leave the fp32 normal range)"
    return _same_device(kv, weight, cos, sin)


def check_cache(cache, loc, page_size: int) -> str | None:
    """Why the kernel cannot store into this paged cache (None: it can)."""
    if cache.dtype != torch.uint8 or cache.dim() != 2 or cache.stride(1) != 1:
        return f"cache must be uint8 [num_pages, bytes_per_page] with contiguous pages, got {cache.dtype}"
    if page_size <= 0 or cache.shape[1] < PagedLayout(page_size).bytes_per_page:
        return f"cache pages of {cache.shape[1]} bytes do not fit page_size {page_size}"
    if cache.stride(0) % 16 or cache.data_ptr() % 16:
        return "cache pages must start on 16-byte boundaries"
    if loc.dim() != 1 or loc.dtype not in (torch.int32, torch.int64) or (loc.numel() and loc.stride(0) != 1):
        return f"loc must be a contiguous int32/int64 vector, got {loc.dtype} {tuple(loc.shape)}"
    return _same_device(cache, loc)


def _supports(kv, weight, cos, sin, eps: float, quant_eps: float) -> str | None:
    return check_kv_input(kv, weight, cos, sin, quant_eps)


@kv_norm_rope_quant.provider("triton", targets=tc.provider_targets(), priority=20,
                             available=tc.triton_missing, supports_args=_supports)
def kv_norm_rope_quant_triton(kv, weight, cos, sin, eps, quant_eps):
    T = kv.shape[0]
    k_nope = torch.empty(T, NOPE_DIM, dtype=torch.bfloat16, device=kv.device)
    k_rope = torch.empty(T, ROPE_DIM, dtype=torch.bfloat16, device=kv.device)
    launch(nope=kv, rope=kv[:, NOPE_DIM:], weight=weight, cos=cos, sin=sin, out_nope=k_nope, out_rope=k_rope,
           eps=eps, quant_eps=quant_eps)
    return k_nope, k_rope
