"""gather_dequant: the reference and the Triton kernel against rows quantized by the test itself.

Caches are built from random bf16 rows with a small quantizer written here (independent of the
library's): per tile of 64 nope channels, ``e = ceil(log2(amax / 448))``, ``q = e4m3(x / 2^e)``.
``q * 2^e`` is exact in bf16, so reference and kernel must reproduce it bit for bit. CPU cases run
the kernel through the Triton interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from fusegraph.kernels.gather_dequant import triton as gd_triton
from fusegraph.kernels.gather_dequant import triton_fp8
from fusegraph.kernels.gather_dequant.reference import gather_dequant

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="CPU Triton cases need TRITON_INTERPRET=1")


def quantize_row(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp8 bytes [448], scale bytes [7], exact dequantized bf16 row [512]) of one bf16 row."""
    tiles = row[:448].double().view(7, 64)
    amax = tiles.abs().amax(1).clamp_min(1e-4)
    exps = torch.tensor([math.ceil(math.log2(a / 448.0)) for a in amax.tolist()], dtype=torch.float64)
    q = (tiles / torch.exp2(exps)[:, None]).clamp(-448, 448).float().to(torch.float8_e4m3fn)
    deq = (q.double() * torch.exp2(exps)[:, None]).view(448)
    exact = torch.cat([deq.to(torch.bfloat16), row[448:]])
    return q.view(448).view(torch.uint8), (exps + 127).to(torch.uint8), exact


