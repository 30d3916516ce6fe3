"""Torch helpers for DSV4's FP8 KV format: e4m3 tiles of 64 channels with ue8m0 scales (spec 4.3).

Per tile: ``amax = max(max|x|, quant_eps)``, ``scale = 2^ceil(log2(amax / 448))``,
``q = e4m3(clamp(x / scale, -448, 448))`` rounded to nearest even; ``q * scale`` dequantizes. The
scale is stored as one ue8m0 byte, ``log2(scale) + 127``.

The exponent is computed exactly with ``frexp`` instead of ``ceil(log2(.))``: a float ``log2`` can
round ``2^k * (1 + tiny)`` down to ``k`` and pick a scale one binade too small. The Triton kernels
use the same exact rule, so their bytes can be compared with these bit for bit.

The paged cache layout (DSV4 "fp8_ds_mla", used by the SWA and the compressed caches) is described
by :class:`PagedLayout`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FP8_MAX = 448.0
QUANT_TILE = 64
NOPE_DIM = 448
ROPE_DIM = 64
NOPE_TILES = NOPE_DIM // QUANT_TILE  # 7
ROW_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 448 fp8 bytes + 64 bf16 values = 576
SCALE_BYTES = 8                      # 7 ue8m0 scales + 1 pad byte
UE8M0_BIAS = 127


def ue8m0_exponent(amax: Tensor) -> Tensor:
    """Exact ``ceil(log2(amax / 448))`` as int32 (``amax`` fp32, positive)."""
    mantissa, exponent = torch.frexp(amax.float() / FP8_MAX)  # amax/448 = mantissa * 2^exponent
    return exponent - (mantissa == 0.5).to(exponent.dtype)     # an exact power of two: one less


def quantize_tiles(x: Tensor, quant_eps: float) -> tuple[Tensor, Tensor]:
    """Quantize ``x [..., n*64]`` per tile of 64: ``(q float8_e4m3fn [..., n*64], exponent int32 [..., n])``."""
    tiles = x.float().unflatten(-1, (-1, QUANT_TILE))
    amax = tiles.abs().amax(-1).clamp_min(quant_eps)
    exponent = ue8m0_exponent(amax)
    scale = torch.exp2(exponent.float()).unsqueeze(-1)
    q = (tiles / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2), exponent


def dequantize_tiles(q: Tensor, exponent: Tensor) -> Tensor:
    """fp32 ``q * 2^exponent`` per tile of 64 (inverse of :func:`quantize_tiles`)."""
    tiles = q.float().unflatten(-1, (-1, QUANT_TILE))
    return (tiles * torch.exp2(exponent.float()).unsqueeze(-1)).flatten(-2)


def quant_dequant(x: Tensor, quant_eps: float) -> Tensor:
    """fp32 FP8 simulation of ``x [..., n*64]``: what a store followed by a load gives back."""
    return dequantize_tiles(*quantize_tiles(x, quant_eps))


def scale_bytes(exponent: Tensor) -> Tensor:
    """ue8m0 bytes (uint8) of power-of-two exponents."""
    return (exponent + UE8M0_BIAS).to(torch.uint8)


@dataclass(frozen=True)
class PagedLayout:
    """Byte layout of one page of ``page_size`` tokens in the DSV4 paged FP8 KV cache.

    Token row ``s`` of a page: bytes ``[s*576, s*576+448)`` hold the 448 e4m3 nope values, bytes
    ``[s*576+448, s*576+576)`` the 64 bf16 rope values; its 7 ue8m0 scales and one pad byte sit at
    ``page_size*576 + s*8``. The page is padded to a multiple of 576 bytes.
    """

    page_size: int

    @property
    def bytes_per_page(self) -> int:
        raw = self.page_size * (ROW_BYTES + SCALE_BYTES)
        return -(-raw // ROW_BYTES) * ROW_BYTES

    @property
    def scales_offset(self) -> int:
        return self.page_size * ROW_BYTES

    def slot(self, loc: Tensor) -> tuple[Tensor, Tensor]:
        """(page, row in page) of cache slots ``loc``."""
        return torch.div(loc, self.page_size, rounding_mode="floor"), loc % self.page_size


def check_paged_cache(cache: Tensor, page_size: int) -> None:
    """Raise unless ``cache`` is a uint8 ``[num_pages, >= bytes_per_page]`` cache for ``page_size``."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    if cache.dtype != torch.uint8 or cache.dim() != 2:
        raise TypeError(f"cache must be uint8 [num_pages, bytes_per_page], got {cache.dtype} {tuple(cache.shape)}")
    need = PagedLayout(page_size).bytes_per_page
    if cache.shape[1] < need:
        raise ValueError(f"cache pages hold {cache.shape[1]} bytes; page_size {page_size} needs {need}")


def dequantize_paged(cache: Tensor, loc: Tensor, page_size: int) -> Tensor:
    """Read slots ``loc`` back from a paged cache as bf16 ``[n, 512]`` (spec 4.4; used by tests)."""
    layout = PagedLayout(page_size)
    page, row = layout.slot(loc.long())
    cols = torch.arange(ROW_BYTES, device=cache.device)
    data = cache[page[:, None], (row * ROW_BYTES)[:, None] + cols]
    scols = torch.arange(NOPE_TILES, device=cache.device)
    exps = cache[page[:, None], (layout.scales_offset + row * SCALE_BYTES)[:, None] + scols].long() - UE8M0_BIAS
    nope = dequantize_tiles(data[:, :NOPE_DIM].contiguous().view(torch.float8_e4m3fn), exps)
    rope = data[:, NOPE_DIM:].contiguous().view(torch.bfloat16)
    return torch.cat([nope.to(torch.bfloat16), rope], -1)
