"""sparse_attn_sink CUDA decode provider (cluster split-K, DSMEM merge): plan, gates, emulation, compile, GPU.

CPU: the launch plan (cluster size, split, chunks, shared memory, a pure function), the
``supports_args`` reasons, the ``measured`` gate (the table is empty: dispatch keeps Triton unless
forced), registration, :func:`cuda.emulate` (the kernel's partition, chunking, k-partials, online
softmax with bf16 P and rank-order merge with the sink, in torch) against the fp64 oracle and the
reference, and, with nvcc on the machine, a compile-only build of the ``.cu`` for sm_90a (no spills, no
stack, <= 128 registers, cluster barriers / DSMEM / PDL / mma / ldmatrix / cp.async / e4m3 conversion
in the PTX) and the PTX of sm_80 (Hopper code compiled out: a trapping stub).

GPU (``-m gpu``, sm90): the kernel against the fp64 oracle, the reference and the emulation at flash
(64 heads, window 128 + 512) and pro (128 heads, 128 + 1024) sizes, T = 1, 2, 4, int32 and int64
lists; T = 0; lists that are not multiples of the split, several chunks a CTA, page sizes 64 and 48,
heads not a multiple of 16; all-invalid tokens, ratio 0 (``cmp`` None), duplicates (every case),
poisoned outputs and bit-identical repeats; CUDA-graph capture and replay; dispatch with the gate lifted.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusegraph.kernels._cuda_jit import aligned
from fusegraph.kernels.sparse_attn_sink import cuda as attn_cuda
from fusegraph.kernels.sparse_attn_sink.reference import sparse_attn_sink

sys.path.insert(0, str(Path(__file__).parent))
from test_sparse_attn_sink import check, make_case, rel_l2  # noqa: E402

FLASH, PRO = (64, 512), (128, 1024)   # heads, compressed entries (+ a 128-entry window)


# -- plan ---------------------------------------------------------------------------------------------

def test_plan_at_dsv4_sizes():
    flash = attn_cuda.make_decode_plan(1, 64, 128 + 512)
    assert (flash.cluster, flash.rows_per_split, flash.chunk_rows, flash.chunk_pad, flash.chunks) == (16, 40, 40, 48, 1)
    assert flash.head_groups == 4 and flash.ctas == 64
    pro = attn_cuda.make_decode_plan(1, 128, 128 + 1024)
    assert (pro.cluster, pro.rows_per_split, pro.chunk_rows, pro.chunk_pad, pro.chunks) == (16, 72, 72, 80, 1)
    assert pro.ctas == 128 <= 132                          # one wave on an H100 at T = 1
    assert 2 * (pro.smem_bytes + 1024) <= 228 * 1024      # two CTAs an SM (shared memory)
    four = attn_cuda.make_decode_plan(4, 128, 1152)             # several tokens: clusters of 8 (measured)
    assert (four.cluster, four.rows_per_split, four.chunks, four.ctas) == (8, 144, 2, 256)
    assert attn_cuda.make_decode_plan(2, 64, 640).cluster == 8
    assert attn_cuda.make_decode_plan(1, 64, 100).cluster == 4                # >= 16 entries a CTA


@pytest.mark.parametrize("entries", [0, 1, 15, 20, 33, 100, 400, 640, 1152, 1537, 5000])
def test_plan_covers_every_entry(entries):
    plan = attn_cuda.make_decode_plan(2, 20, entries)
    assert plan.cluster in attn_cuda.CLUSTERS and plan.head_groups == 2
    assert plan.cluster * plan.rows_per_split >= entries > (plan.cluster - 1) * plan.rows_per_split or entries == 0
    assert plan.chunks * plan.chunk_rows >= plan.rows_per_split
    assert 1 <= plan.chunk_rows <= plan.chunk_pad <= attn_cuda.MAX_CHUNK and plan.chunk_pad % 16 == 0
    if plan.cluster > 1:                                     # at least 16 entries a CTA
        assert -(-entries // plan.cluster) >= attn_cuda.MIN_ROWS_PER_CTA
    assert plan.smem_bytes <= attn_cuda.MAX_SMEM


def test_plan_overrides(monkeypatch):
    assert attn_cuda.make_decode_plan(1, 64, 640, {"cluster": 8}).rows_per_split == 80
    small = attn_cuda.make_decode_plan(1, 64, 640, {"cluster": 8, "max_chunk": 30})
    assert (small.chunks, small.chunk_rows, small.chunk_pad) == (3, 27, 32)
    monkeypatch.setenv(attn_cuda.CLUSTER_ENV, "4")
    assert attn_cuda.make_decode_plan(1, 64, 640).cluster == 4
    monkeypatch.setattr(attn_cuda, "OVERRIDES", {"cluster": 2})
    assert attn_cuda.make_decode_plan(1, 64, 640).cluster == 2           # OVERRIDES beat the env
    with pytest.raises(ValueError):
        attn_cuda.make_decode_plan(1, 64, 640, {"cluster": 3})
    with pytest.raises(ValueError):
        attn_cuda.make_decode_plan(1, 64, 640, {"max_chunk": 97})


def test_smem_layout_matches_the_kernel():
    """The values the .cu file's static_asserts pin down for layout_of."""
    source = attn_cuda.CUDA_FILE.read_text()
    for chunk_pad in (16, 48, 80, 96):
        total = attn_cuda.smem_bytes(chunk_pad)
        assert f"layout_of({chunk_pad}).total == {total}" in source