def build_cache(num_rows: int, page_size: int, seed: int, page_pad: int = 0):
    """(cache uint8 [pages, bytes_per_page (+pad)], exact bf16 rows [num_rows, 512]) filled with
    random rows; bytes not covered by rows are random garbage."""
    gen = torch.Generator().manual_seed(seed)
    pages = -(-num_rows // page_size)
    bytes_per_page = -(-(page_size * 584) // 576) * 576
    cache = torch.randint(0, 256, (pages, bytes_per_page + page_pad), generator=gen, dtype=torch.uint8)
    rows = (torch.randn(num_rows, 512, generator=gen) * torch.rand(num_rows, 1, generator=gen) * 8).bfloat16()
    exact = torch.empty(num_rows, 512, dtype=torch.bfloat16)
    for slot in range(num_rows):
        page, r = divmod(slot, page_size)
        nope, scales, exact[slot] = quantize_row(rows[slot])
        cache[page, r * 576:r * 576 + 448] = nope
        cache[page, r * 576 + 448:r * 576 + 576] = rows[slot, 448:].contiguous().view(torch.uint8)
        cache[page, page_size * 576 + r * 8:page_size * 576 + r * 8 + 7] = scales
    return cache[:, :bytes_per_page] if page_pad else cache, exact


def expected_rows(exact: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    flat = slots.reshape(-1).long()
    out = exact[flat.clamp_min(0)].clone()
    out[flat < 0] = 0
    return out.view(*slots.shape, 512)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16)


def poison(monkeypatch):
    """Make the provider's output allocation return 0xFF-filled (NaN) memory."""
    def filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(gd_triton, "_new_output", filled)


def test_reference_reproduces_quantized_rows():
    cache, exact = build_cache(23, page_size=5, seed=0)
    slots = torch.tensor([4, -1, 0, 22, 7, 7, -9, 12, 5], dtype=torch.int64)
    out = gather_dequant.reference(cache, slots, 5)
    assert out.dtype == torch.bfloat16 and out.shape == (9, 512)
    assert torch.equal(bits(out), bits(expected_rows(exact, slots)))
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[6]) == 0


def test_reference_keeps_slot_shape():
    cache, exact = build_cache(8, page_size=4, seed=1)
    slots = torch.tensor([[0, 3, -1], [7, 2, 2]], dtype=torch.int32)
    out = gather_dequant.reference(cache, slots, 4)
    assert out.shape == (2, 3, 512)
    assert torch.equal(bits(out), bits(expected_rows(exact, slots)))


@needs_interpreter
@pytest.mark.parametrize("native", [False, True], ids=["int-decode", "native-decode"])
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_triton_bitwise(monkeypatch, native, n):
    poison(monkeypatch)
    monkeypatch.setattr(triton_fp8, "FORCE_NATIVE_FP8", native)
    cache, exact = build_cache(40, page_size=6, seed=2 + n)
    gen = torch.Generator().manual_seed(n)
    slots = torch.randint(-1, 40, (n,), generator=gen, dtype=torch.int32 if n % 2 else torch.int64)
    if n >= 7:
        slots[3] = slots[0]   # duplicate
        slots[5] = -4         # any negative slot is "no row"
    out = gd_triton.gather_dequant_triton(cache, slots, 6)
    assert out.shape == (n, 512) and out.dtype == torch.bfloat16
    assert torch.equal(bits(out), bits(expected_rows(exact, slots)))


@needs_interpreter
def test_triton_never_reads_invalid_slots_and_handles_strided_pages(monkeypatch):
    poison(monkeypatch)
    cache, exact = build_cache(12, page_size=3, seed=5, page_pad=576)  # pages strided by one extra row
    assert cache.stride(0) != cache.shape[1]
    # Slot 0 (where invalid slots would point if clamped and read): NaN rope, infinite scales.
    cache[0, 448:576] = 0xFF
    cache[0, 3 * 576:3 * 576 + 7] = 0xFF
    slots = torch.tensor([-1, 5, -1, 11, 1, -7], dtype=torch.int32)
    out = gd_triton.gather_dequant_triton(cache, slots, 3)
    assert torch.equal(bits(out), bits(expected_rows(exact, slots)))
    assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(out[5]) == 0


@needs_interpreter
def test_dispatch_selects_triton_under_interpreter():
    cache, exact = build_cache(6, page_size=2, seed=6)
    slots = torch.tensor([1, 5, -1], dtype=torch.int32)
    assert gather_dequant.select("cpu", (cache, slots, 2)).provider == "triton"
    out = gather_dequant(cache, slots, 2)  # through torch.ops.fusegraph.gather_dequant
    assert torch.equal(bits(out), bits(expected_rows(exact, slots)))


def test_supports_args_reasons():
    cache, _ = build_cache(4, page_size=2, seed=7)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    check = gd_triton._supports
    assert check(cache, slots, 2) is None
    assert "uint8" in check(cache.view(torch.int8), slots, 2)
    assert "needs" in check(cache, slots, 4)          # a page too small for 4 tokens
    assert "int32 or int64" in check(cache, slots.float(), 2)
    assert "positive" in check(cache, slots, 0)


def test_buckets_grow_with_n():
    sizes = [1, 256, 257, 8192, 8193, 10**6]
    rows = [gd_triton.config_for(n).rows for n in sizes]
    assert rows == sorted(rows) and rows[0] < rows[-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("native", [False, True], ids=["int-decode", "native-decode"])
@pytest.mark.parametrize("n,page_size", [(1, 64), (77, 64), (5000, 64), (70000, 64), (5000, 48)])
def test_gpu_triton_bitwise(monkeypatch, native, n, page_size):
    if native and _target() not in ("sm90", "sm100"):
        pytest.skip("Triton's native e4m3 conversion needs sm89+ NVIDIA")
    poison(monkeypatch)
    monkeypatch.setattr(triton_fp8, "FORCE_NATIVE_FP8", native)
    cache, exact = build_cache(512, page_size=page_size, seed=11)   # 48: pages not a power of two
    gen = torch.Generator().manual_seed(n)
    slots = torch.randint(-1, 512, (n,), generator=gen, dtype=torch.int32)
    out = gather_dequant(cache.cuda(), slots.cuda(), page_size)
    assert gather_dequant.select(_target(), (cache.cuda(), slots.cuda(), page_size)).provider == "triton"
    assert torch.equal(bits(out.cpu()), bits(expected_rows(exact, slots)))
    ref = gather_dequant.reference(cache.cuda(), slots.cuda(), page_size)
    assert torch.equal(bits(out), bits(ref))


def _target() -> str:
    from fusegraph import targets
    return targets.detect()
