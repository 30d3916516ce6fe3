"""CUDA KV writers (set_mla_kv_buffer, store_fp8_paged): gates, JIT cache, compile check, GPU values.

CPU: the providers' availability reasons, the alignment gates (with the reason a row falls back to
Triton), the copy-variant switch, the build cache key, and, when nvcc is on the machine, a
compile-only build of both ``.cu`` files for sm_90a (bulk copies, grid-dependency control present
in the PTX) and sm_80 (compiled out).

GPU (``-m gpu``): both variants (vector copy, bulk copy) against the torch reference on poisoned
buffers: bytes compared exactly (the scatter moves bits; the FP8 store quantizes bit-identically to
the reference), untouched bytes keep their poison, padding slots write nothing; T = 0, 1, sizes
not multiple of the warps per CTA, strided views, int32/int64 slots, PDL on and off, CUDA-graph
capture, and dispatch through ``torch.ops``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _fp8
from fusegraph.kernels.set_mla_kv_buffer import cuda as set_mla_cuda
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

SET_MLA, STORE = ops.get("set_mla_kv_buffer"), ops.get("store_fp8_paged")
QUANT_EPS = 1e-4
CU_FILES = (set_mla_cuda.SPEC.cuda_file, store_cuda.SPEC.cuda_file)


def meta(*tensors):
    return tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in tensors)


def set_mla_args(T=4, nope=512, rope=64, dtype=torch.bfloat16, S=16, device="cpu"):
    buf = torch.zeros(S, nope + rope, dtype=dtype, device=device)
    return (buf, torch.arange(T, device=device), torch.zeros(T, nope, dtype=dtype, device=device),
            torch.zeros(T, rope, dtype=dtype, device=device))


def store_args(T=3, page_size=4, device="cpu"):
    cache = torch.zeros(4, _fp8.PagedLayout(page_size).bytes_per_page, dtype=torch.uint8, device=device)
    return (cache, torch.arange(T, device=device), torch.zeros(T, 448, dtype=torch.bfloat16, device=device),
            torch.zeros(T, 64, dtype=torch.bfloat16, device=device), page_size, QUANT_EPS)


# -- availability, registration ------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU machine's reason")
def test_no_device_reason():
    assert set_mla_cuda.available() == "no CUDA device"
    assert store_cuda.available() == "no CUDA device"
    assert SET_MLA.providers["cuda"].why_not("sm90", meta(*set_mla_args()), {}) == "no CUDA device"


def test_nvcc_missing_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(jit, "nvcc_path", lambda: None)
    assert jit.cuda_missing() == "nvcc not found"
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "ROCm" in jit.cuda_missing()


@pytest.mark.parametrize("op,module", [(SET_MLA, set_mla_cuda), (STORE, store_cuda)])
def test_registered_below_triton_until_measured(op, module):
    provider = op.providers["cuda"]
    assert provider.targets == frozenset({"sm90", "sm100"})
    assert (provider.priority > op.providers["triton"].priority) == module.MEASURED_FASTER
    assert "does not run on sm80" in provider.why_not("sm80", (), {})


# -- set_mla_kv_buffer gates ---------------------------------------------------------------------------
def test_set_mla_gate_accepts_dsv4_and_fp8_rows():
    gate = set_mla_cuda._supports
    assert gate(*set_mla_args()) is None                                    # 1024 + 128 bytes
    assert gate(*set_mla_args(nope=528, rope=128, dtype=torch.uint8)) is None  # FP8 NSA row
    assert gate(*set_mla_args(nope=6, rope=2)) is None                      # 12 + 4 bytes
    assert gate(*set_mla_args(nope=8, rope=0, dtype=torch.float32)) is None  # no rope part


@pytest.mark.parametrize("kwargs,reason", [
    ({"nope": 7, "rope": 3}, "not a multiple of 16"),                     # 20-byte row
    ({"nope": 13, "rope": 3, "dtype": torch.uint8}, "not multiples of 4"),  # parts of 13 and 3 bytes
    ({"nope": 4096, "rope": 16, "dtype": torch.uint8}, "staging slot"),
])
def test_set_mla_gate_rejects_widths(kwargs, reason):
    assert reason in set_mla_cuda._supports(*set_mla_args(**kwargs))


def test_set_mla_gate_rejects_layouts():
    gate = set_mla_cuda._supports
    buf, loc, nope, rope = set_mla_args()
    wide = torch.zeros(16, 578, dtype=torch.bfloat16)
    assert "kv_buffer rows" in gate(wide[:, 1:577], loc, nope, rope)           # 1156-byte row stride
    shifted = torch.zeros(4, 513, dtype=torch.bfloat16)
    assert "k_nope rows" in gate(buf, loc, shifted[:, 1:], rope)                # 2-byte offset
    assert "contiguous" in gate(buf, loc, torch.zeros(4, 1024, dtype=torch.bfloat16)[:, ::2], rope)
    assert "dtype" in gate(buf, loc, nope.float(), rope)
    assert "loc" in gate(buf, loc.float(), nope, rope)


def test_set_mla_vector_width():
    assert set_mla_cuda.vector_bytes(*set_mla_args()[0:1], *set_mla_args()[2:]) == 16
    buf, _, nope, rope = set_mla_args(nope=6, rope=2)  # 12 + 4 bytes: 4-byte vectors
    assert set_mla_cuda.vector_bytes(buf, nope, rope) == 4
    buf, _, nope, rope = set_mla_args(nope=12, rope=4)  # 24 + 8 bytes, 32-byte rows: 8-byte vectors
    assert set_mla_cuda.vector_bytes(buf, nope, rope) == 8


@pytest.mark.parametrize("module", [set_mla_cuda, store_cuda])
def test_copy_variant_switch(module, monkeypatch):
    monkeypatch.delenv(module.COPY_ENV, raising=False)
    monkeypatch.setattr(module, "BULK_MIN_ROWS", None)
    assert module.copy_variant(1 << 20) == "vector"
    monkeypatch.setattr(module, "BULK_MIN_ROWS", 100)
    assert module.copy_variant(99) == "vector" and module.copy_variant(100) == "bulk"
    monkeypatch.setenv(module.COPY_ENV, "vector")
    assert module.copy_variant(1000) == "vector"
    monkeypatch.setenv(module.COPY_ENV, "bulk")
    assert module.copy_variant(1) == "bulk"
    assert module.warps_per_cta(1024) == 4 and module.warps_per_cta(1025) == 8


# -- store_fp8_paged gates -----------------------------------------------------------------------------
def test_store_gate(monkeypatch):
    gate = store_cuda._supports
    cache, loc, nope, rope, page_size, eps = store_args()
    assert f"below {store_cuda.MIN_ROWS} rows" in gate(cache, loc, nope, rope, page_size, eps)
    monkeypatch.setattr(store_cuda, "MIN_ROWS", 0)  # the layout rules, on a few rows
    assert gate(cache, loc, nope, rope, page_size, eps) is None
    kv = torch.zeros(3, 512, dtype=torch.bfloat16)  # nope/rope as views of one kv row: aligned
    assert gate(cache, loc, kv[:, :448], kv[:, 448:], page_size, eps) is None
    shifted = torch.zeros(3, 449, dtype=torch.bfloat16)
    assert "k_nope rows do not start on 16-byte" in gate(cache, loc, shifted[:, 1:], rope, page_size, eps)
    assert "bf16" in gate(cache, loc, nope, rope.float(), page_size, eps)
    wide = torch.zeros(4, cache.shape[1] + 8, dtype=torch.uint8)
    assert "16-byte" in gate(wide[:, 8:], loc, nope, rope, page_size, eps)
    assert "quant_eps" in gate(cache, loc, nope, rope, page_size, 1e-40)
    assert "page_size" in gate(cache, loc, nope, rope, 0, eps)


# -- JIT cache ------------------------------------------------------------------------------------------
def test_build_dir_keyed_by_source_and_arch(tmp_path, monkeypatch):
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    cu = tmp_path / "k.cu"
    cu.write_text("__global__ void k() {}\n")
    spec = jit.ExtensionSpec("k", cu, "// binding", ("k",))
    hopper, ampere = jit.build_dir(spec, 9, 0), jit.build_dir(spec, 8, 0)
    assert hopper.parent == tmp_path and hopper.name.endswith("-sm90a") and ampere.name.endswith("-sm80")
    assert hopper.name.split("-")[0] != ampere.name.split("-")[0]  # the flags differ, so does the hash
    assert jit.build_dir(spec, 9, 0) == hopper                        # stable
    cu.write_text("__global__ void k() { }\n")
    assert jit.build_dir(spec, 9, 0) != hopper                        # any source change rebuilds
    assert jit.gencode_flags(9, 0) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert jit.gencode_flags(10, 0) == ["-gencode=arch=compute_100,code=sm_100"]


def test_default_cache_root(monkeypatch):
    monkeypatch.delenv(jit.CACHE_ENV, raising=False)
    assert jit.cache_root() == Path.home() / ".cache" / "fusegraph" / "cuda"


# -- compile-only check (CI, when nvcc is on the machine) ------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cu_files_compile_for_sm90a_and_sm80(tmp_path):
    """nvcc alone builds each .cu for sm_90a and sm_80 (ptxas included); --keep leaves the PTX to inspect."""
    jobs = []
    for cu in CU_FILES:
        keep = tmp_path / cu.stem
        keep.mkdir()
        jobs.append((cu, keep, subprocess.Popen(
            ["nvcc", "-c", "-O3", "-std=c++17", "--keep", "--keep-dir", str(keep),
             "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80",
             str(cu), "-o", str(keep / "out.o")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))  # the two files build in parallel
    hopper_only = ("cp.async.bulk.global.shared::cta.bulk_group", "fence.proxy.async.shared::cta",
                   "cp.async.bulk.wait_group.read", "cp.async.bulk.wait_group", "griddepcontrol.wait",
                   "griddepcontrol.launch_dependents")
    for cu, keep, proc in jobs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"nvcc failed on {cu.name}:\n{log}"
        assert (keep / "out.o").stat().st_size > 0
        sm90 = (keep / f"{cu.stem}.compute_90a.ptx").read_text()
        sm80 = (keep / f"{cu.stem}.compute_80.ptx").read_text()
        for instruction in hopper_only:
            assert instruction in sm90, f"{cu.name}: {instruction} missing from the sm_90a PTX"
        assert "cp.async.bulk" not in sm80 and "griddepcontrol" not in sm80, f"{cu.name}: Hopper code in sm_80"


# =======================================================================================================
# GPU
# =======================================================================================================
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def built():
    """Build both extensions once (skip without nvcc / before sm90; a failed build fails)."""
    reason = jit.cuda_missing()
    if reason:
        pytest.skip(reason)
    device = torch.device("cuda")
    if jit.arch_of(device)[0] < 9:
        pytest.skip("the CUDA writers target sm90+")
    for spec in (set_mla_cuda.SPEC, store_cuda.SPEC):
        jit.load(spec, device)
    return device


def random_bytes(shape, dtype, g, device):
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).view(shape).to(device)


def slots(T, S, dtype, invalid, g, device):
    loc = torch.randperm(S, generator=g)[:T].to(dtype)
    for i in invalid:
        if 0 <= i < T:
            loc[i] = -1
    return loc.to(device)


def same_bytes(a, b):
    return torch.equal(a.cpu().contiguous().view(torch.uint8), b.cpu().contiguous().view(torch.uint8))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", set_mla_cuda.VARIANTS)
@pytest.mark.parametrize("dtype,nope,rope", [(torch.bfloat16, 512, 64), (torch.uint8, 528, 128),
                                             (torch.float32, 5, 3), (torch.bfloat16, 6, 2)])
@pytest.mark.parametrize("T,loc_dtype", [(0, torch.int64), (1, torch.int32), (37, torch.int64), (3001, torch.int32)])
@pytest.mark.parametrize("pdl", ["1", "0"])
def test_set_mla_matches_reference(built, variant, dtype, nope, rope, T, loc_dtype, pdl, monkeypatch):
    monkeypatch.setenv("FUSEGRAPH_PDL", pdl)
    g = torch.Generator().manual_seed(T + nope)
    S = 2 * T + 8
    buf = random_bytes((S, nope + rope), dtype, g, built)
    rows = random_bytes((T, nope + rope + 8), dtype, g, built)  # nope/rope: views of a wider row
    k_nope, k_rope = rows[:, :nope], rows[:, nope:nope + rope]
    loc = slots(T, S, loc_dtype, (0, T // 2), g, built)
    if set_mla_cuda._supports(buf, loc, k_nope, k_rope) is not None:  # e.g. 8-byte-aligned rows only
        k_nope, k_rope = k_nope.contiguous(), k_rope.contiguous()
    assert set_mla_cuda._supports(buf, loc, k_nope, k_rope) is None
    expected = buf.cpu().clone()
    SET_MLA.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    set_mla_cuda.launch(buf, loc, k_nope, k_rope, variant=variant)
    torch.cuda.synchronize()
    assert same_bytes(buf, expected)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", set_mla_cuda.VARIANTS)
def test_set_mla_graph_capture_and_dispatch(built, variant, monkeypatch):
    monkeypatch.setenv(set_mla_cuda.COPY_ENV, variant)
    g = torch.Generator().manual_seed(5)
    buf = random_bytes((300, 576), torch.bfloat16, g, built)
    k_nope, k_rope = random_bytes((100, 512), torch.bfloat16, g, built), random_bytes((100, 64), torch.bfloat16, g, built)
    loc = slots(100, 300, torch.int64, (7,), g, built)
    expected = buf.cpu().clone()
    SET_MLA.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    with ops.prefer({"set_mla_kv_buffer": ["cuda"]}):
        assert SET_MLA.select("sm90", (buf, loc, k_nope, k_rope)).provider == "cuda"
        torch.ops.fusegraph.set_mla_kv_buffer(buf, loc, k_nope, k_rope)  # warm (and JIT) outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.ops.fusegraph.set_mla_kv_buffer(buf, loc, k_nope, k_rope)
    buf.copy_(random_bytes((300, 576), torch.bfloat16, torch.Generator().manual_seed(5), built))
    graph.replay()
    torch.cuda.synchronize()
    assert same_bytes(buf, expected)


POISONS = (0xAB, 0x54)


def written_mask(num_pages, page_size, loc):
    layout = _fp8.PagedLayout(page_size)
    mask = torch.zeros(num_pages, layout.bytes_per_page, dtype=torch.bool)
    for s in loc.cpu().tolist():
        if s >= 0:
            page, row = divmod(s, page_size)
            mask[page, row * 576:(row + 1) * 576] = True
            mask[page, layout.scales_offset + row * 8:layout.scales_offset + row * 8 + 8] = True
    return mask


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", store_cuda.VARIANTS)
@pytest.mark.parametrize("T,page_size,loc_dtype", [(0, 4, torch.int64), (1, 1, torch.int32), (5, 3, torch.int64),
                                                   (37, 64, torch.int32), (3001, 64, torch.int64)])
@pytest.mark.parametrize("views", [False, True])
def test_store_matches_reference_bytes(built, variant, T, page_size, loc_dtype, views):
    g = torch.Generator().manual_seed(T * 7 + page_size)
    if views:  # nope / rope as the two parts of one normalized kv row
        kv = torch.randn(T, 512, generator=g) * torch.logspace(-3, 1, 512)
        kv = kv.to(torch.bfloat16).to(built)
        nope, rope = kv[:, :448], kv[:, 448:]
    else:
        nope = (torch.randn(T, 448, generator=g) * torch.logspace(-3, 1, 448)).to(torch.bfloat16).to(built)
        rope = torch.randn(T, 64, generator=g).to(torch.bfloat16).to(built)
    num_pages = max(2, -(-3 * T // page_size))
    loc = slots(T, num_pages * page_size, loc_dtype, (1, T - 1), g, built)
    bytes_per_page = _fp8.PagedLayout(page_size).bytes_per_page
    caches = []
    for poison in POISONS:
        cache = torch.full((num_pages, bytes_per_page), poison, dtype=torch.uint8, device=built)
        store_cuda.launch(cache, loc, nope, rope, page_size, QUANT_EPS, variant=variant)
        caches.append(cache.cpu())
    torch.cuda.synchronize()
    expected = torch.full((num_pages, bytes_per_page), POISONS[0], dtype=torch.uint8)
    STORE.reference(expected, loc.cpu(), nope.cpu(), rope.cpu(), page_size, QUANT_EPS)
    mask = written_mask(num_pages, page_size, loc)
    assert bool((caches[1][~mask] == POISONS[1]).all()), "bytes outside the written slots changed"
    assert torch.equal(caches[0][mask], caches[1][mask]), "some byte of a written slot was not written"
    assert torch.equal(caches[0], expected), "cache bytes differ from the reference"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", store_cuda.VARIANTS)
def test_store_extreme_tiles_and_graph(built, variant, monkeypatch):
    """Tiles of zeros (quant_eps floor), subnormal-e4m3 values, huge values, negative zeros; in a graph."""
    monkeypatch.setenv(store_cuda.COPY_ENV, variant)
    nope = torch.zeros(4, 448)
    nope[1, :64] = torch.linspace(-1e-3, 1e-3, 64)
    nope[2] = torch.randn(448) * 1e30
    nope[3, 64:128] = -0.0
    nope[3, 128:] = torch.randn(320) * 2.0 ** -20
    nope = nope.to(torch.bfloat16).to(built)
    rope = torch.randn(4, 64).to(torch.bfloat16).to(built)
    loc = torch.tensor([3, 0, 6, 5], device=built)
    cache = torch.full((2, _fp8.PagedLayout(4).bytes_per_page), 0xAB, dtype=torch.uint8, device=built)
    expected = cache.cpu().clone()
    STORE.reference(expected, loc.cpu(), nope.cpu(), rope.cpu(), 4, QUANT_EPS)
    with ops.prefer({"store_fp8_paged": ["cuda"]}):
        torch.ops.fusegraph.store_fp8_paged(cache, loc, nope, rope, 4, QUANT_EPS)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.ops.fusegraph.store_fp8_paged(cache, loc, nope, rope, 4, QUANT_EPS)
    cache.fill_(0xAB)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(cache.cpu(), expected)


def test_bulk_refused_before_sm90(monkeypatch):
    monkeypatch.setattr(jit, "arch_of", lambda device: (8, 0))
    with pytest.raises(ValueError, match="sm90"):
        set_mla_cuda.launch(*set_mla_args(), variant="bulk")
    with pytest.raises(ValueError, match="unknown copy variant"):
        store_cuda.launch(*store_args(), variant="tma")
