"""KV caches and their store / load functions (spec 4.3, 4.4; patterns F5, F6, F8a).

Two storage layouts, selected by `DSV4Config.kv_cache_layout`:

* ``"bf16"`` -- `BF16KVCache`: rows `bf16 [num_slots, 512]`, written by the generic MLA scatter
  `set_mla_kv_buffer` in the F6 form `buffer[loc] = torch.cat([k_nope, k_rope], -1)`.
* ``"fp8_paged"`` (default) -- `PagedFP8KVCache`: the DSV4 FlashMLA layout,
  `uint8 [num_pages, bytes_per_page]`, `bytes_per_page = roundup(P*576 + P*8, 576)`. Token row s
  of a page: bytes `[s*576, s*576+448)` = 448 fp8 e4m3 nope values, `[s*576+448, s*576+576)` =
  64 bf16 rope values (little endian), and at `P*576 + s*8` 7 ue8m0 scale bytes
  (`log2(scale) + 127`) + 1 pad byte. Slot `loc` -> page `loc // P`, row `loc % P`.
  `store_fp8_paged` quantizes and scatters with explicit byte offsets (rows with loc < 0 are
  skipped; plain scatters without accumulate, which Inductor compiles on every backend);
  `gather_fp8_paged` gathers slots (any index shape) and dequantizes (`fp8 * 2^(byte - 127)`).

Cache slots are absolute positions (no ring buffer): capacity = `max_seq_len` tokens for the
window cache and `max_seq_len // ratio` for a compressed cache. The caches are non-persistent
buffers (never in a checkpoint). Writes are in-place ops on the buffers, so a traced graph keeps
them as `__setitem__` / `index_put_` nodes on `get_attr` values.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fusegraph.models.quant import FP8_MAX

NOPE_DIM = 448
ROPE_DIM = 64
ROW_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 576
SCALE_BYTES = 8  # 7 ue8m0 scale bytes + 1 pad byte
N_SCALES = NOPE_DIM // 64  # 7


def bytes_per_page(page_size: int) -> int:
    raw = page_size * ROW_BYTES + page_size * SCALE_BYTES
    return (raw + ROW_BYTES - 1) // ROW_BYTES * ROW_BYTES


def num_pages_for(num_slots: int, page_size: int) -> int:
    return (num_slots + page_size - 1) // page_size


def set_mla_kv_buffer(kv_buffer: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor) -> None:
    """kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i]) (generic MLA row scatter, F6 form)."""
    kv_buffer[loc] = torch.cat([k_nope, k_rope], -1)


def quantize_fp8_rows(k_nope: Tensor, quant_eps: float) -> tuple[Tensor, Tensor]:
    """k_nope [T,448] -> (e4m3 bytes uint8 [T,448], ue8m0 scale bytes uint8 [T,7])."""
    tiles = k_nope.float().unflatten(-1, (N_SCALES, 64))
    amax = tiles.abs().amax(-1, keepdim=True).clamp(min=quant_eps)
    exponent = torch.ceil(torch.log2(amax / FP8_MAX))
    q = (tiles / torch.exp2(exponent)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2).view(torch.uint8), (exponent.squeeze(-1) + 127).to(torch.uint8)


def store_fp8_paged(
    cache: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor, page_size: int, quant_eps: float
) -> None:
    """Quantize rows and scatter them into the DSV4 paged FP8 cache (rows with loc < 0 skipped).

    Padding rows (loc < 0) are skipped without a data-dependent shape (which would stop tracing and
    fake-tensor propagation) and without an accumulating scatter (Inductor lowers
    ``index_put_(..., accumulate=True)`` to atomic adds, which Triton lacks for uint8): they are sent
    to slot 0 and write the bytes slot 0 ends with -- those of the valid row stored there, else the
    bytes already there -- so every write to slot 0 carries the same bytes and the result does not
    depend on the order of the writes. Valid slots must be distinct (as for any scatter)."""
    nope_bytes, scale_bytes = quantize_fp8_rows(k_nope, quant_eps)
    rope_bytes = k_rope.to(torch.bfloat16).contiguous().view(torch.uint8)  # little endian
    row_bytes = torch.cat([nope_bytes, rope_bytes], -1)  # [T, 576]
    scale_bytes = torch.cat([scale_bytes, scale_bytes.new_zeros(scale_bytes.size(0), 1)], -1)  # [T, 8]
    valid = (loc >= 0).unsqueeze(1)
    at_slot0 = valid & (loc == 0).unsqueeze(1)  # the valid row stored at slot 0, if any
    slot = loc.clamp_min(0)
    page = (slot // page_size).unsqueeze(1)
    row = slot % page_size
    row_offsets = torch.arange(ROW_BYTES, device=loc.device)  # byte offsets of slot 0's row ...
    scale_offsets = page_size * ROW_BYTES + torch.arange(SCALE_BYTES, device=loc.device)  # ... and scales
    _scatter_skipping_padding(cache, page, (row * ROW_BYTES).unsqueeze(1) + row_offsets, row_offsets, row_bytes,
                              valid, at_slot0)
    _scatter_skipping_padding(cache, page, (row * SCALE_BYTES).unsqueeze(1) + scale_offsets, scale_offsets,
                              scale_bytes, valid, at_slot0)


def _scatter_skipping_padding(cache: Tensor, page: Tensor, cols: Tensor, slot0_cols: Tensor, data: Tensor,
                              valid: Tensor, at_slot0: Tensor) -> None:
    """``cache[page, cols] = data`` for valid rows; padding rows (at slot 0) write slot 0's final bytes."""
    stored_at_slot0 = (at_slot0 * data).sum(0).to(torch.uint8)  # at most one row is selected
    slot0_final = torch.where(at_slot0.any(), stored_at_slot0, cache[0, slot0_cols])
    cache.index_put_((page, cols), torch.where(valid, data, slot0_final))


