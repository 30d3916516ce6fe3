"""Triton device helpers that read the DSV4 paged FP8 cache (spec 4.3); shared with sparse_attn_sink.

A kernel addresses a token row by two int64 byte offsets, computed once per row (from an int32
slot: a cache of 2^31 rows would be over a terabyte) by ``fp8_row_offsets``: the row start (448 e4m3 bytes, then 64 bf16 rope values) and its scale bytes
in the page tail. ``load_nope`` returns a ``[rows, W]`` chunk of dequantized channels
``[C0, C0 + W)`` as bf16 (``W`` a power of two >= 64: the 448 channels are read as 256 + 128 + 64,
exact sizes, no masked columns); ``load_rope`` returns the 64 rope channels. Invalid rows
(``valid`` False) are never dereferenced and come back as zeros.

FP8 decode, two paths chosen by the ``NATIVE`` constexpr (see ``fp8_native``):

* native (sm90/sm100): Triton's ``float8e4nv`` -> fp32 conversion;
* integer (sm80, ROCm, where Triton has no OCP e4m3 conversion): the e4m3 bits are moved into an
  fp32 (sign to bit 31, exponent+mantissa to bits 20..26), which equals the e4m3 value times
  2^-120 (subnormals included), then multiplied by 2^120.

Then one fp32 multiply by the power-of-two scale, built from the byte's bits (no ``exp2``). All
of it is exact: an e4m3 value times a power of two is representable in bf16, so both give the
reference's bits. ``rne_bf16`` rounds fp32 to bf16 to nearest even: the Triton interpreter's own
cast truncates, so kernels route their bf16 roundings through it with ``INTERPRET`` set.
"""
from __future__ import annotations

import torch

from fusegraph import targets as _targets
from fusegraph.kernels._fp8 import NOPE_DIM, ROW_BYTES, SCALE_BYTES
from fusegraph.kernels._triton_common import HAS_TRITON, tl, triton

# Targets whose Triton lowers float8e4nv (OCP e4m3fn) natively.
_NATIVE_FP8_TARGETS = frozenset({"sm90", "sm100"})

# Tests and benchmarks may force a decode path: None = by target, True/False = forced.
FORCE_NATIVE_FP8: bool | None = None


def page_shift(page_size: int) -> int | None:
    """log2(page_size) when it is a power of two (kernels then shift instead of dividing), else None."""
    return page_size.bit_length() - 1 if page_size > 0 and page_size & (page_size - 1) == 0 else None


def fp8_native(device: torch.device) -> bool:
    """Whether kernels on ``device`` decode e4m3 with Triton's native conversion."""
    if FORCE_NATIVE_FP8 is not None:
        return FORCE_NATIVE_FP8
    return device.type == "cuda" and _targets.of_device(device) in _NATIVE_FP8_TARGETS


