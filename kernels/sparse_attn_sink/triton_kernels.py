"""Triton kernels of sparse_attn_sink: split-K attention over gathered FP8 rows, and the combine.

``sparse_attn_kernel``: program = (token t, head block, split). It loads the q tile
``[BLOCK_H, 512]`` once, then walks its share of kv tiles of ``BLOCK_N`` index entries
(the window list's tiles, then the compressed list's; a tile never straddles the two). For each
tile it dequantizes the gathered FP8 rows (chunks of 256 + 128 + 64 nope channels and 64 rope
channels, the widths the FP8 loader produces) into one bf16 tile and runs one online-softmax step in the
log2 domain (fp32; ``-inf`` guarded so an all-invalid prefix leaves the state at m = -inf, l = 0,
acc = 0). K = V: the same dequantized tile feeds both dots. Invalid entries are masked, never
dereferenced, and get score -inf.

Structure, and why (measured and read off the SASS on an H200):

* One ``[BLOCK_N, 512]`` bf16 tile and one ``[BLOCK_H, 512]`` fp32 accumulator, so each step is
  two dots (``S = Q K^T`` with K = 512, ``acc += P K``). Split into per-chunk dots (256 + 128 + 64
  + 64 channels), ptxas serialized every wgmma (warning C7515: non-wgmma instructions defining
  accumulator registers inside a pipeline stage), one ``HGMMA`` + wait at a time. The chunks are
  joined in registers (``_cat_cols``) before the tile goes to shared memory.
* A row's 7 scale bytes are one 8-byte load (byte loads are not pipelined by Triton and left a
  synchronous global load in every iteration).
* Loop over a single tile counter for both index lists, so Triton's pipeliner (``num_stages`` 3)
  prefetches tile i+2's indices and tile i+1's rows (cp.async) across the list boundary.

* ``SPLIT`` False: the kernel folds in the sink (``m = max(m, sink)``, ``den = l*2^(m_old-m) +
  2^(sink-m)``), normalizes, rounds to bf16, de-rotates the rope channels and stores the output.
* ``SPLIT`` True: it stores fp32 partials (acc, m, l) and ``combine_kernel`` (program = one
  (token, head)) merges the splits, folds in the sink and does the same epilogue.

The epilogue rounds the attention output to bf16 before the inverse RoPE (fp32 math, second bf16
rounding), as the reference (and sglang's separate in-place RoPE) does. PDL: ``pdl_wait`` before
the first load, ``pdl_launch_dependents`` after the last store.

Interpreter workarounds (``INTERPRET``): bf16 ``tl.dot`` is computed on fp32 copies of the same
bf16 values, and bf16 roundings go through ``rne_bf16``.
"""
from __future__ import annotations

import math

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.gather_dequant.triton_fp8 import dequant_chunk, fp8_row_offsets, load_fp8_rows, rne_bf16

tl, triton = tc.tl, tc.triton

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _dot(a, b, acc, INTERPRET: tl.constexpr):
    if INTERPRET:  # the interpreter's bf16 tl.dot is wrong; fp32 on the same values is exact input
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _tile_slots(tile, last, tiles_swa, swa_idx_row, k_swa, cmp_idx_row, k_cmp, BLOCK_N: tl.constexpr):
    """int32 slots of tile ``tile`` (window tiles first, then compressed ones); -1 for invalid
    entries, past the list's end, and for every entry when ``tile >= last`` (nothing is read)."""
    is_swa = tile < tiles_swa
    offs = tl.where(is_swa, tile, tile - tiles_swa) * BLOCK_N + tl.arange(0, BLOCK_N)
    idx_row = tl.where(is_swa, swa_idx_row, cmp_idx_row)
    k_len = tl.where(is_swa, k_swa, k_cmp)
    return tl.load(idx_row + offs, mask=(offs < k_len) & (tile < last), other=-1).to(tl.int32)


