"""One-launch decode kernel of sparse_attn_sink: split-K whose last split finishes the group.

``sparse_attn_decode_kernel``: program = (token t, split, head block); head blocks of one
(token, split) are adjacent, so their reads of the same kv rows hit L2. Made for small T, where
the time is latency, not bytes (flash T = 1 reads ~0.5 MB): the two-kernel path paid two
launches, a 64-head q tile per program, a 3-stage pipeline for a single tile and a combine kernel
re-reading 1.3 MB of partials. Here:

* Wide and shallow: ``HEADS`` heads per program (16 by default; ``BLOCK_H >= HEADS`` dot rows,
  the rest masked padding) times enough splits that a program has about one kv tile and the grid
  covers the SMs. No software pipeline for one tile (``num_stages`` 1; the plan asks for 2 when a
  program has several); the loop prefetches the next tile's indices while the current tile's rows
  are in flight.
* The dependent chain starts first: after the PDL wait the first tile's index load is issued
  before the q tile, the sink and the rope tables (independent of it).
* One launch: each split stores its partials (fp32 accumulator ``[HEADS, 512]``, or bf16
  ``acc / l`` with ``PARTIAL_BF16``; running max and sum; only its own heads, laid out ``[group, split, HEADS]`` so each program writes one
  contiguous block), then takes a ticket (``atomic_add`` acq_rel, gpu scope, on the group's int32
  counter; a CTA barrier first so every thread's stores precede the single-thread release). The
  split that draws the last ticket merges all the group's partials in split order (online:
  running max; two partials in flight per step when registers allow, ``MERGE_PAIRS``; read
  through L2 with ``.cg``), its own included, so the output does not depend on which split
  finished (deterministic; re-reading its own partial costs 1/splits of the merge bytes and frees
  its accumulator's registers before the merge). It folds in the sink, normalizes, rounds to
  bf16, de-rotates the rope channels and stores the output, then resets the counter to 0: the
  counter buffer is zero again after every launch (no memset).
* ``SPLIT`` False (one split): no partials, no ticket; the program finishes its heads itself.

Correctness properties as in ``triton_kernels``: invalid (-1) entries are masked, never
dereferenced, score -inf; an all-invalid group keeps m = -inf, l = 0, acc = 0 through every
merge (the -inf guards) and its output is 0 (only the sink in the denominator). PDL: the wait
precedes the first global load; ``launch_dependents`` follows the last store (the finisher's
output and counter reset; the others' ticket). The next launch touches the counters only after
its own PDL wait, when this grid has completed.
"""
from __future__ import annotations

from fusegraph.kernels import _triton_common as tc

from .triton_kernels import (_LOG2E, _finish_rows_with, _kv_tile, _rope_tables, _sink_weight, _softmax_step,
                             _tile_fetch)

tl, triton = tc.tl, tc.triton


@triton.jit
def _merge(m_run, l_run, acc, m_s, l_s, acc_s):
    """Online merge of one split's partial (``m_s = -inf``: empty, or masked out) into the run."""
    m_new = tl.maximum(m_run, m_s)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)   # both empty: keep the exp2 args finite
    a = tl.exp2(m_run - m_ref)
    b = tl.exp2(m_s - m_ref)
    return m_new, l_run * a + l_s * b, acc * a[:, None] + acc_s * b[:, None]