# -- gates --------------------------------------------------------------------------------------------

def test_supports_args_reasons():
    c = make_case(2, 4, 5, 6, seed=10)
    gate = attn_cuda._supports
    args = list(c.args())
    assert "sm90" in gate(*args)                                   # a valid call on the CPU: the device
    assert "bf16" in gate(args[0].half(), *args[1:])
    assert "bf16" in gate(args[0][..., :256], *args[1:])
    big = make_case(5, 4, 5, 6, seed=11)
    assert "T = 5" in gate(*big.args())
    assert "int32 or int64" in gate(*args[:2], args[2].to(torch.int16), *args[3:])
    assert "contiguous rows" in gate(*args[:2], torch.zeros(5, 2, dtype=torch.int32).t(), *args[3:])
    assert "needs" in gate(*args[:9], 64, args[10])                # swa pages too small for 64 tokens
    wide = torch.zeros(c.swa_cache.shape[0], c.swa_cache.shape[1] + 8, dtype=torch.uint8)[:, :c.swa_cache.shape[1]]
    assert "16-byte" in gate(args[0], wide, *args[2:])             # page stride not a multiple of 16
    assert "sink" in gate(*args[:5], args[5][:3], *args[6:])
    assert "cos" in gate(*args[:6], args[6].double(), *args[7:])
    unaligned_q = torch.zeros(2 * 4 * 512 + 1, dtype=torch.bfloat16)[1:].view(2, 4, 512)
    assert not aligned(unaligned_q, 16) and "16-byte" in gate(unaligned_q, *args[1:])
    # a ratio-0 layer and an unused placeholder cache are fine (then only the device is missing)
    assert "sm90" in gate(*args[:3], None, None, *args[5:])
    assert "sm90" in gate(*args[:3], torch.empty(0, dtype=torch.uint8), args[4][:, :0], *args[5:])


def test_measured_gate_is_off_until_measured(monkeypatch):
    c = make_case(1, 4, 5, 6, seed=12)
    monkeypatch.delenv(attn_cuda.FORCE_ENV, raising=False)
    assert (64, 1) in attn_cuda.MEASURED_FASTER and (128, 4) not in attn_cuda.MEASURED_FASTER
    assert "not measured" in attn_cuda._measured(*c.args())                   # 4 heads: not measured
    monkeypatch.setattr(attn_cuda, "MEASURED_FASTER", frozenset({(4, 1)}))
    assert attn_cuda._measured(*c.args()) is None
    monkeypatch.setattr(attn_cuda, "MEASURED_FASTER", frozenset())
    monkeypatch.setenv(attn_cuda.FORCE_ENV, "1")
    assert attn_cuda._measured(*c.args()) is None


