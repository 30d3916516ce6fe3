"""KV cache stores (spec 4.3 / 4.4): set_mla_kv_buffer and the DSV4 paged FP8 layout, with raw byte checks."""
import pytest
import torch

from fusegraph.models.kv_cache import (
    BF16KVCache, PagedFP8KVCache, bytes_per_page, gather_fp8_paged, set_mla_kv_buffer, store_fp8_paged,
)
from fusegraph.models.quant import fp8_quant_dequant


def rows(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k_nope = (torch.randn(T, 448, generator=g) * torch.logspace(-2, 1, 7).repeat_interleave(64)).to(torch.bfloat16)
    k_rope = torch.randn(T, 64, generator=g).to(torch.bfloat16)
    return k_nope, k_rope


@pytest.mark.parametrize("P,expected", [(1, 1152), (2, 1728), (16, 9792), (64, 37440), (72, 42048)])
def test_bytes_per_page(P, expected):
    assert bytes_per_page(P) == expected
    assert bytes_per_page(P) % 576 == 0 and bytes_per_page(P) >= P * 584


@pytest.mark.parametrize("P", [1, 3, 16, 64])
def test_paged_store_byte_offsets(P):
    T = 11
    k_nope, k_rope = rows(T, seed=P)
    num_pages = (40 + P - 1) // P
    cache = torch.full((num_pages, bytes_per_page(P)), 0xFF, dtype=torch.uint8)
    loc = torch.randperm(40, generator=torch.Generator().manual_seed(P))[:T]
    store_fp8_paged(cache, loc, k_nope, k_rope, P, 1e-4)
    flat = cache.flatten()
    tiles = k_nope.float().unflatten(-1, (7, 64))
    exponent = torch.ceil(torch.log2(tiles.abs().amax(-1).clamp(min=1e-4) / 448))
    for i, slot in enumerate(loc.tolist()):
        page, s = divmod(slot, P)
        base = page * bytes_per_page(P)
        nope = flat[base + s * 576 : base + s * 576 + 448]
        rope = flat[base + s * 576 + 448 : base + s * 576 + 576]
        scales = flat[base + P * 576 + s * 8 : base + P * 576 + s * 8 + 8]
        assert torch.equal(scales[:7], (exponent[i] + 127).to(torch.uint8))
        assert scales[7] == 0
        # little-endian bf16 rope values: low byte first
        bits = k_rope[i].view(torch.int16).int() & 0xFFFF
        assert torch.equal(rope[0::2].int(), bits & 0xFF)
        assert torch.equal(rope[1::2].int(), bits >> 8)
        deq = nope.view(torch.float8_e4m3fn).float().unflatten(-1, (7, 64)) * torch.exp2(exponent[i]).unsqueeze(-1)
        assert torch.equal(deq.flatten().to(torch.bfloat16), fp8_quant_dequant(k_nope[i : i + 1], 1e-4)[0])
    # untouched slots keep their bytes
    written = torch.zeros_like(cache, dtype=torch.bool)
    for slot in loc.tolist():
        page, s = divmod(slot, P)
        written[page, s * 576 : s * 576 + 576] = True
        written[page, P * 576 + s * 8 : P * 576 + s * 8 + 8] = True
    assert (cache[~written] == 0xFF).all()


def test_paged_store_skips_negative_loc():
    k_nope, k_rope = rows(4)
    cache = torch.full((2, bytes_per_page(4)), 0xAB, dtype=torch.uint8)
    store_fp8_paged(cache, torch.tensor([5, -1, 0, -1]), k_nope, k_rope, 4, 1e-4)
    got = gather_fp8_paged(cache, torch.tensor([5, 0]), 4)
    want = torch.cat([fp8_quant_dequant(k_nope, 1e-4), k_rope], -1)[[0, 2]]
    assert torch.equal(got, want)
    # only slots 5 and 0 were written
    untouched = cache.clone()
    for slot in (5, 0):
        page, s = divmod(slot, 4)
        untouched[page, s * 576 : s * 576 + 576] = 0xAB
        untouched[page, 4 * 576 + s * 8 : 4 * 576 + s * 8 + 8] = 0xAB
    assert (untouched == 0xAB).all()


@pytest.mark.parametrize("T", [0, 1, 37])
def test_store_then_gather_equals_quant_dequant_simulation(T):
    k_nope, k_rope = rows(T, seed=T)
    cache = PagedFP8KVCache(64, page_size=16, quant_eps=1e-4)
    loc = torch.randperm(64)[:T]
    cache.store(loc, k_nope, k_rope)
    got = cache.read(loc)
    assert got.dtype == torch.bfloat16 and got.shape == (T, 512)
    assert torch.equal(got[:, :448], fp8_quant_dequant(k_nope, 1e-4))
    assert torch.equal(got[:, 448:], k_rope)
    # any index shape: [a, b] slots -> [a, b, 512]
    if T:
        grid = loc[: (T // 2) * 2].view(2, -1)
        assert torch.equal(cache.read(grid), got[: (T // 2) * 2].view(2, -1, 512))
    # storing already-simulated values is idempotent (the model stores simulated k_nope)
    cache.store(loc, got[:, :448], got[:, 448:])
    assert torch.equal(cache.read(loc), got)


def test_set_mla_kv_buffer_and_bf16_cache():
    k_nope, k_rope = rows(5)
    buf = torch.full((9, 512), float("nan"), dtype=torch.bfloat16)
    loc = torch.tensor([8, 0, 3, 4, 1])
    set_mla_kv_buffer(buf, loc, k_nope, k_rope)
    assert torch.equal(buf[loc], torch.cat([k_nope, k_rope], -1))
    assert buf[[2, 5, 6, 7]].isnan().all()
    cache = BF16KVCache(9)
    cache.store(loc, k_nope, k_rope)
    assert torch.equal(cache.read(loc), torch.cat([k_nope, k_rope], -1))