@triton.jit
def _load_partial(part_acc_ptr, part_ml_ptr, rows, ok, PARTIAL_BF16: tl.constexpr):
    """(m, l, acc) of partial ``rows`` (``[HEADS]`` lanes), read from L2; masked lanes give an
    empty partial (m = -inf, l = 0, acc = 0). bf16 partials hold ``acc / l``."""
    m = tl.load(part_ml_ptr + rows * 2, mask=ok, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(part_ml_ptr + rows * 2 + 1, mask=ok, other=0.0, cache_modifier=".cg")
    acc = tl.load(part_acc_ptr + rows[:, None] * 512 + tl.arange(0, 512)[None, :], mask=ok[:, None], other=0.0,
                  cache_modifier=".cg").to(tl.float32)
    if PARTIAL_BF16:
        acc = acc * l[:, None]
    return m, l, acc


@triton.jit
def _store_partial(part_acc_ptr, part_ml_ptr, rows, ok, m_i, l_i, acc, PARTIAL_BF16: tl.constexpr):
    """Store a split's (m, l, acc) at partial ``rows``; bf16 partials store ``acc / l`` (values of
    the size of the output: bf16 keeps them to 2^-9 relative, fp32 exactly)."""
    if PARTIAL_BF16:
        inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
        tl.store(part_acc_ptr + rows[:, None] * 512 + tl.arange(0, 512)[None, :],
                 (acc * inv_l[:, None]).to(tl.bfloat16), mask=ok[:, None])
    else:
        tl.store(part_acc_ptr + rows[:, None] * 512 + tl.arange(0, 512)[None, :], acc, mask=ok[:, None])
    tl.store(part_ml_ptr + rows * 2, m_i, mask=ok)
    tl.store(part_ml_ptr + rows * 2 + 1, l_i, mask=ok)


@triton.jit
def _merge_splits(part_acc_ptr, part_ml_ptr, group_row0, num_splits, lanes, head_ok, BLOCK_H: tl.constexpr,
                  HEADS: tl.constexpr, MERGE_PAIRS: tl.constexpr, PARTIAL_BF16: tl.constexpr):
    """(m, l, acc) of all the group's splits, merged in split order (whichever split finishes, the
    sums run in the same order: the output is deterministic). ``MERGE_PAIRS``: two splits per
    step, so two partial loads are in flight at once (when two partial tiles fit in registers
    next to the running accumulator)."""
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, 512], tl.float32)
    if MERGE_PAIRS:
        for s0 in range(0, num_splits, 2):
            ok1 = head_ok & (s0 + 1 < num_splits)
            m0, l0, a0 = _load_partial(part_acc_ptr, part_ml_ptr, group_row0 + s0 * HEADS + lanes, head_ok,
                                       PARTIAL_BF16)
            m1, l1, a1 = _load_partial(part_acc_ptr, part_ml_ptr, group_row0 + (s0 + 1) * HEADS + lanes, ok1,
                                       PARTIAL_BF16)
            m_i, l_i, acc = _merge(m_i, l_i, acc, m0, l0, a0)
            m_i, l_i, acc = _merge(m_i, l_i, acc, m1, l1, a1)
    else:
        for s in range(0, num_splits):
            m_s, l_s, a_s = _load_partial(part_acc_ptr, part_ml_ptr, group_row0 + s * HEADS + lanes, head_ok,
                                          PARTIAL_BF16)
            m_i, l_i, acc = _merge(m_i, l_i, acc, m_s, l_s, a_s)
    return m_i, l_i, acc


@triton.jit
def _word_slots(tile, last, tiles_swa, swa_idx_row, k_swa, cmp_idx_row, k_cmp, BLOCK_N: tl.constexpr,
                IDX_WORDS: tl.constexpr):
    """int32 slots of tile ``tile`` (as ``_tile_slots``) read from int32 words: ``IDX_WORDS`` 2 reads
    the low word of int64 indices (little-endian; indices are row numbers < 2^31 or negative = invalid,
    so the low word is the value). Loading int64 and narrowing here made Triton 3.6's layout pass
    fail on sm90 (``arith.select`` layout mismatch in TritonGPURemoveLayoutConversions)."""
    is_swa = tile < tiles_swa
    offs = tl.where(is_swa, tile, tile - tiles_swa) * BLOCK_N + tl.arange(0, BLOCK_N)
    idx_row = tl.where(is_swa, swa_idx_row, cmp_idx_row)
    k_len = tl.where(is_swa, k_swa, k_cmp)
    return tl.load(idx_row + offs * IDX_WORDS, mask=(offs < k_len) & (tile < last), other=-1)