@triton.jit
def _tile_fetch(tile, tiles_swa, slots,
                swa_ptr, swa_bf16_ptr, swa_page_stride, swa_page_size, swa_page_shift,
                cmp_ptr, cmp_bf16_ptr, cmp_page_stride, cmp_page_size, cmp_page_shift, POW2_PAGES: tl.constexpr):
    """Issue the loads of the rows of ``slots`` (tile ``tile`` of its list): (valid, raw bytes ...)."""
    is_swa = tile < tiles_swa
    valid = slots >= 0
    # one load per row from whichever cache the tile reads (scalar selects of base and paging)
    cache_ptr = tl.where(is_swa, swa_ptr, cmp_ptr)
    cache_bf16_ptr = tl.where(is_swa, swa_bf16_ptr, cmp_bf16_ptr)
    page_stride = tl.where(is_swa, swa_page_stride, cmp_page_stride)
    page_size = tl.where(is_swa, swa_page_size, cmp_page_size)
    page_shift = tl.where(is_swa, swa_page_shift, cmp_page_shift)
    row_off, scale_off = fp8_row_offsets(tl.where(valid, slots, 0), page_stride, page_size, page_shift, POW2_PAGES)
    raw_a, raw_b, raw_c, rope, word = load_fp8_rows(cache_ptr, cache_bf16_ptr, row_off, scale_off, valid)
    return valid, raw_a, raw_b, raw_c, rope, word


@triton.jit
def _cat_cols(x, y):
    """``[R, W] ++ [R, W] -> [R, 2W]`` (x's columns, then y's), in registers."""
    R: tl.constexpr = x.shape[0]
    W: tl.constexpr = x.shape[1]
    return tl.reshape(tl.permute(tl.join(x, y), (0, 2, 1)), [R, 2 * W])


@triton.jit
def _kv_tile(raw_a, raw_b, raw_c, k_r, word, NATIVE_FP8: tl.constexpr):
    """bf16 ``[BLOCK_N, 512]`` rows of one fetched tile: dequantized nope channels, then rope."""
    k_a = dequant_chunk(raw_a, word, 0, NATIVE_FP8)
    k_b = dequant_chunk(raw_b, word, 4, NATIVE_FP8)
    k_c = dequant_chunk(raw_c, word, 6, NATIVE_FP8)
    return _cat_cols(k_a, _cat_cols(k_b, _cat_cols(k_c, k_r)))


@triton.jit
def _softmax_step(q, valid, k, m_i, l_i, acc, qk_scale, INTERPRET: tl.constexpr):
    """One online-softmax step (log2 domain) of a ``[BLOCK_H]`` head block over one kv tile."""
    s = _dot(q, tl.trans(k), None, INTERPRET)
    s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing valid yet: keep exp2 args finite
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = _dot(rne_bf16(p, INTERPRET), k, acc * alpha[:, None], INTERPRET)
    return m_new, l_i, acc


@triton.jit
def _sink_weight(m_i, l_i, sink2):
    """Factor that turns an accumulator (relative to max m_i, sum l_i) into the sink-normalized output."""
    m = tl.maximum(m_i, sink2)
    m = tl.where(m == float("-inf"), 0.0, m)
    alpha = tl.exp2(m_i - m)
    den = l_i * alpha + tl.exp2(sink2 - m)
    return tl.where(den > 0, alpha / tl.where(den > 0, den, 1.0), 0.0)


@triton.jit
def _inverse_rope(o_r, cos_row_ptr, sin_row_ptr, INTERPRET: tl.constexpr):
    """bf16 ``[R, 64]``: round o_r to bf16, rotate pairs (2i, 2i+1) by -θ_i in fp32, round again."""
    R: tl.constexpr = o_r.shape[0]
    o_r = rne_bf16(o_r, INTERPRET).to(tl.float32)
    x0, x1 = tl.split(tl.reshape(o_r, [R, 32, 2]))
    c = tl.load(cos_row_ptr + tl.arange(0, 32))[None, :]
    s = tl.load(sin_row_ptr + tl.arange(0, 32))[None, :]
    y0 = x0 * c + x1 * s
    y1 = x1 * c - x0 * s
    return rne_bf16(tl.reshape(tl.join(y0, y1), [R, 64]), INTERPRET)


