"""Triton provider of sparse_attn_sink: split-K attention with the FP8 gather fused in.

Two paths (``plan``): small T (decode) runs ``triton_decode.sparse_attn_decode_kernel``, one
launch whose last split per (token, head block) finishes the group; larger T runs
``triton_kernels``' attention kernel (+ its combine kernel when it splits). The provider checks
the arguments (``supports_args`` gives the reason for anything it cannot take), allocates the
output and, when the plan splits, the fp32 partials, and launches.

Split counters of the one-launch path (``split_counters``): int32, one per (token, head block),
zero between launches because the finishing split resets its own. One buffer per device, zeroed
once when created (on the first eager call, e.g. a warm-up) and never freed, so a call costs no
memset and captured CUDA graphs keep a valid address whatever stream they are captured on or
replayed on. A call captured before any eager call on the device gets a fresh zeroed buffer from
torch inside the graph instead (its memset is a graph node that runs before the kernel on every
replay; never cached, since eager calls would see it unzeroed). Launches sharing the buffer must
not overlap in time: calls on one stream are ordered, but running this op concurrently on two
streams of one device (eagerly or by replaying graphs) is not supported on this path.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.gather_dequant.reference import HEAD_DIM
from fusegraph.kernels.gather_dequant.triton import cache_reason, index_reason
from fusegraph.kernels.gather_dequant.triton_fp8 import fp8_native, page_shift

from .plan import AttnPlan, make_plan
from .reference import no_compressed, q_reason, sparse_attn_sink

if tc.HAS_TRITON:
    from .triton_decode import sparse_attn_decode_kernel
    from .triton_kernels import LOG2E, combine_kernel, sparse_attn_kernel

_PARTIAL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIN_COUNTERS = 1 << 12   # 16 KB: the one-launch path's groups (T * head blocks) are a fraction of the SMs
_COUNTERS: dict[str, Tensor] = {}
_RETIRED: list[Tensor] = []   # outgrown buffers stay alive: captured graphs may still use them


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def split_counters(device: torch.device, n: int) -> Tensor:
    """Zeroed int32 counters (at least ``n``) for the one-launch path on ``device`` (see the module
    docstring for the CUDA-graph rules)."""
    key = str(device)
    buf = _COUNTERS.get(key)
    if buf is not None and buf.numel() >= n:
        return buf
    if _capturing(device):   # zeroed by a memset node of the graph; not valid outside it
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)
    if buf is not None:
        _RETIRED.append(buf)
    buf = torch.zeros(max(n, MIN_COUNTERS), dtype=torch.int32, device=device)
    _COUNTERS[key] = buf
    return buf


def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Output allocation (tests replace it to poison outputs)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _supports(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor], cmp_idx: Optional[Tensor],
              sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int,
              cmp_page_size: int) -> str | None:
    cmp_cache, cmp_idx = no_compressed(swa_cache, swa_idx, cmp_cache, cmp_idx)
    reason = q_reason(q)
    if reason:
        return reason
    T, H, _ = q.shape
    if H == 0:
        return "q has no heads"
    for idx, name in ((swa_idx, "swa_idx"), (cmp_idx, "cmp_idx")):
        reason = index_reason(idx, name)
        if reason:
            return reason
        if idx.dim() != 2 or idx.shape[0] != T or (idx.shape[1] > 1 and idx.stride(1) != 1):
            return f"{name} must be [T={T}, K] with contiguous rows, got {tuple(idx.shape)}"
    if swa_idx.shape[1]:
        reason = cache_reason(swa_cache, swa_page_size, "swa_cache")
        if reason:
            return reason
    if cmp_idx.shape[1]:
        reason = cache_reason(cmp_cache, cmp_page_size, "cmp_cache")
        if reason:
            return reason
    if sink.dtype != torch.float32 or sink.shape != (H,) or sink.stride(0) != 1:
        return f"sink must be contiguous fp32 [{H}]"
    for table, name in ((cos, "cos"), (sin, "sin")):
        if table.dtype != torch.float32 or table.dim() != 2 or table.shape != (T, 32) or table.stride(1) != 1:
            return f"{name} must be fp32 [T={T}, 32] with contiguous rows, got {table.dtype} {tuple(table.shape)}"
    tensors = (swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin)
    if any(x.device != q.device for x in tensors):
        return "all tensors must be on q's device"
    if q.device.type == "cpu" and tc.interpreting():
        steps = _interpreted_steps(T, H, swa_idx.shape[1], cmp_idx.shape[1])
        if steps > INTERPRET_MAX_STEPS:
            return (f"{steps} kv tile steps are too many for the Triton interpreter (> {INTERPRET_MAX_STEPS}, "
                    f"~0.1 s each): the reference serves this call")
    return None


# The interpreter runs one kv tile step of one (token, head block) in ~0.1 s on a CPU core: a whole
# model's prefill (tiny at T=256: ~2300 steps a layer) would take minutes. Kernel tests call the
# provider directly at small sizes; through dispatch, larger calls go to the reference.
INTERPRET_MAX_STEPS = 32


def _interpreted_steps(T: int, H: int, k_swa: int, k_cmp: int) -> int:
    plan = make_plan(T, H, k_swa, k_cmp, num_sms=1, gpu=False)
    return max(T, 1) * -(-H // plan.block_h) * (-(-k_swa // plan.block_n) + -(-k_cmp // plan.block_n))


def _cache_args(cache: Tensor, page_size: int, used: bool, q: Tensor) -> tuple:
    """(bytes, bf16 view, page stride, page size, log2 page size or -1) kernel arguments of a cache.
    An unused cache (its index list is empty) may be a placeholder of any shape, even empty: q's
    memory stands in for it (never read), so the launcher is never handed a null pointer."""
    if not used:
        return q.view(torch.uint8), q, 0, 1, 0
    shift = page_shift(page_size)
    return cache, cache.view(torch.bfloat16), cache.stride(0), page_size, -1 if shift is None else shift


@sparse_attn_sink.provider("triton", targets=tc.provider_targets(), priority=20,
                           available=tc.triton_missing, supports_args=_supports)
def sparse_attn_sink_triton(q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Optional[Tensor],
                            cmp_idx: Optional[Tensor], sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float,
                            swa_page_size: int, cmp_page_size: int) -> Tensor:
    cmp_cache, cmp_idx = no_compressed(swa_cache, swa_idx, cmp_cache, cmp_idx)
    T, H, _ = q.shape
    device = q.device
    out = _new_output((T, H, HEAD_DIM), torch.bfloat16, device)
    if T == 0:
        return out
    k_swa, k_cmp = swa_idx.shape[1], cmp_idx.shape[1]
    plan = make_plan(T, H, k_swa, k_cmp, tc.num_sms(device), gpu=device.type == "cuda")
    launch(plan, q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin, softmax_scale, swa_page_size,
           cmp_page_size, out)
    return out


def launch(plan: AttnPlan, q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Tensor, cmp_idx: Tensor,
           sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int, cmp_page_size: int,
           out: Tensor) -> Any:
    """Run ``plan``; returns the attention kernel's compiled handle (benchmarks read its registers
    and spills)."""
    if plan.one_launch:
        return _launch_one(plan, q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, cos, sin, softmax_scale,
                           swa_page_size, cmp_page_size, out)
    T, H, _ = q.shape
    device = q.device
    k_swa, k_cmp = swa_idx.shape[1], cmp_idx.shape[1]
    swa = _cache_args(swa_cache, swa_page_size, k_swa > 0, q)
    cmp = _cache_args(cmp_cache, cmp_page_size, k_cmp > 0, q)
    if plan.split:
        rows = T * H * plan.splits
        part_acc = torch.empty((rows, HEAD_DIM), dtype=torch.float32, device=device)
        part_ml = torch.empty((rows, 2), dtype=torch.float32, device=device)
    else:
        part_acc = part_ml = out  # never touched
    use_pdl = tc.pdl_enabled(device)
    interpret = tc.interpreting()
    extra = tc.launch_kwargs(device)
    grid = (T * plan.splits * tc.cdiv(H, plan.block_h),)
    compiled = sparse_attn_kernel[grid](
        q, q.stride(0), q.stride(1),
        *swa, swa_idx, swa_idx.stride(0), k_swa,
        *cmp, cmp_idx, cmp_idx.stride(0), k_cmp,
        sink, cos, cos.stride(0), sin, sin.stride(0),
        out, out.stride(0), out.stride(1),
        part_acc, part_ml,
        H, plan.splits, plan.tiles_per_split, softmax_scale * LOG2E,
        BLOCK_H=plan.block_h, BLOCK_N=plan.block_n, SPLIT=plan.split, POW2_PAGES=swa[4] >= 0 and cmp[4] >= 0,
        NATIVE_FP8=fp8_native(device),
        INTERPRET=interpret, USE_PDL=use_pdl, num_warps=plan.num_warps, num_stages=plan.num_stages, **extra)
    if plan.split:
        combine_kernel[(T * H,)](
            part_acc, part_ml, sink, cos, cos.stride(0), sin, sin.stride(0),
            out, out.stride(0), out.stride(1), H, plan.splits,
            SPLITS_POW2=tc.next_pow2(plan.splits), INTERPRET=interpret, USE_PDL=use_pdl, num_warps=4, **extra)
    return compiled


def _index_words(idx: Tensor) -> tuple[Tensor, int, int]:
    """An index list as int32 words for the one-launch kernel: (words, row stride in words, words per
    index). int64 lists are read through an int32 view (low word first on little-endian GPUs)."""
    if idx.dtype == torch.int32:
        return idx, idx.stride(0), 1
    if idx.shape[1] and idx.stride(1) != 1:  # a [T, 1] column may carry any stride
        idx = idx.clone(memory_format=torch.contiguous_format)
    if idx.shape[1] == 0:  # never read; any int32 tensor will do
        return idx.new_empty((idx.shape[0], 0), dtype=torch.int32), 0, 2
    words = idx.view(torch.int32)
    return words, words.stride(0), 2


def _launch_one(plan: AttnPlan, q: Tensor, swa_cache: Tensor, swa_idx: Tensor, cmp_cache: Tensor, cmp_idx: Tensor,
                sink: Tensor, cos: Tensor, sin: Tensor, softmax_scale: float, swa_page_size: int, cmp_page_size: int,
                out: Tensor) -> Any:
    """The one-launch path: ``sparse_attn_decode_kernel`` over ``T * splits * head_blocks`` programs."""
    T, H, _ = q.shape
    device = q.device
    k_swa, k_cmp = swa_idx.shape[1], cmp_idx.shape[1]
    swa = _cache_args(swa_cache, swa_page_size, k_swa > 0, q)
    cmp = _cache_args(cmp_cache, cmp_page_size, k_cmp > 0, q)
    if swa_idx.dtype != cmp_idx.dtype:  # one IDX_WORDS for both lists
        swa_idx, cmp_idx = swa_idx.to(torch.int64), cmp_idx.to(torch.int64)
    swa_idx, swa_idx_stride, idx_words = _index_words(swa_idx)
    cmp_idx, cmp_idx_stride, _ = _index_words(cmp_idx)
    heads = plan.heads_per_program
    groups = T * tc.cdiv(H, heads)
    if plan.split:
        rows = groups * plan.splits * heads     # [group, split, heads]: only the block's heads
        part_acc = torch.empty((rows, HEAD_DIM), dtype=_PARTIAL_DTYPES[plan.partial_dtype], device=device)
        part_ml = torch.empty((rows, 2), dtype=torch.float32, device=device)
        counters = split_counters(device, groups)
    else:
        part_acc = part_ml = counters = out  # never touched
    return sparse_attn_decode_kernel[(groups * plan.splits,)](
        q, q.stride(0), q.stride(1),
        *swa, swa_idx, swa_idx_stride, k_swa,
        *cmp, cmp_idx, cmp_idx_stride, k_cmp,
        sink, cos, cos.stride(0), sin, sin.stride(0),
        out, out.stride(0), out.stride(1),
        part_acc, part_ml, counters,
        H, plan.splits, plan.tiles_per_split, softmax_scale * LOG2E,
        HEADS=heads, BLOCK_H=plan.block_h, BLOCK_N=plan.block_n, SPLIT=plan.split,
        MERGE_PAIRS=plan.block_h * HEAD_DIM <= 64 * 32 * plan.num_warps,   # <= 64 fp32 per thread a partial
        PARTIAL_BF16=plan.partial_dtype == "bf16",
        POW2_PAGES=swa[4] >= 0 and cmp[4] >= 0, NATIVE_FP8=fp8_native(device), INTERPRET=tc.interpreting(),
        USE_PDL=tc.pdl_enabled(device), IDX_WORDS=idx_words, num_warps=plan.num_warps, num_stages=plan.num_stages,
        **tc.launch_kwargs(device))