def gather_fp8_paged(cache: Tensor, slots: Tensor, page_size: int) -> Tensor:
    """Dequantized rows of `slots` (any shape, values in [0, num_pages * P)): bf16 `slots.shape + (512,)`.

    `out[c] = fp8[c] * 2^(scale_byte[c // 64] - 127)` for c < 448, `out[448:]` = the stored bf16
    rope (F8a). The row area `[0, P*576)` of every page is read as `[P, 576]` rows and the scale area
    `[P*576, P*584)` as `[P, 8]`, so slot `s` is row `s` of the flattened views (page `s // P`,
    row `s % P`); the whole cache is dequantized once and then indexed, which keeps the CPU cost
    independent of the number of (query, key) pairs."""
    p = page_size
    row_cols = torch.arange(p * ROW_BYTES, device=slots.device)
    scale_cols = p * ROW_BYTES + torch.arange(p * SCALE_BYTES, device=slots.device)
    row_bytes = cache[:, row_cols].view(-1, ROW_BYTES)  # [num_pages * P, 576]
    scale_bytes = cache[:, scale_cols].view(-1, SCALE_BYTES)[:, :N_SCALES]  # [num_pages * P, 7]
    nope = row_bytes[:, :NOPE_DIM].view(torch.float8_e4m3fn).float().unflatten(-1, (N_SCALES, 64))
    nope = (nope * torch.exp2(scale_bytes.float() - 127).unsqueeze(-1)).flatten(-2).to(torch.bfloat16)
    rope = row_bytes[:, NOPE_DIM:].view(torch.bfloat16)
    return torch.cat([nope, rope], -1)[slots]


class PagedFP8KVCache(nn.Module):
    """DSV4 paged FP8 cache of `num_slots` 576-byte rows."""

    def __init__(self, num_slots: int, page_size: int, quant_eps: float) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.page_size = page_size
        self.quant_eps = quant_eps
        shape = (num_pages_for(num_slots, page_size), bytes_per_page(page_size))
        self.register_buffer("pages", torch.zeros(shape, dtype=torch.uint8), persistent=False)

    def store(self, loc: Tensor, k_nope: Tensor, k_rope: Tensor) -> None:
        store_fp8_paged(self.pages, loc, k_nope, k_rope, self.page_size, self.quant_eps)

    def read(self, slots: Tensor) -> Tensor:
        return gather_fp8_paged(self.pages, slots, self.page_size)


class BF16KVCache(nn.Module):
    """Plain bf16 rows `[num_slots, 512]` written with set_mla_kv_buffer."""

    def __init__(self, num_slots: int, head_dim: int = NOPE_DIM + ROPE_DIM) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.register_buffer("rows", torch.zeros(num_slots, head_dim, dtype=torch.bfloat16), persistent=False)

    def store(self, loc: Tensor, k_nope: Tensor, k_rope: Tensor) -> None:
        set_mla_kv_buffer(self.rows, loc, k_nope, k_rope)

    def read(self, slots: Tensor) -> Tensor:
        return self.rows[slots]


def make_kv_cache(layout: str, num_slots: int, page_size: int, quant_eps: float) -> nn.Module:
    if layout == "fp8_paged":
        return PagedFP8KVCache(num_slots, page_size, quant_eps)
    if layout == "bf16":
        return BF16KVCache(num_slots)
    raise ValueError(f"unknown kv cache layout {layout!r}")