@triton.jit
def sparse_attn_decode_kernel(
    q_ptr, q_stride_t, q_stride_h,
    swa_ptr, swa_bf16_ptr, swa_page_stride, swa_page_size, swa_page_shift, swa_idx_ptr, swa_idx_stride, k_swa,
    cmp_ptr, cmp_bf16_ptr, cmp_page_stride, cmp_page_size, cmp_page_shift, cmp_idx_ptr, cmp_idx_stride, k_cmp,
    sink_ptr, cos_ptr, cos_stride, sin_ptr, sin_stride,
    out_ptr, out_stride_t, out_stride_h,
    part_acc_ptr, part_ml_ptr, counter_ptr,
    num_heads, num_splits, tiles_per_split, qk_scale,
    HEADS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_PAIRS: tl.constexpr, PARTIAL_BF16: tl.constexpr, POW2_PAGES: tl.constexpr, NATIVE_FP8: tl.constexpr, INTERPRET: tl.constexpr, USE_PDL: tl.constexpr,
    IDX_WORDS: tl.constexpr,
):
    pid = tl.program_id(0)
    head_blocks = tl.cdiv(num_heads, HEADS)
    hb = pid % head_blocks
    split = (pid // head_blocks) % num_splits
    t = (pid // head_blocks // num_splits).to(tl.int64)
    lanes = tl.arange(0, BLOCK_H)
    heads = hb * HEADS + lanes
    head_ok = (lanes < HEADS) & (heads < num_heads)
    hm = head_ok[:, None]
    tiles_swa = tl.cdiv(k_swa, BLOCK_N)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tiles_swa + tl.cdiv(k_cmp, BLOCK_N))
    swa_row = swa_idx_ptr + t * swa_idx_stride
    cmp_row = cmp_idx_ptr + t * cmp_idx_stride

    tc.pdl_wait(USE_PDL)
    # head of the dependent chain (indices -> rows -> dequant -> dots) first; q, the sink and the
    # rope tables do not depend on it and arrive while the rows are fetched
    slots = _word_slots(first, last, tiles_swa, swa_row, k_swa, cmp_row, k_cmp, BLOCK_N, IDX_WORDS)
    q_row = q_ptr + t * q_stride_t + heads.to(tl.int64)[:, None] * q_stride_h
    q = tl.load(q_row + tl.arange(0, 512)[None, :], mask=hm, other=0.0)
    sink2 = tl.load(sink_ptr + heads, mask=head_ok, other=0.0) * _LOG2E
    rope_c, rope_s = _rope_tables(cos_ptr + t * cos_stride, sin_ptr + t * sin_stride)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, 512], tl.float32)
    for tile in range(first, last):
        valid, raw_a, raw_b, raw_c, k_r, word = _tile_fetch(
            tile, tiles_swa, slots, swa_ptr, swa_bf16_ptr, swa_page_stride, swa_page_size, swa_page_shift,
            cmp_ptr, cmp_bf16_ptr, cmp_page_stride, cmp_page_size, cmp_page_shift, POW2_PAGES)
        slots = _word_slots(tile + 1, last, tiles_swa, swa_row, k_swa, cmp_row, k_cmp, BLOCK_N, IDX_WORDS)
        k = _kv_tile(raw_a, raw_b, raw_c, k_r, word, NATIVE_FP8)
        m_i, l_i, acc = _softmax_step(q, valid, k, m_i, l_i, acc, qk_scale, INTERPRET)

    out_row = out_ptr + t * out_stride_t + heads.to(tl.int64)[:, None] * out_stride_h
    if SPLIT:
        group = t * head_blocks + hb
        group_row0 = group * num_splits * HEADS            # partial rows [group, split, HEADS]
        rows = group_row0 + split * HEADS + lanes
        _store_partial(part_acc_ptr, part_ml_ptr, rows, head_ok, m_i, l_i, acc, PARTIAL_BF16)
        # every thread's stores before the ticket (one thread's gpu-scope release); the acquire side
        # is the ticket's acq_rel plus the barrier Triton puts after a scalar atomic
        tl.debug_barrier()
        ticket = tl.atomic_add(counter_ptr + group, 1, sem="acq_rel", scope="gpu")
        if ticket == num_splits - 1:
            m_i, l_i, acc = _merge_splits(part_acc_ptr, part_ml_ptr, group_row0, num_splits, lanes, head_ok, BLOCK_H,
                                          HEADS, MERGE_PAIRS, PARTIAL_BF16)
            w = _sink_weight(m_i, l_i, sink2)[:, None]
            tl.store(out_row + tl.arange(0, 512)[None, :], _finish_rows_with(acc, w, rope_c, rope_s, INTERPRET),
                     mask=hm)
            tl.atomic_xchg(counter_ptr + group, 0, sem="relaxed", scope="gpu")   # clean for the next launch
    else:
        w = _sink_weight(m_i, l_i, sink2)[:, None]
        tl.store(out_row + tl.arange(0, 512)[None, :], _finish_rows_with(acc, w, rope_c, rope_s, INTERPRET),
                 mask=hm)
    tc.pdl_launch_dependents(USE_PDL)