@triton.jit
def _rope_tables(cos_row_ptr, sin_row_ptr):
    """``[1, 256]`` cos / sin per channel pair of one token: pairs 224..255 (the rope channels)
    get the token's values, the others 1 / 0 (left unchanged by the rotation)."""
    pair = tl.arange(0, 256)
    rope = pair >= 224
    c = tl.load(cos_row_ptr + pair - 224, mask=rope, other=1.0)[None, :]
    s = tl.load(sin_row_ptr + pair - 224, mask=rope, other=0.0)[None, :]
    return c, s


@triton.jit
def _finish_rows_with(acc, w, c, s, INTERPRET: tl.constexpr):
    """bf16 ``[R, 512]`` output rows: ``acc * w`` rounded to bf16, then every channel pair rotated
    by its ``(c, s)`` from ``_rope_tables`` (-θ on the rope pairs) in fp32 and rounded again."""
    R: tl.constexpr = acc.shape[0]
    o = rne_bf16(acc * w, INTERPRET).to(tl.float32)
    x0, x1 = tl.split(tl.reshape(o, [R, 256, 2]))
    return rne_bf16(tl.reshape(tl.join(x0 * c + x1 * s, x1 * c - x0 * s), [R, 512]), INTERPRET)


@triton.jit
def _finish_rows(acc, w, cos_row_ptr, sin_row_ptr, INTERPRET: tl.constexpr):
    """``_finish_rows_with`` on the rope tables of the token at ``cos_row_ptr`` / ``sin_row_ptr``."""
    c, s = _rope_tables(cos_row_ptr, sin_row_ptr)
    return _finish_rows_with(acc, w, c, s, INTERPRET)


@triton.jit
def sparse_attn_kernel(
    q_ptr, q_stride_t, q_stride_h,
    swa_ptr, swa_bf16_ptr, swa_page_stride, swa_page_size, swa_page_shift, swa_idx_ptr, swa_idx_stride, k_swa,
    cmp_ptr, cmp_bf16_ptr, cmp_page_stride, cmp_page_size, cmp_page_shift, cmp_idx_ptr, cmp_idx_stride, k_cmp,
    sink_ptr, cos_ptr, cos_stride, sin_ptr, sin_stride,
    out_ptr, out_stride_t, out_stride_h,
    part_acc_ptr, part_ml_ptr,
    num_heads, num_splits, tiles_per_split, qk_scale,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, POW2_PAGES: tl.constexpr,
    NATIVE_FP8: tl.constexpr, INTERPRET: tl.constexpr, USE_PDL: tl.constexpr,
):
    # program -> (token, split, head block); head blocks of one (token, split) are adjacent so
    # their reads of the same kv rows hit L2.
    pid = tl.program_id(0)
    head_blocks = tl.cdiv(num_heads, BLOCK_H)
    hb = pid % head_blocks
    split = (pid // head_blocks) % num_splits
    t = (pid // head_blocks // num_splits).to(tl.int64)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < num_heads
    tiles_swa = tl.cdiv(k_swa, BLOCK_N)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tiles_swa + tl.cdiv(k_cmp, BLOCK_N))
    swa_row = swa_idx_ptr + t * swa_idx_stride
    cmp_row = cmp_idx_ptr + t * cmp_idx_stride

    tc.pdl_wait(USE_PDL)
    q_row = q_ptr + t * q_stride_t + heads.to(tl.int64)[:, None] * q_stride_h
    hm = head_ok[:, None]
    q = tl.load(q_row + tl.arange(0, 512)[None, :], mask=hm, other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, 512], tl.float32)
    # Triton's pipeliner (num_stages >= 3) loads tile i+2's indices and tile i+1's rows (cp.async
    # into shared memory) while tile i is computed
    for tile in range(first, last):
        slots = _tile_slots(tile, last, tiles_swa, swa_row, k_swa, cmp_row, k_cmp, BLOCK_N)
        valid, raw_a, raw_b, raw_c, k_r, word = _tile_fetch(
            tile, tiles_swa, slots, swa_ptr, swa_bf16_ptr, swa_page_stride, swa_page_size, swa_page_shift,
            cmp_ptr, cmp_bf16_ptr, cmp_page_stride, cmp_page_size, cmp_page_shift, POW2_PAGES)
        k = _kv_tile(raw_a, raw_b, raw_c, k_r, word, NATIVE_FP8)
        m_i, l_i, acc = _softmax_step(q, valid, k, m_i, l_i, acc, qk_scale, INTERPRET)

    if SPLIT:
        # partial rows laid out [T, H, splits] so the combine reads one (t, h) contiguously
        part = (t * num_heads + heads) * num_splits + split
        tl.store(part_acc_ptr + part[:, None] * 512 + tl.arange(0, 512)[None, :], acc, mask=hm)
        tl.store(part_ml_ptr + part * 2, m_i, mask=head_ok)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=head_ok)
    else:
        sink2 = tl.load(sink_ptr + heads, mask=head_ok, other=0.0) * _LOG2E
        w = _sink_weight(m_i, l_i, sink2)[:, None]
        out_row = out_ptr + t * out_stride_t + heads.to(tl.int64)[:, None] * out_stride_h
        o = _finish_rows(acc, w, cos_ptr + t * cos_stride, sin_ptr + t * sin_stride, INTERPRET)
        tl.store(out_row + tl.arange(0, 512)[None, :], o, mask=hm)
    tc.pdl_launch_dependents(USE_PDL)