def test_registered_on_sm90_only():
    provider = sparse_attn_sink.providers["cuda"]
    assert provider.targets == frozenset({"sm90"}) and provider.priority == attn_cuda.PRIORITY
    c = make_case(1, 4, 5, 6, seed=13)
    assert sparse_attn_sink.select("cpu", c.args()).provider != "cuda"
    why = provider.why_not("sm90", c.args(), {})
    assert why is not None      # CPU tensors / no GPU / no measurement: never chosen here


# -- the kernel's arithmetic, emulated on the CPU -----------------------------------------------------

@pytest.mark.parametrize("T,H,Kw,Kc,overrides,idx_dtype,pages", [
    (2, 20, 19, 37, {}, torch.int32, (4, 16)),                          # two head groups (16 + 4), empty token
    (1, 16, 40, 60, {"cluster": 4, "max_chunk": 7}, torch.int64, (6, 5)),   # 4 chunks a rank, pages not 2^k
    (3, 5, 0, 21, {"cluster": 16}, torch.int32, (4, 16)),               # ranks 11..15 own nothing, no window
    (2, 16, 9, 0, {}, torch.int64, (4, 16)),                             # no compressed entries
])
def test_emulation_matches_oracle_and_reference(T, H, Kw, Kc, overrides, idx_dtype, pages):
    c = make_case(T, H, Kw, Kc, seed=T * 100 + H + Kc, idx_dtype=idx_dtype, swa_page_size=pages[0],
                  cmp_page_size=pages[1])
    plan = attn_cuda.make_decode_plan(T, H, Kw + Kc, overrides)
    out = attn_cuda.emulate(*c.args(), plan=plan)
    check(out, c)
    assert rel_l2(out, sparse_attn_sink.reference(*c.args()).double()) < 5e-3


def test_emulation_edge_cases():
    c = make_case(2, 3, 9, 17, seed=14)
    c.swa_idx[:] = -1
    c.cmp_idx[:] = -1                                                     # nothing valid: zeros
    out = attn_cuda.emulate(*c.args(), plan=attn_cuda.make_decode_plan(2, 3, 26, {"cluster": 4}))
    assert torch.count_nonzero(out) == 0 and not out.isnan().any()
    c = make_case(2, 3, 9, 17, seed=15, empty_token=False)
    c.sink[:] = float("-inf")                                             # no sink: plain softmax
    check(attn_cuda.emulate(*c.args()), c)
    c.swa_idx[0] = -1
    c.cmp_idx[0] = -1                                                     # sink -inf and nothing valid: zeros
    assert torch.count_nonzero(attn_cuda.emulate(*c.args())[0]) == 0
    args = list(make_case(1, 4, 12, 0, seed=16).args())
    args[3] = args[4] = None                                              # a ratio-0 layer
    assert torch.equal(attn_cuda.emulate(*args), attn_cuda.emulate(*make_case(1, 4, 12, 0, seed=16).args()))


