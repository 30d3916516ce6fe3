"""store_fp8_paged and kv_norm_rope_quant_store: FP8 paged-cache writers against their references.

Every case runs the provider on two caches poisoned with different bytes (0xAB and 0x54): bytes
the op must not touch keep their poison, and every byte it must write comes out the same in both
runs (so no byte of a written row or scale slot was skipped). Written bytes are compared with the
reference's, and reading the cache back must give the quant-dequant reference values.
"""
import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _fp8
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.kv_norm_rope_quant import triton as kt

ON_GPU = torch.cuda.is_available() and not tc.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernel = pytest.mark.skipif(not (tc.interpreting() or ON_GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
EPS, QUANT_EPS = 1e-6, 1e-4
STORE = ops.get("store_fp8_paged")
FUSED = ops.get("kv_norm_rope_quant_store")
KV_QUANT = ops.get("kv_norm_rope_quant")
POISONS = (0xAB, 0x54)


def make_rows(T, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    nope = torch.randn(T, 448, generator=g) * torch.logspace(-3, 1, 448)[torch.randperm(448, generator=g)]
    rope = torch.randn(T, 64, generator=g)
    return nope.to(torch.bfloat16).to(device), rope.to(torch.bfloat16).to(device)


def make_kv(T, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(T, 512, generator=g) * torch.logspace(-2, 1, 512)[torch.randperm(512, generator=g)]
    angle = torch.rand(T, 32, generator=g) * 6.3
    weight = torch.rand(512, generator=g) + 0.5
    return [t.to(device) for t in (kv.to(torch.bfloat16), weight, angle.cos(), angle.sin())]


def make_loc(T, num_slots, dtype, invalid=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randperm(num_slots, generator=g)[:T].to(dtype)
    for i in invalid:
        loc[i] = -1
    return loc.to(DEVICE)


def written_mask(num_pages, page_size, loc):
    """Bytes of the cache that the op writes for slots ``loc`` (negative slots write nothing)."""
    layout = _fp8.PagedLayout(page_size)
    mask = torch.zeros(num_pages, layout.bytes_per_page, dtype=torch.bool)
    for s in loc.cpu().tolist():
        if s >= 0:
            page, row = divmod(s, page_size)
            mask[page, row * 576:(row + 1) * 576] = True
            mask[page, layout.scales_offset + row * 8:layout.scales_offset + row * 8 + 8] = True
    return mask


def run_poisoned(fn, num_pages, page_size):
    """Run ``fn(cache)`` on caches poisoned with each byte of POISONS; return the caches (on CPU)."""
    caches = []
    for poison in POISONS:
        cache = torch.full((num_pages, _fp8.PagedLayout(page_size).bytes_per_page), poison, dtype=torch.uint8,
                           device=DEVICE)
        fn(cache)
        caches.append(cache.cpu())
    return caches


def check_caches(caches, expected, mask, loc, page_size, expected_values):
    """Untouched bytes keep their poison; touched bytes match in both runs and the reference; dequant."""
    first, second = caches
    assert bool((first[~mask] == POISONS[0]).all()) and bool((second[~mask] == POISONS[1]).all()), \
        "bytes outside the written slots changed"
    assert torch.equal(first[mask], second[mask]), "some byte of a written slot was not written"
    valid = loc.cpu() >= 0
    got = _fp8.dequantize_paged(first, loc.cpu()[valid], page_size)
    if tc.interpreting():
        assert torch.equal(first, expected), "cache bytes differ from the reference"
        assert torch.equal(got, expected_values[valid])
    else:  # a GPU norm may round a value differently: one e4m3 (or bf16) step on a few
        expected = expected_values[valid].float()
        diff = (got.float() - expected).abs()
        row_rms = expected.pow(2).mean(-1, keepdim=True).sqrt()
        assert bool((diff <= (expected.abs() + row_rms) * 2**-3).all()), f"max diff {diff.max().item()}"
        assert diff.numel() == 0 or (diff > 0).float().mean().item() <= 1e-2
    layout = _fp8.PagedLayout(page_size)
    for s in loc.cpu()[valid].tolist():  # the pad byte after the 7 scales is zero
        page, row = divmod(s, page_size)
        assert first[page, layout.scales_offset + row * 8 + 7] == 0


# -- store_fp8_paged ----------------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("T,page_size,loc_dtype,invalid,rows", [
    (1, 1, torch.int32, (), 1),
    (5, 4, torch.int64, (2,), 1),
    (6, 64, torch.int32, (0, 5), 4),
    (3, 3, torch.int64, (0, 1, 2), 1),
])
def test_store_matches_reference(T, page_size, loc_dtype, invalid, rows, monkeypatch):
    monkeypatch.setattr(kt, "rows_per_program", lambda _: rows)
    num_pages = max(2, -(-3 * T // page_size))
    nope, rope = make_rows(T, seed=T)
    loc = make_loc(T, num_pages * page_size, loc_dtype, invalid, seed=page_size)
    caches = run_poisoned(lambda c: STORE.providers["triton"].impl(c, loc, nope, rope, page_size, QUANT_EPS),
                          num_pages, page_size)
    expected = torch.full_like(caches[0], POISONS[0])
    STORE.reference(expected, loc.cpu(), nope.cpu(), rope.cpu(), page_size, QUANT_EPS)
    q, e = _fp8.quantize_tiles(nope.cpu(), QUANT_EPS)
    values = torch.cat([_fp8.dequantize_tiles(q, e).to(torch.bfloat16), rope.cpu()], -1)
    check_caches(caches, expected, written_mask(num_pages, page_size, loc), loc, page_size, values)


@needs_kernel
def test_store_empty_and_dispatch():
    nope, rope = make_rows(0)
    loc = torch.empty(0, dtype=torch.int64, device=DEVICE)
    cache = torch.full((2, _fp8.PagedLayout(2).bytes_per_page), 7, dtype=torch.uint8, device=DEVICE)
    STORE.providers["triton"].impl(cache, loc, nope, rope, 2, QUANT_EPS)
    assert bool((cache == 7).all())
    nope, rope = make_rows(2, seed=9)
    loc = torch.tensor([3, 0], dtype=torch.int32, device=DEVICE)
    args = (cache, loc, nope, rope, 2, QUANT_EPS)
    cuda = STORE.providers["cuda"]  # Triton, unless the CUDA writer's measured table takes 2 rows here
    takes = cuda.why_not(targets.of_device(cache.device), args, {}) is None
    expected = "cuda" if takes and cuda.priority > STORE.providers["triton"].priority else "triton"
    assert STORE.select(targets.of_device(cache.device), args).provider == expected
    torch.ops.fusegraph.store_fp8_paged(*args)
    expected = torch.full_like(cache.cpu(), 7)
    STORE.reference(expected, loc.cpu(), nope.cpu(), rope.cpu(), 2, QUANT_EPS)
    if tc.interpreting():
        assert torch.equal(cache.cpu(), expected)
    assert torch.equal(cache.cpu()[1], expected[1])  # page 1 holds slot 3's rope + scales: bytes too


def test_store_supports_args_rejections():
    nope, rope = make_rows(2, device="cpu")
    loc = torch.tensor([0, 1])
    cache = torch.zeros(2, _fp8.PagedLayout(4).bytes_per_page, dtype=torch.uint8)
    gate = STORE.providers["triton"].supports_args
    assert gate(cache, loc, nope, rope, 4, QUANT_EPS) is None
    assert "k_nope must be bf16" in gate(cache, loc, nope.float(), rope, 4, QUANT_EPS)
    assert "k_rope" in gate(cache, loc, nope, rope[:, :32], 4, QUANT_EPS)
    assert "do not fit" in gate(cache, loc, nope, rope, 8, QUANT_EPS)
    assert "uint8" in gate(cache.view(torch.int8), loc, nope, rope, 4, QUANT_EPS)
    wide = torch.zeros(2, cache.shape[1] + 8, dtype=torch.uint8)
    assert "16-byte" in gate(wide[:, 8:], loc, nope, rope, 4, QUANT_EPS)
    assert "loc" in gate(cache, loc.float(), nope, rope, 4, QUANT_EPS)
    assert "quant_eps" in gate(cache, loc, nope, rope, 4, 1e-40)
    with pytest.raises(ValueError):
        STORE.reference(cache, loc, nope, rope, 8, QUANT_EPS)


# -- kv_norm_rope_quant_store ---------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("T,page_size,loc_dtype,invalid,rows", [
    (1, 2, torch.int64, (), 1),
    (5, 4, torch.int32, (1, 4), 1),
    (7, 64, torch.int64, (3,), 4),
])
def test_fused_store_matches_reference(T, page_size, loc_dtype, invalid, rows, monkeypatch):
    monkeypatch.setattr(kt, "rows_per_program", lambda _: rows)
    check_fused_store(T, max(2, -(-2 * T // page_size)), page_size, loc_dtype, invalid)


def check_fused_store(T, num_pages, page_size, loc_dtype, invalid):
    """The Triton fused store on poisoned caches against the reference; store-then-dequant equals the
    quant-dequant op."""
    kv, weight, cos, sin = make_kv(T, seed=T)
    loc = make_loc(T, num_pages * page_size, loc_dtype, invalid, seed=T)
    caches = run_poisoned(
        lambda c: FUSED.providers["triton"].impl(kv, weight, cos, sin, EPS, QUANT_EPS, c, loc, page_size),
        num_pages, page_size)
    expected = torch.full_like(caches[0], POISONS[0])
    FUSED.reference(kv.cpu(), weight.cpu(), cos.cpu(), sin.cpu(), EPS, QUANT_EPS, expected, loc.cpu(), page_size)
    values = torch.cat(KV_QUANT.reference(kv.cpu(), weight.cpu(), cos.cpu(), sin.cpu(), EPS, QUANT_EPS), -1)
    check_caches(caches, expected, written_mask(num_pages, page_size, loc), loc, page_size, values)


def test_fused_reference_is_the_composition():
    """The reference equals store_fp8_paged(kv_norm_rope_quant(...)) byte for byte, incl. re-quantized scales."""
    kv, weight, cos, sin = make_kv(6, device="cpu", seed=11)
    loc = torch.tensor([5, 0, -1, 9, 2, 7])
    cache_a = torch.full((3, _fp8.PagedLayout(4).bytes_per_page), 0xAB, dtype=torch.uint8)
    cache_b = cache_a.clone()
    FUSED.reference(kv, weight, cos, sin, EPS, QUANT_EPS, cache_a, loc, 4)
    STORE.reference(cache_b, loc, *KV_QUANT.reference(kv, weight, cos, sin, EPS, QUANT_EPS), 4, QUANT_EPS)
    assert torch.equal(cache_a, cache_b)


@needs_kernel
def test_fused_store_dispatch_and_empty():
    kv, weight, cos, sin = make_kv(0)
    loc = torch.empty(0, dtype=torch.int32, device=DEVICE)
    cache = torch.full((1, _fp8.PagedLayout(1).bytes_per_page), 3, dtype=torch.uint8, device=DEVICE)
    torch.ops.fusegraph.kv_norm_rope_quant_store(kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc, 1)
    assert bool((cache == 3).all())
    kv, weight, cos, sin = make_kv(1, seed=2)
    loc = torch.tensor([0], dtype=torch.int32, device=DEVICE)
    args = (kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc, 1)
    assert FUSED.select(targets.of_device(kv.device), args).provider == "triton"
    torch.ops.fusegraph.kv_norm_rope_quant_store(*args)
    values = torch.cat(KV_QUANT.reference(kv.cpu(), weight.cpu(), cos.cpu(), sin.cpu(), EPS, QUANT_EPS), -1)
    got = _fp8.dequantize_paged(cache.cpu(), loc.cpu(), 1)
    assert (got.float() - values.float()).abs().max().item() <= values.float().abs().max().item() * 2**-3
    if tc.interpreting():
        assert torch.equal(got, values)


def test_fused_supports_args_rejections():
    kv, weight, cos, sin = make_kv(2, device="cpu")
    loc = torch.tensor([0, 1])
    cache = torch.zeros(1, _fp8.PagedLayout(2).bytes_per_page, dtype=torch.uint8)
    gate = FUSED.providers["triton"].supports_args
    assert gate(kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc, 2) is None
    assert "kv must be bf16" in gate(kv.half(), weight, cos, sin, EPS, QUANT_EPS, cache, loc, 2)
    assert "loc has 1 rows" in gate(kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc[:1], 2)
    assert "do not fit" in gate(kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc, 3)


def test_mutating_references_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        cache = torch.empty(2, _fp8.PagedLayout(2).bytes_per_page, dtype=torch.uint8)
        loc = torch.empty(3, dtype=torch.int64)
        torch.ops.fusegraph.store_fp8_paged(cache, loc, torch.empty(3, 448, dtype=torch.bfloat16),
                                            torch.empty(3, 64, dtype=torch.bfloat16), 2, QUANT_EPS)
        torch.ops.fusegraph.kv_norm_rope_quant_store(torch.empty(3, 512, dtype=torch.bfloat16), torch.empty(512),
                                                     torch.empty(3, 32), torch.empty(3, 32), EPS, QUANT_EPS,
                                                     cache, loc, 2)


# -- GPU, real sizes ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("T,page_size", [(1, 64), (512, 64), (16384, 64), (4097, 256)])
def test_gpu_fused_store_real_sizes(T, page_size):
    check_fused_store(T, -(-2 * T // page_size) + 1, page_size, torch.int64, invalid=(0,))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
def test_gpu_store_beyond_2gb():
    """Slots whose byte offsets exceed 2^31 (int64 address math), next to untouched pages."""
    page_size = 64
    bpp = _fp8.PagedLayout(page_size).bytes_per_page
    num_pages = (2**31 + 2**27) // bpp
    cache = torch.full((num_pages, bpp), 0xAB, dtype=torch.uint8, device="cuda")
    nope, rope = make_rows(4, seed=1)
    last = num_pages * page_size - 1
    loc = torch.tensor([last, last - page_size - 3, -1, 5], dtype=torch.int32, device="cuda")
    STORE.providers["triton"].impl(cache, loc, nope, rope, page_size, QUANT_EPS)
    got = _fp8.dequantize_paged(cache, loc[[0, 1, 3]].long(), page_size).cpu()
    q, e = _fp8.quantize_tiles(nope.cpu()[[0, 1, 3]], QUANT_EPS)
    expected = torch.cat([_fp8.dequantize_tiles(q, e).to(torch.bfloat16), rope.cpu()[[0, 1, 3]]], -1)
    assert torch.equal(got, expected)
    assert bool((cache[num_pages // 2] == 0xAB).all())


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gpu_cuda_graph_capture(impl):
    """Reference (no host sync for the padding rows) and kernel (PDL launch) replay from a CUDA graph."""
    T, page_size = 33, 64
    kv, weight, cos, sin = make_kv(T, seed=5)
    loc = make_loc(T, 4 * page_size, torch.int64, invalid=(0, 7), seed=5)
    cache = torch.full((4, _fp8.PagedLayout(page_size).bytes_per_page), 0xAB, dtype=torch.uint8, device=DEVICE)
    fn = FUSED.providers[impl].impl
    args = (kv, weight, cos, sin, EPS, QUANT_EPS, cache, loc, page_size)
    fn(*args)  # warm-up (compilation) outside the capture
    cache.fill_(0xAB)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    expected = torch.full_like(cache.cpu(), 0xAB)
    FUSED.reference(kv.cpu(), weight.cpu(), cos.cpu(), sin.cpu(), EPS, QUANT_EPS, expected, loc.cpu(), page_size)
    mask = written_mask(4, page_size, loc)
    assert bool((cache.cpu()[~mask] == 0xAB).all())
    got = _fp8.dequantize_paged(cache.cpu(), loc.cpu()[loc.cpu() >= 0], page_size).float()
    want = _fp8.dequantize_paged(expected, loc.cpu()[loc.cpu() >= 0], page_size).float()
    assert bool(((got - want).abs() <= (want.abs() + want.pow(2).mean(-1, keepdim=True).sqrt()) * 2**-3).all())