@triton.jit
def combine_kernel(part_acc_ptr, part_ml_ptr, sink_ptr, cos_ptr, cos_stride, sin_ptr, sin_stride,
                   out_ptr, out_stride_t, out_stride_h, num_heads, num_splits,
                   SPLITS_POW2: tl.constexpr, INTERPRET: tl.constexpr, USE_PDL: tl.constexpr):
    """Program = one (token, head): merge the split partials, fold in the sink, bf16, inverse RoPE."""
    pid = tl.program_id(0).to(tl.int64)
    t = pid // num_heads
    h = pid % num_heads
    splits = tl.arange(0, SPLITS_POW2)
    split_ok = splits < num_splits
    part = pid * num_splits + splits                     # [S] partial rows of this (t, h)
    tc.pdl_wait(USE_PDL)
    m = tl.load(part_ml_ptr + part * 2, mask=split_ok, other=float("-inf"))
    l = tl.load(part_ml_ptr + part * 2 + 1, mask=split_ok, other=0.0)
    sink2 = tl.load(sink_ptr + h) * _LOG2E
    m_all = tl.maximum(tl.max(m, 0), sink2)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
    scale = tl.exp2(m - m_all)                           # 0 for empty splits (m = -inf)
    den = tl.sum(scale * l, 0) + tl.exp2(sink2 - m_all)
    weight = tl.where(den > 0, scale / tl.where(den > 0, den, 1.0), 0.0)[:, None]   # [S, 1]
    acc_rows = part_acc_ptr + part[:, None] * 512
    out_row = out_ptr + t * out_stride_t + h * out_stride_h
    cols = tl.arange(0, 64)
    for chunk in tl.static_range(7):
        tile = tl.load(acc_rows + chunk * 64 + cols[None, :], mask=split_ok[:, None], other=0.0)
        tl.store(out_row + chunk * 64 + cols, rne_bf16(tl.sum(tile * weight, 0), INTERPRET))
    tile = tl.load(acc_rows + 448 + cols[None, :], mask=split_ok[:, None], other=0.0)
    o_r = _inverse_rope(tl.reshape(tl.sum(tile * weight, 0), [1, 64]), cos_ptr + t * cos_stride,
                        sin_ptr + t * sin_stride, INTERPRET)
    tl.store(out_row + 448 + cols[None, :], o_r)
    tc.pdl_launch_dependents(USE_PDL)