# -- compile-only (nvcc) ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_extension_source_compiles_for_sm90a_and_sm80(tmp_path):
    """nvcc builds the .cu (as the JIT does: the header found through -I) for sm_90a with --keep, and
    its PTX for sm_80, in parallel."""
    includes = [f"-I{d}" for d in attn_cuda.SPEC.include_dirs]
    source = tmp_path / "sparse_attn_decode.cu"
    source.write_text(attn_cuda.SPEC.cuda_source())
    keep = tmp_path / "90a"
    keep.mkdir()
    jobs = {
        "90a": subprocess.Popen(
            ["nvcc", "-c", "-O3", "-std=c++17", *includes, "--keep", "--keep-dir", str(keep), "-Xptxas", "-v",
             "-gencode=arch=compute_90a,code=sm_90a", str(source), "-o", str(keep / "out.o")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "80": subprocess.Popen(
            ["nvcc", "--ptx", "-O3", "-std=c++17", *includes, "-arch=compute_80", str(source),
             "-o", str(tmp_path / "sm80.ptx")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    logs = {}
    for arch, proc in jobs.items():
        logs[arch], _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"nvcc failed for sm_{arch}:\n{logs[arch]}"
    assert "warning" not in logs["80"].lower(), logs["80"]
    sm90 = (keep / "sparse_attn_decode.ptx").read_text()
    sm80 = (tmp_path / "sm80.ptx").read_text()
    for instruction in ("barrier.cluster.arrive", "barrier.cluster.wait", "mapa", "griddepcontrol.wait",
                        "griddepcontrol.launch_dependents", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                        "cp.async.cg.shared.global", "cp.async.wait_all", "cvt.rn.f16x2.e4m3x2", "ld.global.nc.v4.u32",
                        "ld.global.nc.s64", "ld.global.nc.s32"):
        assert instruction in sm90, f"{instruction} missing from the sm_90a PTX"
    for hopper in ("barrier.cluster", "mapa", "griddepcontrol", "mma.sync"):
        assert hopper not in sm80, f"Hopper code ({hopper}) in the sm_80 build"
    assert "trap" in sm80
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", logs["90a"])
    assert sorted(int(re.search(r"kernelILi(\d+)E", k).group(1)) for k in kernels) == [1, 2, 4, 8, 16]
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", logs["90a"])
    assert len(frames) == len(kernels) and all(f == ("0", "0") for f in frames), "a kernel spills or uses a stack"
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", logs["90a"])]
    assert len(registers) == len(kernels) and max(registers) <= 128     # __launch_bounds__(256, 2)


# -- GPU ----------------------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def built():
    """Build the extension once (skip without nvcc / before sm90; a failed build fails)."""
    from fusegraph.kernels import _cuda_jit as jit
    reason = jit.cuda_missing()
    if reason:
        pytest.skip(reason)
    device = torch.device("cuda")
    if jit.arch_of(device)[0] < 9:
        pytest.skip("the decode kernel needs sm90 (clusters)")
    jit.load(attn_cuda.SPEC, device)
    return device


@pytest.fixture
def poisoned(monkeypatch):
    def filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(attn_cuda, "_new_output", filled)


def run_cuda(c, monkeypatch, **overrides) -> torch.Tensor:
    monkeypatch.setattr(attn_cuda, "OVERRIDES", dict(overrides))
    assert attn_cuda._supports(*c.args()) is None, attn_cuda._supports(*c.args())
    out = attn_cuda.sparse_attn_sink_cuda(*c.args())
    torch.cuda.synchronize()
    return out


def check_all(out: torch.Tensor, c, plan_overrides: dict | None = None) -> None:
    """fp64 oracle (+ zeros for empty tokens, every element written), the reference, the emulation."""
    check(out, c)
    assert rel_l2(out, sparse_attn_sink.reference(*c.args()).double()) < 5e-3
    cpu = c.to("cpu")
    T, H, _ = c.q.shape
    plan = attn_cuda.make_decode_plan(T, H, c.swa_idx.shape[1] + c.cmp_idx.shape[1], plan_overrides)
    emulated = attn_cuda.emulate(*cpu.args(), plan=plan)
    assert rel_l2(out.cpu(), emulated.double()) < 2e-3    # only mma summation order / exp2 ulps differ


def dsv4_case(T, H, Kc, seed, idx_dtype=torch.int32, cmp_page_size=64):
    return make_case(T, H, 128, Kc, seed=seed, swa_rows=4096, cmp_rows=8192, swa_page_size=64,
                     cmp_page_size=cmp_page_size, idx_dtype=idx_dtype).to("cuda")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("H,Kc", [FLASH, PRO], ids=["flash", "pro"])
@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_gpu_dsv4_sizes(built, monkeypatch, poisoned, H, Kc, T, idx_dtype):
    c = dsv4_case(T, H, Kc, seed=T * 7 + H, idx_dtype=idx_dtype)
    out = run_cuda(c, monkeypatch)
    check_all(out, c)
    assert torch.equal(out, run_cuda(c, monkeypatch))      # fixed partition and merge order: same bits


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("overrides,cmp_page_size", [
    ({}, 64),                                  # 400 entries: 16 ranks of 25
    ({"cluster": 8}, 48),                      # 8 ranks of 50, pages of 48 (the division path)
    ({"cluster": 4, "max_chunk": 30}, 48),     # 4 chunks of 25 a rank
    ({"cluster": 16, "max_chunk": 9}, 64),     # 3 chunks (9, 9, 7) a rank
    ({"cluster": 1}, 64),                      # no split: one CTA walks 400 entries in 5 chunks
    ({"cluster": 2}, 64),
])
def test_gpu_lists_not_multiple_of_split(built, monkeypatch, poisoned, overrides, cmp_page_size):
    """4 tokens (one empty), 100 window + 300 compressed entries with invalid ones and duplicates."""
    c = make_case(4, 64, 100, 300, seed=80 + len(overrides) + cmp_page_size, swa_rows=1024, cmp_rows=2048,
                  swa_page_size=64, cmp_page_size=cmp_page_size).to("cuda")
    check_all(run_cuda(c, monkeypatch, **overrides), c, overrides)


@pytest.mark.gpu
@needs_gpu
def test_gpu_heads_not_multiple_of_16_and_tiny_lists(built, monkeypatch, poisoned):
    c = make_case(3, 20, 7, 5, seed=90, swa_rows=64, cmp_rows=64, swa_page_size=64, cmp_page_size=48).to("cuda")
    check_all(run_cuda(c, monkeypatch), c)
    c = make_case(2, 40, 3, 0, seed=91, swa_rows=64, cmp_rows=64, swa_page_size=64, cmp_page_size=64).to("cuda")
    check_all(run_cuda(c, monkeypatch, cluster=16), c, {"cluster": 16})   # most ranks own nothing


@pytest.mark.gpu
@needs_gpu
def test_gpu_all_invalid_no_compressed_no_tokens(built, monkeypatch, poisoned):
    c = dsv4_case(3, 64, 512, seed=60)
    c.swa_idx[1] = -1
    c.cmp_idx[:] = -1                          # token 1: nothing; the others: window only
    out = run_cuda(c, monkeypatch)
    check_all(out, c)
    assert torch.count_nonzero(out[1]) == 0
    args = list(c.args())
    args[3] = args[4] = None                   # ratio 0
    out0 = attn_cuda.sparse_attn_sink_cuda(*args)
    c.cmp_idx = c.cmp_idx[:, :0]
    check_all(out0, c)
    c.sink[:] = float("-inf")
    c.swa_idx[:] = -1                          # nothing anywhere and no sink: zeros, no NaN
    assert torch.count_nonzero(attn_cuda.sparse_attn_sink_cuda(*c.args())) == 0
    empty = dsv4_case(0, 64, 512, seed=61)
    assert attn_cuda.sparse_attn_sink_cuda(*empty.args()).shape == (0, 64, 512)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("H,Kc", [FLASH, PRO], ids=["flash", "pro"])
def test_gpu_cuda_graph_replay(built, monkeypatch, H, Kc):
    """Capture at T = 1 on a side stream; new inputs copied into the captured buffers give the eager result."""
    c = dsv4_case(1, H, Kc, seed=70)
    args = c.args()
    attn_cuda.sparse_attn_sink_cuda(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attn_cuda.sparse_attn_sink_cuda(*args)
    for seed in (71, 72):
        fresh = dsv4_case(1, H, Kc, seed=seed)
        for dst, src in zip(args, fresh.args()):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        check(out, c)
        assert torch.equal(out, attn_cuda.sparse_attn_sink_cuda(*args))


@pytest.mark.gpu
@needs_gpu
def test_gpu_dispatch_only_when_forced(built, monkeypatch):
    from fusegraph import targets
    c = dsv4_case(1, 64, 512, seed=73)
    target = targets.detect()
    monkeypatch.delenv(attn_cuda.FORCE_ENV, raising=False)
    if (64, 1) in attn_cuda.MEASURED_FASTER:   # measured: the default picks it
        assert sparse_attn_sink.select(target, c.args()).provider == "cuda"
    monkeypatch.setattr(attn_cuda, "MEASURED_FASTER", frozenset())
    selection = sparse_attn_sink.select(target, c.args())
    assert selection.provider != "cuda"
    assert any(r.provider == "cuda" and "not measured" in r.reason for r in selection.rejected)
    monkeypatch.setenv(attn_cuda.FORCE_ENV, "1")
    assert sparse_attn_sink.select(target, c.args()).provider == "cuda"
    check(sparse_attn_sink(*c.args()), c)      # through torch.ops.fusegraph.sparse_attn_sink
