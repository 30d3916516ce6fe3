"""set_mla_kv_buffer: scatter MLA KV rows into a cache by slot index (spec 4.3, pattern F6).

``kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i])`` for every ``i`` with ``loc[i] >= 0``; the buffer
may have any dtype (the inputs have the same one) and any row stride. A negative slot marks a
padding row and is skipped: eager indexing would wrap it to the last row, and no engine kernel
supports it either, so the op defines it as "no write". Slots are expected to be distinct (with
duplicates, which row wins is unspecified, as for ``index_put_`` on a GPU).

The reference skips padding rows without a data-dependent shape (no host sync, so it runs on fake
tensors and inside CUDA-graph capture): a padding row rewrites the first valid row's slot with that
row's own values (or, without any valid row, slot 0 with its current contents), a duplicate write
of identical data.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusegraph.ops import fused_op


def check_args(kv_buffer: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor) -> None:
    """Shape/dtype rules shared by the reference and the providers (raises on violation)."""
    if kv_buffer.dim() != 2 or k_nope.dim() != 2 or k_rope.dim() != 2 or loc.dim() != 1:
        raise ValueError("expected kv_buffer [S, W], loc [T], k_nope [T, n], k_rope [T, W - n]")
    if k_nope.shape[0] != loc.shape[0] or k_rope.shape[0] != loc.shape[0]:
        raise ValueError(f"loc has {loc.shape[0]} rows, k_nope {k_nope.shape[0]}, k_rope {k_rope.shape[0]}")
    if k_nope.shape[1] + k_rope.shape[1] != kv_buffer.shape[1]:
        raise ValueError(f"row width {k_nope.shape[1]} + {k_rope.shape[1]} != buffer width {kv_buffer.shape[1]}")
    if k_nope.dtype != kv_buffer.dtype or k_rope.dtype != kv_buffer.dtype:
        raise TypeError(f"k_nope {k_nope.dtype} / k_rope {k_rope.dtype} must have the buffer's dtype {kv_buffer.dtype}")
    if loc.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"loc must be int32 or int64, got {loc.dtype}")


def padded_scatter_plan(loc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid [T], first [1], slot [T])``: rows to write, the index of the first valid row (0 if
    none; a tensor, so no host sync) and the slot each row writes, padding rows sent to the first
    valid row's slot (slot 0 if none)."""
    valid = loc >= 0
    first = torch.argmax(valid.to(torch.int32)).unsqueeze(0)
    slot = torch.where(valid, loc, loc[first]).clamp_min(0).long()
    return valid, first, slot


@fused_op("set_mla_kv_buffer", mutates_args=("kv_buffer",))
def set_mla_kv_buffer(kv_buffer: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor) -> None:
    """``kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i])`` where ``loc[i] >= 0``."""
    check_args(kv_buffer, loc, k_nope, k_rope)
    if loc.shape[0] == 0:
        return
    valid, first, slot = padded_scatter_plan(loc)
    rows = torch.cat([k_nope, k_rope], -1)
    fill = torch.where(valid[first, None], rows[first], kv_buffer[slot[first]])  # what padding rows write
    kv_buffer[slot] = torch.where(valid[:, None], rows, fill)
