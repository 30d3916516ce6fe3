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


# -- padding rows, and a store every torch.compile backend can compile ----------------------------
def _store_oracle(cache, loc, k_nope, k_rope, P):
    """The paged store row by row, in plain Python slicing (the spec's byte layout)."""
    tiles = k_nope.float().unflatten(-1, (7, 64))
    exponent = torch.ceil(torch.log2(tiles.abs().amax(-1, keepdim=True).clamp(min=1e-4) / 448))
    q = (tiles / torch.exp2(exponent)).clamp(-448, 448).to(torch.float8_e4m3fn).flatten(-2).view(torch.uint8)
    for i, slot in enumerate(loc.tolist()):
        if slot < 0:
            continue
        page, s = divmod(slot, P)
        cache[page, s * 576 : s * 576 + 448] = q[i]
        cache[page, s * 576 + 448 : s * 576 + 576] = k_rope[i].contiguous().view(torch.uint8)
        cache[page, P * 576 + s * 8 : P * 576 + s * 8 + 7] = (exponent[i, :, 0] + 127).to(torch.uint8)
        cache[page, P * 576 + s * 8 + 7] = 0


PADDED_LOCS = {
    "slot0_written_between_padding": [-1, 5, 0, -7, 9, -1],
    "slot0_not_written": [-1, 5, 3, -2, 9, 6],
    "all_padding": [-1, -1, -5],
    "padding_first_and_last": [-3, 0, -1],
    "empty": [],
}


@pytest.mark.parametrize("case", sorted(PADDED_LOCS))
def test_paged_store_padding_rows_write_nothing(case):
    """Padding rows (loc < 0) are sent to slot 0: slot 0 must end with its valid row's bytes when
    one is stored there, else keep its own; nothing else changes. Byte-exact against a row loop."""
    loc = torch.tensor(PADDED_LOCS[case], dtype=torch.long)
    k_nope, k_rope = rows(loc.numel(), seed=len(case))
    g = torch.Generator().manual_seed(7)
    cache = torch.randint(0, 256, (3, bytes_per_page(4)), generator=g, dtype=torch.uint8)
    want = cache.clone()
    _store_oracle(want, loc, k_nope, k_rope, 4)
    store_fp8_paged(cache, loc, k_nope, k_rope, 4, 1e-4)
    assert torch.equal(cache, want)


# Triton has no atomic add for these: Inductor cannot compile index_put_(accumulate=True) on them.
NO_TRITON_ATOMIC_ADD = (torch.uint8, torch.int8, torch.int16, torch.bool, torch.float8_e4m3fn)


def test_tiny_model_has_no_accumulating_scatter_triton_cannot_compile():
    """The reference model's in-place writes compile with Inductor on the GPU: no accumulating
    index_put_ on a dtype without atomic add (the paged store once used one on the uint8 cache)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fusegraph.models.presets import build_model, example_inputs

    class Writes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad, self.index_puts = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket in (torch.ops.aten.index_put_, torch.ops.aten.index_put,
                                       torch.ops.aten._index_put_impl_):
                self.index_puts += 1
                accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
                if accumulate and args[0].dtype in NO_TRITON_ATOMIC_ADD:
                    self.bad.append((str(func), args[0].dtype))
            return func(*args, **kwargs)

    model = build_model("tiny", n_layers=1, compress_ratios=(4,))  # window, compressed and indexer caches
    inputs = example_inputs(model, 64)
    mode = Writes()
    with torch.no_grad(), mode:
        model(*inputs)
    assert mode.index_puts >= 5 and not mode.bad, mode.bad


def _store_under_compile(device: str):
    g = torch.Generator().manual_seed(3)
    P = 4
    fn = torch.compile(store_fp8_paged, backend="inductor", dynamic=False, fullgraph=True)
    for locs in ([-1, 5, 0, -7, 9, -1], [-1, 5, 3, -2, 9, 6]):
        loc = torch.tensor(locs, device=device)
        k_nope, k_rope = (t.to(device) for t in rows(loc.numel(), seed=locs[2]))
        cache = torch.randint(0, 256, (3, bytes_per_page(P)), generator=g, dtype=torch.uint8).to(device)
        want = cache.clone()
        store_fp8_paged(want, loc, k_nope, k_rope, P, 1e-4)
        fn(cache, loc, k_nope, k_rope, P, 1e-4)
        assert torch.equal(cache, want), f"loc {locs}: {(cache != want).sum().item()} bytes differ from eager"


@pytest.mark.slow
def test_inductor_compiles_the_paged_store_byte_exact_cpu():
    """torch.compile (Inductor, C++ backend) of the store writes the eager bytes, padding included."""
    try:
        _store_under_compile("cpu")
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inductor_compiles_the_paged_store_byte_exact_cuda():
    """The same on the GPU: Inductor's Triton code (the uint8 accumulate spelling failed here with
    'atomic_add does not support uint8')."""
    try:
        _store_under_compile("cuda")
    finally:
        torch._dynamo.reset()