if HAS_TRITON:
    # Globals read inside @triton.jit functions must be constexpr.
    _ROW_BYTES = tl.constexpr(ROW_BYTES)
    _SCALE_BYTES = tl.constexpr(SCALE_BYTES)
    _NOPE_DIM = tl.constexpr(NOPE_DIM)

    @triton.jit
    def rne_bf16(x, INTERPRET: tl.constexpr):
        """fp32 -> bf16, round to nearest even (also under the interpreter, whose cast truncates)."""
        if INTERPRET:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            return (bits & 0xFFFF0000).to(tl.float32, bitcast=True).to(tl.bfloat16)
        else:
            return x.to(tl.bfloat16)

    @triton.jit
    def fp8_row_offsets(slot, page_stride, page_size, page_shift, POW2_PAGES: tl.constexpr):
        """int64 (row byte offset, scale byte offset) of int32 slots >= 0 in a cache of
        ``page_stride``-byte pages. ``POW2_PAGES``: ``page_size == 1 << page_shift``, so a shift and
        a mask replace the division (a 64-bit division per row and layout cost ~10% of the
        attention loop's instructions)."""
        if POW2_PAGES:
            page = slot >> page_shift
            row = slot & (page_size - 1)
        else:
            page = slot // page_size
            row = slot - page * page_size
        page_off = page.to(tl.int64) * page_stride
        return page_off + row * _ROW_BYTES, page_off + page_size * _ROW_BYTES + row * _SCALE_BYTES

    @triton.jit
    def _ue8m0_scale(sb):
        """fp32 ``2^(sb - 127)`` of ue8m0 bytes, exact (byte 0 is the subnormal 2^-127)."""
        bits = tl.where(sb == 0, 0x00400000, sb.to(tl.uint32) << 23)
        return bits.to(tl.uint32).to(tl.float32, bitcast=True)

    @triton.jit
    def _decode_e4m3(raw, NATIVE: tl.constexpr):
        """e4m3 bytes -> their fp32 values."""
        if NATIVE:
            return raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        else:
            bits = raw.to(tl.uint32)
            moved = ((bits & 0x80) << 24) | ((bits & 0x7F) << 20)  # value * 2^-120
            return moved.to(tl.float32, bitcast=True) * 1.329227995784916e36  # * 2^120

    @triton.jit
    def load_fp8_rows(cache_ptr, cache_bf16_ptr, row_off, scale_off, valid):
        """Issue every load of rows at ``row_off`` / ``scale_off`` at once (no use in between, so all
        are in flight together): ``(raw_a [R, 256], raw_b [R, 128], raw_c [R, 64])`` e4m3 bytes of
        nope channels 0..255, 256..383, 384..447, ``rope [R, 64]`` bf16 and ``word [R]`` uint64, the
        row's 8 scale bytes (little-endian: byte g scales tile g). Invalid rows are not read
        (zeros). The byte loads are 16 bytes wide when the page stride is a multiple of 16 (Triton
        specializes it); the scale word needs 8-byte alignment (``cache_reason`` checks it)."""
        raw_a = tl.load(cache_ptr + row_off[:, None] + tl.arange(0, 256)[None, :], mask=valid[:, None], other=0)
        raw_b = tl.load(cache_ptr + row_off[:, None] + 256 + tl.arange(0, 128)[None, :], mask=valid[:, None],
                        other=0)
        raw_c = tl.load(cache_ptr + row_off[:, None] + 384 + tl.arange(0, 64)[None, :], mask=valid[:, None],
                        other=0)
        start = (row_off + _NOPE_DIM) // 2
        rope = tl.load(cache_bf16_ptr + start[:, None] + tl.arange(0, 64)[None, :], mask=valid[:, None],
                       other=0.0)
        word = tl.load((cache_ptr + scale_off).to(tl.pointer_type(tl.uint64)), mask=valid, other=0)
        return raw_a, raw_b, raw_c, rope, word

    @triton.jit
    def dequant_chunk(raw, word, G0: tl.constexpr, NATIVE: tl.constexpr):
        """bf16 ``[R, W]`` of e4m3 bytes ``raw [R, W]`` (W/64 tiles starting at tile ``G0``) scaled by
        the ue8m0 bytes ``G0..`` of ``word [R]``. Exact: e4m3 * 2^k is a bf16 value."""
        R: tl.constexpr = raw.shape[0]
        W: tl.constexpr = raw.shape[1]
        G: tl.constexpr = W // 64
        shifts = ((G0 + tl.arange(0, G)) * 8).to(tl.uint64)
        sb = ((word[:, None] >> shifts[None, :]) & 0xFF).to(tl.uint32)      # [R, G]
        scale = _ue8m0_scale(sb)
        vals = _decode_e4m3(raw, NATIVE)
        if G == 1:
            out = vals * scale
        else:
            out = tl.reshape(tl.reshape(vals, [R, G, 64]) * scale[:, :, None], [R, W])
        return out.to(tl.bfloat16)

else:  # pragma: no cover
    rne_bf16 = fp8_row_offsets = load_fp8_rows = dequant_chunk = None  # type: ignore[assignment]
