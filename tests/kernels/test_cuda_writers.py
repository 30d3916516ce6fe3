"""CUDA KV writers (set_mla_kv_buffer, store_fp8_paged): dispatch, gates, JIT cache, compile check, GPU bytes.

CPU: the providers' availability reasons, the measured dispatch tables (``Dispatch``, the
``measured`` gate, the ``FUSEGRAPH_CUDA_COPY`` override), the launch plan (rows per warp task,
warps per CTA), the alignment gates (with the reason a row falls back to Triton), the build cache
key (sources and the shared header), the benchmark's byte floors, and, when nvcc is on the
machine, a compile-only build of the extension's CUDA translation unit (both ``.cu`` files with
the shared header, as the JIT builds it) for sm_90a (bulk copies and grid-dependency control in
the PTX, no spills) and sm_80 (compiled out).

GPU (``-m gpu``): both copies (vector, bulk) and every rows-per-task instantiation against the
torch reference, byte for byte, on caches filled with random bytes: untouched bytes keep them,
padding slots (-1) write nothing; T = 0, 1, odd T, 3001, 16384; int32/int64 slots; strided row
views; PDL on and off; CUDA-graph capture and dispatch through ``torch.ops``.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

from benchmarks import ops_hopper
from fusegraph import ops
from fusegraph.kernels import _cuda_jit as jit
from fusegraph.kernels import _fp8
from fusegraph.kernels import _kv_writers as kw
from fusegraph.kernels.set_mla_kv_buffer import cuda as set_mla_cuda
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

SET_MLA, STORE = ops.get("set_mla_kv_buffer"), ops.get("store_fp8_paged")
QUANT_EPS = 1e-4
DSV4_ROW = 1152  # 512 + 64 bf16


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
def test_priority_follows_the_dispatch_table(op, module):
    provider = op.providers["cuda"]
    assert provider.targets == frozenset({"sm90", "sm100"})
    assert provider.priority == module.DISPATCH.priority()
    assert (provider.priority > op.providers["triton"].priority) == module.DISPATCH.uses_cuda
    assert "does not run on sm80" in provider.why_not("sm80", (), {})
    assert module.DISPATCH.source  # every table cites its measurement


# -- the measured dispatch -------------------------------------------------------------------------------
def test_dispatch_table():
    table = kw.Dispatch(((0, "triton"), (1024, "vector"), (16384, "bulk")), source="test")
    assert [table.writer(n) for n in (0, 1, 1023, 1024, 16383, 16384, 10 ** 9)] == \
        ["triton", "triton", "triton", "vector", "vector", "bulk", "bulk"]
    assert table.uses_cuda and table.priority() > 20
    only_triton = kw.Dispatch(((0, "triton"),), source="test")
    assert not only_triton.uses_cuda and only_triton.priority() < 20
    for steps, message in ((((1, "vector"),), "start at 0"), (((0, "vector"), (0, "bulk")), "ascending"),
                           (((0, "tma"),), "unknown writers")):
        with pytest.raises(ValueError, match=message):
            kw.Dispatch(steps, source="test")


@pytest.mark.parametrize("module,args", [(set_mla_cuda, set_mla_args), (store_cuda, store_args)])
def test_measured_gate_and_override(module, args, monkeypatch):
    monkeypatch.delenv(kw.COPY_ENV, raising=False)
    monkeypatch.setattr(module, "DISPATCH", kw.Dispatch(((0, "triton"), (3, "bulk")), source="H200 test run"))
    gate = module._measured
    assert "Triton measured" in gate(*args(T=2)) and "H200 test run" in gate(*args(T=2))
    assert gate(*args(T=3)) is None
    assert module.copy_variant(2) == "vector" and module.copy_variant(3) == "bulk"
    monkeypatch.setenv(kw.COPY_ENV, "vector")  # forcing a copy forces the CUDA provider too
    assert gate(*args(T=2)) is None and module.copy_variant(3) == "vector"
    monkeypatch.setenv(kw.COPY_ENV, "bulk")
    assert module.copy_variant(1) == "bulk"


def test_selection_follows_the_table(monkeypatch):
    """With the CUDA provider usable (pretended), dispatch sends each row count where the table says."""
    monkeypatch.delenv(kw.COPY_ENV, raising=False)
    monkeypatch.setattr(kw, "available", lambda: None)
    monkeypatch.setattr(store_cuda, "DISPATCH", kw.Dispatch(((0, "triton"), (4, "vector")), source="test"))
    provider = STORE.providers["cuda"]
    assert "Triton measured" in provider.why_not("sm90", meta(*store_args(T=3)), {})
    assert provider.why_not("sm90", meta(*store_args(T=4)), {}) is None


# -- launch plan ----------------------------------------------------------------------------------------
def test_launch_plan():
    sms = 132
    assert kw.plan(1, sms, 4) == kw.LaunchPlan(1, 1)              # one warp on one SM
    assert kw.plan(64, sms, 4) == kw.LaunchPlan(1, 1)             # 64 one-warp CTAs
    assert kw.plan(1024, sms, 4) == kw.LaunchPlan(1, 4)           # ~2 CTAs of 4 warps a SM
    assert kw.plan(4096, sms, 4) == kw.LaunchPlan(1, 8)           # one row per task below MULTI_ROW_FROM
    assert kw.plan(kw.MULTI_ROW_FROM, sms, 4) == kw.LaunchPlan(kw.MULTI_ROWS, 8)
    assert kw.plan(16384, sms, 4) == kw.LaunchPlan(2, 8)          # the measured best (2 rows a task)
    assert kw.plan(16384, sms, 1) == kw.LaunchPlan(1, 8)          # capped by what the row allows
    assert kw.plan(16384, sms, 4, rows_per_task=1) == kw.LaunchPlan(1, 8)
    assert kw.plan(16384, sms, 1, rows_per_task=4) == kw.LaunchPlan(1, 8)
    assert kw.plan(0, sms, 4) == kw.LaunchPlan(1, 1)


def test_set_mla_rows_per_task_limits():
    fits = set_mla_cuda.max_rows_per_task
    assert fits(DSV4_ROW, 16, "vector") == 4 and fits(DSV4_ROW, 16, "bulk") == 4  # 288 vectors, 4608 B
    assert fits(656, 16, "vector") == 4                 # FP8 NSA row: 41 vectors
    assert fits(2048, 16, "vector") == 2 and fits(2048, 16, "bulk") == 2
    assert fits(1536, 16, "vector") == 2 and fits(1536, 16, "bulk") == 2
    assert fits(4096, 16, "vector") == 1
    assert fits(DSV4_ROW, 4, "vector") == 1             # 4-byte vectors: one row a task


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
    buf, _, nope, rope = set_mla_args()
    assert set_mla_cuda.vector_bytes(buf, nope, rope) == 16
    buf, _, nope, rope = set_mla_args(nope=6, rope=2)   # 12 + 4 bytes: 4-byte vectors
    assert set_mla_cuda.vector_bytes(buf, nope, rope) == 4
    buf, _, nope, rope = set_mla_args(nope=12, rope=4)  # 24 + 8 bytes: 4-byte vectors (8 is not built)
    assert set_mla_cuda.vector_bytes(buf, nope, rope) == 4
    buf = set_mla_args()[0]
    rows = torch.zeros(4, 520, dtype=torch.bfloat16)    # views of 1040-byte rows: all 16-byte aligned
    assert set_mla_cuda.vector_bytes(buf, rows[:, :512], rows[:, 512:]) == 16
    rows = torch.zeros(4, 580, dtype=torch.bfloat16)    # views of 1160-byte rows: 8-byte row stride
    assert set_mla_cuda.vector_bytes(buf, rows[:, :512], rows[:, 512:576]) == 4


# -- store_fp8_paged: the kernel's scale rule -----------------------------------------------------------
def test_division_free_scale_exponent_matches_the_reference_rule():
    """store_fp8_paged.cu reads ceil(log2(fl(amax / 448))) off amax's bits: E - 8, + 1 when the fraction
    exceeds 0.75. Checked against kernels/_fp8.ue8m0_exponent (frexp of the IEEE quotient) on random
    normal floats from 1e-30 up and on the fractions next to 0.75, 0 and 1 in every binade."""
    g = torch.Generator().manual_seed(0)
    n = 1_000_000
    biased = torch.randint(27, 255, (n,), generator=g)                    # amax from ~1e-30 to the fp32 max
    fraction = torch.randint(0, 1 << 23, (n,), generator=g)
    edges = torch.tensor([0, 1, 2, 0x5FFFFF, 0x600000, 0x600001, 0x600002, 0x7FFFFE, 0x7FFFFF])
    biased = torch.cat([biased, torch.arange(27, 255).repeat_interleave(edges.numel())])
    fraction = torch.cat([fraction, edges.repeat(255 - 27)])
    amax = ((biased << 23) | fraction).to(torch.int32).view(torch.float32)
    kernel_rule = biased - 127 - 8 + (fraction > 0x600000).long()
    assert torch.equal(_fp8.ue8m0_exponent(amax).long(), kernel_rule)


# -- store_fp8_paged gates -----------------------------------------------------------------------------
def test_store_gate():
    gate = store_cuda._supports
    cache, loc, nope, rope, page_size, eps = store_args()
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


def test_bulk_refused_before_sm90(monkeypatch):
    monkeypatch.setattr(jit, "arch_of", lambda device: (8, 0))
    with pytest.raises(ValueError, match="sm90"):
        set_mla_cuda.launch(*set_mla_args(), variant="bulk")
    with pytest.raises(ValueError, match="unknown copy variant"):
        store_cuda.launch(*store_args(), variant="tma")


# -- benchmark byte floors ------------------------------------------------------------------------------
@pytest.mark.parametrize("op,per_row", [("set_mla_kv_buffer", 1152 + 4 + 1152), ("store_fp8_paged", 1024 + 8 + 584)])
def test_benchmark_floor_is_inputs_read_once_plus_rows_written_once(op, per_row):
    writer = next(w for w in ops_hopper.WRITER_OPS if w.name == op)
    for T in (1, 65):
        args = writer.make_inputs(T, torch.device("cpu"))
        assert ops_hopper.floor_bytes(op, args) == ops_hopper.floor_for(op, T) == T * per_row
        slots = args[1]
        assert slots.unique().numel() == T and int(slots.max()) < ops_hopper.cache_slots(T)  # distinct, in the cache


def test_benchmark_suggests_dispatch_steps():
    times = {1: {"triton": 1.2, "vector": 1.3, "bulk": 1.4}, 64: {"triton": 1.3, "vector": 1.28, "bulk": 1.4},
             1024: {"triton": 2.0, "vector": 1.5, "bulk": 1.6}, 16384: {"triton": 14.0, "vector": 9.0, "bulk": 8.0}}
    assert ops_hopper.suggest_steps(times) == ((0, "triton"), (1024, "vector"), (16384, "bulk"))  # 64: within margin
    assert ops_hopper.suggest_steps({1: {"triton": 1.0}}) == ((0, "triton"),)
    cases = ops_hopper.hopper_cases((), ["flash"])
    goals = {c.name for c in cases if c.goals}
    assert goals and all(c.T == ops_hopper.GOAL_ROWS for c in cases if c.goals)
    assert {c.T for c in cases} == set(ops_hopper.ROWS)
    assert len({(c.name, c.T) for c in cases}) == len(cases)


# -- JIT cache ------------------------------------------------------------------------------------------
def test_build_dir_keyed_by_sources_headers_and_arch(tmp_path, monkeypatch):
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    cu, inc = tmp_path / "k.cu", tmp_path / "inc"
    inc.mkdir()
    cu.write_text('#include "h.cuh"\n__global__ void k() {}\n')
    (inc / "h.cuh").write_text("#pragma once\n")
    spec = jit.ExtensionSpec("k", (cu,), "// binding", ("k",), include_dirs=(inc,))
    hopper, ampere = jit.build_dir(spec, 9, 0), jit.build_dir(spec, 8, 0)
    assert hopper.parent == tmp_path and hopper.name.endswith("-sm90a") and ampere.name.endswith("-sm80")
    assert hopper.name.split("-")[0] != ampere.name.split("-")[0]  # the flags differ, so does the hash
    assert jit.build_dir(spec, 9, 0) == hopper                        # stable
    (inc / "h.cuh").write_text("#pragma once\n// changed\n")
    after_header = jit.build_dir(spec, 9, 0)
    assert after_header != hopper                                     # a header change rebuilds
    cu.write_text('#include "h.cuh"\n__global__ void k() { }\n')
    assert jit.build_dir(spec, 9, 0) != after_header                  # any source change rebuilds
    assert jit.gencode_flags(9, 0) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert jit.gencode_flags(10, 0) == ["-gencode=arch=compute_100,code=sm_100"]


def test_one_extension_for_both_writers():
    assert kw.SPEC.cuda_files == (set_mla_cuda.kw.SET_MLA_CU, kw.STORE_FP8_CU)
    assert all(f.exists() for f in kw.SPEC.cuda_files)
    assert [h.name for h in kw.SPEC.headers()] == ["kv_writer.cuh"]
    assert set(kw.SPEC.functions) == {"set_mla_kv_buffer", "store_fp8_paged"}
    for name in kw.SPEC.functions:
        assert f"void {name}(torch::Tensor" in kw.SPEC.binding


# -- compile-only check (CI, when nvcc is on the machine) ------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_extension_source_compiles_for_sm90a_and_sm80(tmp_path):
    """nvcc builds the extension's CUDA translation unit (both .cu files joined, the shared header
    found through -I, as the JIT does) for sm_90a and sm_80; --keep leaves the PTX to inspect."""
    source = tmp_path / "kv_writers.cu"
    source.write_text(kw.SPEC.cuda_source())
    includes = [f"-I{d}" for d in kw.SPEC.include_dirs]
    jobs = {}
    for arch in ("90a", "80"):  # the two builds run in parallel
        keep = tmp_path / arch
        keep.mkdir()
        jobs[arch] = (keep, subprocess.Popen(
            ["nvcc", "-c", "-O3", "-std=c++17", *includes, "--keep", "--keep-dir", str(keep), "-Xptxas", "-v",
             f"-gencode=arch=compute_{arch},code=sm_{arch}", str(source), "-o", str(keep / "out.o")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = {}
    for arch, (keep, proc) in jobs.items():
        logs[arch], _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"nvcc failed for sm_{arch}:\n{logs[arch]}"
        assert (keep / "out.o").stat().st_size > 0
    sm90 = (tmp_path / "90a" / "kv_writers.ptx").read_text()  # one arch a build: no arch suffix
    sm80 = (tmp_path / "80" / "kv_writers.ptx").read_text()
    for instruction in ("cp.async.bulk.global.shared::cta.bulk_group", "fence.proxy.async.shared::cta",
                        "cp.async.bulk.wait_group.read", "cp.async.bulk.wait_group", "griddepcontrol.wait",
                        "griddepcontrol.launch_dependents", "ld.global.nc.L1::no_allocate.v4"):
        assert instruction in sm90, f"{instruction} missing from the sm_90a PTX"
    assert "cp.async.bulk" not in sm80 and "griddepcontrol" not in sm80, "Hopper code in the sm_80 build"
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", logs["90a"])
    assert sum("set_mla_kernel" in k for k in kernels) == 16 and sum("store_fp8_kernel" in k for k in kernels) == 12
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", logs["90a"])
    assert len(frames) == len(kernels) and all(f == ("0", "0") for f in frames), "a kernel spills or uses a stack"


# =======================================================================================================
# GPU
# =======================================================================================================
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def built():
    """Build the extension once (skip without nvcc / before sm90; a failed build fails)."""
    reason = jit.cuda_missing()
    if reason:
        pytest.skip(reason)
    device = torch.device("cuda")
    if jit.arch_of(device)[0] < 9:
        pytest.skip("the CUDA writers target sm90+")
    jit.load(kw.SPEC, device)
    return device


def random_bytes(shape, dtype, g, device):
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).view(shape).to(device)


def slots(T, S, dtype, g, device, invalid=()):
    """T distinct random slots of S, with the entries at ``invalid`` (and every 97th) set to -1."""
    loc = torch.randperm(S, generator=g)[:T].to(dtype)
    for i in (*invalid, *range(3, T, 97)):
        if 0 <= i < T:
            loc[i] = -1
    return loc.to(device)


def same_bytes(a, b):
    return torch.equal(a.cpu().contiguous().view(torch.uint8), b.cpu().contiguous().view(torch.uint8))


# -- set_mla_kv_buffer ------------------------------------------------------------------------------------
def check_set_mla(device, variant, dtype, nope, rope, T, loc_dtype, rows_per_task=None, seed=0):
    g = torch.Generator().manual_seed(seed + T + nope)
    S = 2 * T + 8
    buf = random_bytes((S, nope + rope), dtype, g, device)     # random cache: untouched rows keep their bytes
    rows = random_bytes((T, nope + rope + 8), dtype, g, device)  # nope/rope: views of a wider row
    k_nope, k_rope = rows[:, :nope], rows[:, nope:nope + rope]
    loc = slots(T, S, loc_dtype, g, device, invalid=(0, T // 2, T - 1))
    if set_mla_cuda._supports(buf, loc, k_nope, k_rope) is not None:  # e.g. rows 4-byte aligned only
        k_nope, k_rope = k_nope.contiguous(), k_rope.contiguous()
    assert set_mla_cuda._supports(buf, loc, k_nope, k_rope) is None
    expected = buf.cpu().clone()
    SET_MLA.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    set_mla_cuda.launch(buf, loc, k_nope, k_rope, variant=variant, rows_per_task=rows_per_task)
    torch.cuda.synchronize()
    assert same_bytes(buf, expected)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("dtype,nope,rope", [(torch.bfloat16, 512, 64), (torch.uint8, 528, 128),
                                             (torch.float32, 5, 3), (torch.bfloat16, 6, 2)])
@pytest.mark.parametrize("T,loc_dtype,pdl", [(0, torch.int64, "1"), (1, torch.int32, "1"), (37, torch.int64, "0"),
                                             (3001, torch.int32, "1"), (16384, torch.int64, "1")])
def test_set_mla_matches_reference(built, variant, dtype, nope, rope, T, loc_dtype, pdl, monkeypatch):
    monkeypatch.setenv("FUSEGRAPH_PDL", pdl)
    check_set_mla(built, variant, dtype, nope, rope, T, loc_dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("rows_per_task", [1, 2, 4])
@pytest.mark.parametrize("T,loc_dtype", [(5, torch.int32), (4099, torch.int64), (16383, torch.int32)])
def test_set_mla_rows_per_task(built, variant, rows_per_task, T, loc_dtype):
    """Every task shape, with a partial last task (T not a multiple of the rows per task)."""
    check_set_mla(built, variant, torch.bfloat16, 512, 64, T, loc_dtype, rows_per_task, seed=rows_per_task)


@pytest.mark.gpu
@needs_gpu
def test_set_mla_offsets_beyond_2gb(built):
    S = (2 ** 31 + 2 ** 27) // DSV4_ROW
    buf = torch.zeros(S, 576, dtype=torch.bfloat16, device=built)
    g = torch.Generator().manual_seed(3)
    k_nope, k_rope = random_bytes((5, 512), torch.bfloat16, g, built), random_bytes((5, 64), torch.bfloat16, g, built)
    loc = torch.tensor([S - 1, S - 4000, -1, 7, S - 2], dtype=torch.int32, device=built)
    for variant in kw.VARIANTS:
        buf.zero_()
        set_mla_cuda.launch(buf, loc, k_nope, k_rope, variant=variant, rows_per_task=4)
        for i in (0, 1, 3, 4):
            assert same_bytes(buf[loc[i]], torch.cat([k_nope[i], k_rope[i]]))
        assert not bool(buf[S // 2].any())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("T", [100, 5000])
def test_set_mla_graph_capture_and_dispatch(built, variant, T, monkeypatch):
    monkeypatch.setenv(kw.COPY_ENV, variant)
    g = torch.Generator().manual_seed(5)
    S = 3 * T
    initial = random_bytes((S, 576), torch.bfloat16, g, built)
    buf = initial.clone()
    k_nope, k_rope = random_bytes((T, 512), torch.bfloat16, g, built), random_bytes((T, 64), torch.bfloat16, g, built)
    loc = slots(T, S, torch.int64, g, built, invalid=(7,))
    expected = buf.cpu().clone()
    SET_MLA.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    with ops.prefer({"set_mla_kv_buffer": ["cuda"]}):
        assert SET_MLA.select("sm90", (buf, loc, k_nope, k_rope)).provider == "cuda"
        torch.ops.fusegraph.set_mla_kv_buffer(buf, loc, k_nope, k_rope)  # warm (and JIT) outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.ops.fusegraph.set_mla_kv_buffer(buf, loc, k_nope, k_rope)
    buf.copy_(initial)
    graph.replay()
    torch.cuda.synchronize()
    assert same_bytes(buf, expected)


# -- store_fp8_paged --------------------------------------------------------------------------------------
POISONS = (0xAB, 0x54)


def written_mask(num_pages, page_size, loc):
    layout = _fp8.PagedLayout(page_size)
    mask = torch.zeros(num_pages, layout.bytes_per_page, dtype=torch.bool)
    valid = loc.cpu()[loc.cpu() >= 0]
    page, row = valid // page_size, valid % page_size
    cols = torch.arange(576)
    mask[page[:, None], row[:, None] * 576 + cols] = True
    mask[page[:, None], layout.scales_offset + row[:, None] * 8 + torch.arange(8)] = True
    return mask


def check_store(device, variant, T, page_size, loc_dtype, views=False, rows_per_task=None):
    g = torch.Generator().manual_seed(T * 7 + page_size)
    if views:  # nope / rope as the two parts of one kv row
        kv = (torch.randn(T, 512, generator=g) * torch.logspace(-3, 1, 512)).to(torch.bfloat16).to(device)
        nope, rope = kv[:, :448], kv[:, 448:]
    else:
        nope = (torch.randn(T, 448, generator=g) * torch.logspace(-3, 1, 448)).to(torch.bfloat16).to(device)
        rope = torch.randn(T, 64, generator=g).to(torch.bfloat16).to(device)
    num_pages = max(2, -(-3 * T // page_size))
    loc = slots(T, num_pages * page_size, loc_dtype, g, device, invalid=(1, T - 1))
    bytes_per_page = _fp8.PagedLayout(page_size).bytes_per_page
    caches = []
    for poison in POISONS:
        cache = torch.full((num_pages, bytes_per_page), poison, dtype=torch.uint8, device=device)
        store_cuda.launch(cache, loc, nope, rope, page_size, QUANT_EPS, variant=variant, rows_per_task=rows_per_task)
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
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("T,page_size,loc_dtype", [(0, 4, torch.int64), (1, 1, torch.int32), (5, 3, torch.int64),
                                                   (37, 64, torch.int32), (3001, 64, torch.int64),
                                                   (16384, 64, torch.int32)])
@pytest.mark.parametrize("views", [False, True])
def test_store_matches_reference_bytes(built, variant, T, page_size, loc_dtype, views):
    check_store(built, variant, T, page_size, loc_dtype, views)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("rows_per_task", [1, 2, 4])
@pytest.mark.parametrize("T,page_size,loc_dtype", [(7, 5, torch.int64), (4099, 64, torch.int32),
                                                   (16383, 256, torch.int64)])
def test_store_rows_per_task(built, variant, rows_per_task, T, page_size, loc_dtype):
    check_store(built, variant, T, page_size, loc_dtype, rows_per_task=rows_per_task)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
def test_store_extreme_tiles_and_graph(built, variant, monkeypatch):
    """Tiles of zeros (quant_eps floor), subnormal-e4m3 values, huge values, negative zeros; in a graph."""
    monkeypatch.setenv(kw.COPY_ENV, variant)
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


@pytest.mark.gpu
@needs_gpu
def test_store_beyond_2gb(built):
    """Slots whose byte offsets exceed 2^31 (int64 address math), next to untouched pages."""
    page_size = 64
    bpp = _fp8.PagedLayout(page_size).bytes_per_page
    num_pages = (2 ** 31 + 2 ** 27) // bpp
    cache = torch.full((num_pages, bpp), 0xAB, dtype=torch.uint8, device=built)
    g = torch.Generator().manual_seed(1)
    nope = torch.randn(5, 448, generator=g).to(torch.bfloat16).to(built)
    rope = torch.randn(5, 64, generator=g).to(torch.bfloat16).to(built)
    last = num_pages * page_size - 1
    loc = torch.tensor([last, last - page_size - 3, -1, 5, last - 1], dtype=torch.int64, device=built)
    keep = [0, 1, 3, 4]
    q, e = _fp8.quantize_tiles(nope.cpu()[keep], QUANT_EPS)
    want = torch.cat([_fp8.dequantize_tiles(q, e).to(torch.bfloat16), rope.cpu()[keep]], -1)
    for variant in kw.VARIANTS:
        store_cuda.launch(cache, loc, nope, rope, page_size, QUANT_EPS, variant=variant, rows_per_task=4)
        assert torch.equal(_fp8.dequantize_paged(cache, loc[keep], page_size).cpu(), want)
    assert bool((cache[num_pages // 2] == 0xAB).all())
