"""CUDA KV writers (set_mla_kv_buffer, store_fp8_paged): variants, dispatch, gates, JIT cache, compile check, GPU bytes.

CPU: the providers' availability reasons, the launch variants (``Variant`` specs), the measured
dispatch tables (``Dispatch``, the ``measured`` gate, the ``FUSEGRAPH_CUDA_COPY`` override), the
launch plan (rows per warp task, warps per CTA, grid, hint, bulk staging limit), the kernel's row
division rule, the alignment gates (with the reason a row falls back to Triton), the build cache
key (sources and the shared headers), the benchmark's cases, byte floors and suggestions, and,
when nvcc is on the machine, a compile-only build of the extension's CUDA translation unit (both
``.cu`` files with the shared headers, as the JIT builds it) for sm_90a (bulk copies, grid-dependency
control and every cache hint in the PTX, every task shape instantiated, no spills) and the PTX of
sm_80 (Hopper code compiled out).

GPU (``-m gpu``): every instantiated task shape (1, 2, 4, 8 rows x vector copy with each cache hint,
bulk copy, set_mla's tma copy) with flat grids, persistent grids and capped grids whose warps loop, against the torch
reference, byte for byte, on caches filled with random bytes: untouched bytes keep them, padding
slots (-1) write nothing; T = 0, 1, odd T, 4099, 16383/16384; int32/int64 slots; other row widths
(FP8 NSA rows, 4-byte parts, 4 KB rows in several passes); strided row views; PDL on and off;
CUDA-graph capture and dispatch through ``torch.ops``.
"""
from __future__ import annotations

import functools
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
from fusegraph.kernels.set_mla_kv_buffer import triton as set_mla_triton
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
    table = kw.Dispatch(((0, "triton"), (1024, "vector"), (16384, "vector/r8/w4/flat/stream")), source="test")
    assert [table.writer(n) for n in (0, 1, 1023, 1024, 16383, 16384, 10 ** 9)] == \
        ["triton", "triton", "triton", "vector", "vector", "vector/r8/w4/flat/stream", "vector/r8/w4/flat/stream"]
    assert table.uses_cuda and table.priority() > 20
    assert kw.copy_variant(table, 20000) == kw.Variant("vector", rows=8, warps=4, grid="flat", hint="stream")
    only_triton = kw.Dispatch(((0, "triton"),), source="test")
    assert not only_triton.uses_cuda and only_triton.priority() < 20
    for steps, message in ((((1, "vector"),), "start at 0"), (((0, "vector"), (0, "bulk")), "ascending"),
                           (((0, "dma"),), "unknown writers"), (((0, "vector/r3"),), "unknown writers"),
                           (((0, "bulk/stream"),), "unknown writers")):
        with pytest.raises(ValueError, match=message):
            kw.Dispatch(steps, source="test")


# -- launch variants ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,expected", [
    ("vector", kw.Variant()),
    ("bulk", kw.Variant("bulk")),
    ("vector/r4/w4/flat/stream", kw.Variant("vector", 4, 4, "flat", "stream")),
    ("vector/stream/flat/w16/r8", kw.Variant("vector", 8, 16, "flat", "stream")),  # any order
    ("bulk/r2/w8/persistent/nc/c132", kw.Variant("bulk", 2, 8, "persistent", "nc", 132)),
    ("tma/r8/w4/flat", kw.Variant("tma", 8, 4, "flat")),
])
def test_variant_specs(spec, expected):
    variant = kw.Variant.parse(spec)
    assert variant == expected
    assert kw.Variant.parse(variant.spec) == variant  # the canonical spec round-trips
    assert kw.Variant.parse(variant) is variant


@pytest.mark.parametrize("spec,message", [
    ("dma", "unknown copy"), ("vector/r3", "rows per task"), ("vector/w17", "warps per CTA"),
    ("vector/w0", "warps per CTA"), ("vector/fast", "unknown part"), ("vector/r2/r4", "twice"),
    ("bulk/plain", "nc hint only"), ("tma/stream", "nc hint only"), ("vector/c0", "CTA cap"),
    ("vector/flat/persistent", "twice"),
])
def test_variant_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        kw.Variant.parse(spec)


@pytest.mark.parametrize("module,args", [(set_mla_cuda, set_mla_args), (store_cuda, store_args)])
def test_measured_gate_and_override(module, args, monkeypatch):
    monkeypatch.delenv(kw.COPY_ENV, raising=False)
    monkeypatch.setattr(module, "DISPATCH", kw.Dispatch(((0, "triton"), (3, "bulk")), source="H200 test run"))
    gate = module._measured
    assert "Triton measured" in gate(*args(T=2)) and "H200 test run" in gate(*args(T=2))
    assert gate(*args(T=3)) is None
    assert module.copy_variant(2) == kw.Variant("vector") and module.copy_variant(3) == kw.Variant("bulk")
    monkeypatch.setenv(kw.COPY_ENV, "vector")  # forcing a copy forces the CUDA provider too
    assert gate(*args(T=2)) is None and module.copy_variant(3) == kw.Variant("vector")
    monkeypatch.setenv(kw.COPY_ENV, "vector/r8/w2/flat/plain")  # any variant spec
    assert module.copy_variant(1) == kw.Variant("vector", 8, 2, "flat", "plain")
    monkeypatch.setenv(kw.COPY_ENV, "vector/r5")  # not a variant: ignored
    assert "Triton measured" in gate(*args(T=2)) and module.copy_variant(3) == kw.Variant("bulk")


def test_selection_follows_the_table(monkeypatch):
    """With the CUDA provider usable (pretended), dispatch sends each row count where the table says."""
    monkeypatch.delenv(kw.COPY_ENV, raising=False)
    monkeypatch.setattr(kw, "available", lambda: None)
    monkeypatch.setattr(store_cuda, "DISPATCH", kw.Dispatch(((0, "triton"), (4, "vector")), source="test"))
    provider = STORE.providers["cuda"]
    assert "Triton measured" in provider.why_not("sm90", meta(*store_args(T=3)), {})
    assert provider.why_not("sm90", meta(*store_args(T=4)), {}) is None


# -- launch plan ----------------------------------------------------------------------------------------
def test_launch_plan_defaults():
    sms = 132
    plan = kw.plan
    assert plan(1, sms, 8) == kw.LaunchPlan(1, 1)              # one warp on one SM
    assert plan(64, sms, 8) == kw.LaunchPlan(1, 1)             # 64 one-warp CTAs
    assert plan(1024, sms, 8) == kw.LaunchPlan(1, 4)           # ~2 CTAs of 4 warps a SM
    assert plan(4096, sms, 8) == kw.LaunchPlan(1, 8)           # one row per task below MULTI_ROW_FROM
    assert plan(kw.MULTI_ROW_FROM, sms, 8) == kw.LaunchPlan(kw.MULTI_ROWS, 8)
    assert plan(16384, sms, 8) == kw.LaunchPlan(2, 8)          # 2 rows a task, persistent, nc
    assert plan(16384, sms, 1) == kw.LaunchPlan(1, 8)          # capped by what the row allows
    assert plan(0, sms, 8) == kw.LaunchPlan(1, 1)


def test_launch_plan_follows_the_variant():
    sms, V = 132, kw.Variant.parse
    assert kw.plan(16384, sms, 8, V("vector/r8/w4/flat/stream")) == kw.LaunchPlan(8, 4, False, "stream")
    assert kw.plan(16384, sms, 4, V("vector/r8/w16")) == kw.LaunchPlan(4, 16)             # row allows 4
    assert kw.plan(16384, sms, 2, V("vector/r8")) == kw.LaunchPlan(2, 8)
    assert kw.plan(5, sms, 8, V("vector/r4/persistent/c3")) == kw.LaunchPlan(4, 1, True, "nc", "vector", 3)
    assert kw.plan(16384, sms, 8, V("vector/stream"), hints=("nc",)) == kw.LaunchPlan(2, 8)  # not instantiated
    # bulk, tma: a CTA's staging fits 48 KB (8 rows of 1152 bytes: 5 warps; 576-byte rows: 10; the tma
    # copy's barriers take 128 bytes of it), then rows shrink
    assert kw.plan(16384, sms, 8, V("bulk/r8/w16/flat"), 1152) == kw.LaunchPlan(8, 5, False, "nc", "bulk")
    assert kw.plan(16384, sms, 8, V("bulk/r8/w16/flat"), 576) == kw.LaunchPlan(8, 10, False, "nc", "bulk")
    assert kw.plan(16384, sms, 8, V("bulk/r8/w2"), 8192) == kw.LaunchPlan(4, 1, True, "nc", "bulk")
    assert kw.plan(64, sms, 8, V("bulk"), 1152) == kw.LaunchPlan(1, 1, True, "nc", "bulk")
    assert kw.plan(16384, sms, 8, V("tma/r8/w8/flat"), 1152) == kw.LaunchPlan(8, 5, False, "nc", "tma")
    assert kw.plan(16384, sms, 8, V("tma/r4/w16/flat"), 1536) == kw.LaunchPlan(4, 7, False, "nc", "tma")


def test_launch_plan_binding_arguments():
    """LaunchPlan.args is the tail of both bound functions' signatures (and plan_of's), in order."""
    plan = kw.LaunchPlan(4, 16, False, "stream", "vector", 7)
    assert plan.args(True) == (4, 16, 0, False, 2, 7, True)
    assert kw.LaunchPlan(1, 1, copy="tma").args(False)[2] == 2
    tail = ("int64_t rows_per_task, int64_t warps, int64_t copy, bool persistent, int64_t hint, int64_t max_ctas, "
            "bool pdl")
    flat = " ".join(kw.BINDING.split())
    assert flat.count(tail) == 3  # plan_of and the two bound functions
    assert [kw.HINTS.index(h) for h in ("plain", "nc", "stream")] == [0, 1, 2]  # fg_kv::Hint
    header = (kw.HEADER_DIR / "kv_writer_args.h").read_text()
    assert all(f"{name} = {i}" in header for i, name in enumerate(("kHintPlain", "kHintNc", "kHintStream")))
    assert all(f"{name} = {i}" in header for i, name in enumerate(("kCopyVector", "kCopyBulk", "kCopyTma")))


def test_row_division_rule():
    """The kernel's row of vector i in a several-row task: umulhi(i, floor(2^32 / n) + 1), exact for
    every row width a several-row task may have (n <= 576 vectors, i < 32 * 18)."""
    for n in range(2, 577):
        magic = (1 << 32) // n + 1
        i = torch.arange(32 * 18, dtype=torch.int64)
        assert torch.equal((i * magic) >> 32, i // n), n


def test_set_mla_rows_per_task_limits():
    fits = set_mla_cuda.max_rows_per_task
    assert fits(DSV4_ROW, 16) == 8                       # 72 vectors a row: 8 rows = 576 = 32 * 18
    assert fits(656, 16) == 8                            # FP8 NSA row: 41 vectors
    assert fits(1280, 16) == 2 and fits(1296, 16) == 1   # 80 vectors: 2 rows = 160 = 32 * 5; 81: one row
    assert fits(2048, 16) == 1 and fits(1536, 16) == 1   # 128 / 96 vectors: 2 rows exceed 32 * 5
    assert fits(4096, 16) == 1
    assert fits(DSV4_ROW, 4) == 1                        # 4-byte vectors: one row a task
    for row_bytes in range(16, 4097, 16):                # whatever it picks is one pass of the .cu's chunk
        rows = fits(row_bytes, 16)
        assert rows == 1 or rows * (row_bytes // 16) <= 32 * set_mla_cuda.CHUNK[rows]


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
    far = torch.empty_strided((4, 512), (set_mla_cuda.MAX_INPUT_STRIDE // 2 + 8, 1), dtype=torch.bfloat16,
                              device="meta")
    assert "64 MB apart" in gate(*meta(buf, loc), far, rope.to("meta"))        # 32-bit offsets in a task
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
    with pytest.raises(ValueError, match="sm90"):
        set_mla_cuda.launch(*set_mla_args(), variant="tma/r8")
    with pytest.raises(ValueError, match="unknown copy"):
        store_cuda.launch(*store_args(), variant="dma")


# -- benchmark byte floors ------------------------------------------------------------------------------
@pytest.mark.parametrize("op,per_row", [("set_mla_kv_buffer", 1152 + 4 + 1152), ("store_fp8_paged", 1024 + 8 + 584)])
def test_benchmark_floor_is_inputs_read_once_plus_rows_written_once(op, per_row):
    writer = next(w for w in ops_hopper.WRITER_OPS if w.name == op)
    for T in (1, 65):
        args = writer.make_inputs(T, torch.device("cpu"))
        assert ops_hopper.floor_bytes(op, args) == ops_hopper.floor_for(op, T) == T * per_row
        slots = args[1]
        assert slots.unique().numel() == T and int(slots.max()) < ops_hopper.cache_slots(T)  # distinct, in the cache


def test_benchmark_paged_slots_are_page_runs():
    """The paged layout: T distinct slots of the cache, each page's slots in order, pages shuffled."""
    P = ops_hopper.PAGE_SIZE
    torch.manual_seed(0)
    for T in (1, P - 1, 3 * P + 5, 16 * P):
        slots = ops_hopper._slots(T, torch.device("cpu"), torch.int64, "paged")
        assert slots.unique().numel() == T and int(slots.max()) < ops_hopper.cache_slots(T)
        pages = slots // P
        assert torch.equal(slots % P, torch.arange(T) % P)              # in-page rows in order, from row 0
        assert bool((pages.view(-1)[:T // P * P].view(-1, P) == pages[:T // P * P:P, None]).all())  # one page a run
    assert not torch.equal(pages[::P], torch.arange(16))                # pages shuffled (16! orders)
    with pytest.raises(ValueError, match="slot layout"):
        ops_hopper._slots(4, torch.device("cpu"), torch.int64, "sorted")


def test_benchmark_suggests_dispatch_steps():
    times = {1: {"triton": 1.2, "vector": 1.3, "bulk": 1.4}, 64: {"triton": 1.3, "vector": 1.28, "bulk": 1.4},
             1024: {"triton": 2.0, "vector": 1.5, "bulk": 1.6}, 16384: {"triton": 14.0, "vector": 9.0, "bulk": 8.0}}
    assert ops_hopper.suggest_steps(times) == ((0, "triton"), (1024, "vector"), (16384, "bulk"))  # 64: within margin
    assert ops_hopper.suggest_steps({1: {"triton": 1.0}}) == ((0, "triton"),)
    sweep = {4096: {"triton": 4.0, "vector": 4.2, "vector/r2/w8/flat": 3.5},
             16384: {"triton": 12.0, "vector/r8/w4/flat": 10.0}}
    steps = ops_hopper.suggest_steps(sweep)
    assert steps == ((0, "vector/r2/w8/flat"), (16384, "vector/r8/w4/flat"))
    kw.Dispatch(steps, source="test")  # a suggestion is a valid table


def test_benchmark_suggests_triton_programs():
    Config = set_mla_triton.Config
    programs = ops_hopper.suggest_programs({1: "triton", 1024: "triton", 4096: "triton/r8/w4", 16384: "triton/r8/w4"})
    assert programs == ((0, Config(1)), (1024, Config(4)), (4096, Config(8, 4)))
    assert Config.parse("triton/r16/w8/stream/early") == Config(16, 8, True, True)
    assert Config.parse(Config(8, 4, True).spec) == Config(8, 4, True)
    for bad in ("triton/r3", "cuda/r4", "triton/fast"):
        with pytest.raises(ValueError):
            Config.parse(bad)


def test_benchmark_cases():
    """Base cases for benchmarks.ops; the command's plan: the goal row count first, every sweep spec
    valid, unique names per row count, 80 % goals at 16384 rows only."""
    base = ops_hopper.hopper_cases((), ["flash"])
    paged = [c for c in base if ops_hopper.key_of(c.name) == "store_fp8_paged@paged"]
    assert {c.T for c in base} == set(ops_hopper.ROWS) and len(base) == (4 + 3) * len(ops_hopper.ROWS) + len(paged)
    assert len(paged) == 3 * len(ops_hopper.PAGED_ROWS) and all(c.op == "store_fp8_paged" for c in paged)
    planned = ops_hopper.planned_cases()
    assert planned[0].T == ops_hopper.GOAL_ROWS and planned[-1].T == 1
    assert len({(c.name, c.T) for c in planned}) == len(planned)
    assert all(c.goals for c in planned if c.T == ops_hopper.GOAL_ROWS)
    assert not any(c.goals for c in planned if c.T != ops_hopper.GOAL_ROWS)
    for spec in ops_hopper.CUDA_SWEEP + ops_hopper.CUDA_SUBSET + ops_hopper.PAGED_SWEEP:
        assert kw.Variant.parse(spec).spec == spec
    for spec in ops_hopper.TRITON_SWEEP + ops_hopper.TRITON_SUBSET:
        assert set_mla_triton.Config.parse(spec).spec == spec
    labels = {ops_hopper.label_of(c.name) for c in planned if c.op == "store_fp8_paged"}
    assert not any(label.startswith(("triton/", "cuda_tma")) for label in labels)  # no Triton shapes, no tma copy
    assert any(ops_hopper.label_of(c.name).startswith("cuda_tma/") for c in planned if c.op == "set_mla_kv_buffer")
    assert ops_hopper.writer_of("cuda_vector/r4/w4/flat") == "vector/r4/w4/flat"
    assert ops_hopper.writer_of("cuda_bulk") == "bulk" and ops_hopper.writer_of("triton/r8/w4") == "triton"


def test_benchmark_summary_lines():
    """The summary turns results into the base table, the ranked sweep and valid lines to paste."""
    from benchmarks import harness

    def result(name, T, us, err=0.0):
        r = harness.CaseResult(name, name.split("+")[0], "flash", T, fused_us=us, max_rel_err=err)
        r.floor_pct_copy = 100.0 * ops_hopper.floor_for(r.op, T) / (us * 1e-6) / 4.2e12
        return r

    run = ops_hopper.Run(results=[
        result("set_mla_kv_buffer+triton", 16384, 12.0), result("set_mla_kv_buffer+cuda_vector", 16384, 13.0),
        result("set_mla_kv_buffer+cuda_bulk", 16384, 13.5), result("set_mla_kv_buffer+triton/r8/w4", 16384, 11.5),
        result("set_mla_kv_buffer+cuda_vector/r8/w4/flat", 16384, 10.5),
        result("set_mla_kv_buffer+cuda_vector/r4/w4/flat/plain", 16384, 9.0, err=0.5),  # wrong bytes: never picked
        result("store_fp8_paged+triton", 16384, 20.0), result("store_fp8_paged+cuda_vector", 16384, 9.4),
    ])
    run.copies[("set_mla_kv_buffer", 16384)] = ops_hopper.CopyReference(18_900_000, 10.0, (2048, 4), 3780.0)
    text = ops_hopper.summarize(run, 4200.0, "test")
    assert "DISPATCH = kw.Dispatch(((0, 'vector/r8/w4/flat'),), source='test')" in text
    assert "DISPATCH = kw.Dispatch(((0, 'vector'),), source='test')" in text
    assert "PROGRAMS = ((0, Config(rows=8, warps=4, stream=False, early=False)),)" in text
    assert "FAILED cuda_vector/r4/w4/flat/plain" in text and "95%same" in text


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
    assert [h.name for h in kw.SPEC.headers()] == ["kv_writer.cuh", "kv_writer_args.h"]
    assert set(kw.SPEC.functions) == {"set_mla_kv_buffer", "store_fp8_paged"}
    for name in kw.SPEC.functions:
        assert f"void {name}(torch::Tensor" in kw.SPEC.binding


# -- compile-only check (CI, when nvcc is on the machine) ------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_extension_source_compiles_for_sm90a_and_sm80(tmp_path):
    """nvcc builds the extension's CUDA translation unit (both .cu files joined, the shared headers
    found through -I, as the JIT does) for sm_90a, and its PTX for sm_80 (enough to see the Hopper
    code compiled out, at a fraction of the time); --keep leaves the sm_90a PTX to inspect."""
    source = tmp_path / "kv_writers.cu"
    source.write_text(kw.SPEC.cuda_source())
    includes = [f"-I{d}" for d in kw.SPEC.include_dirs]
    keep = tmp_path / "90a"
    keep.mkdir()
    jobs = {  # the two builds run in parallel
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
        logs[arch], _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"nvcc failed for sm_{arch}:\n{logs[arch]}"
    assert (keep / "out.o").stat().st_size > 0
    sm90 = (keep / "kv_writers.ptx").read_text()  # one arch a build: no arch suffix
    sm80 = (tmp_path / "sm80.ptx").read_text()
    for instruction in ("cp.async.bulk.global.shared::cta.bulk_group", "fence.proxy.async.shared::cta",
                        "cp.async.bulk.wait_group.read", "cp.async.bulk.wait_group", "griddepcontrol.wait",
                        "griddepcontrol.launch_dependents", "ld.global.nc.L1::no_allocate.v4.u32",
                        "ld.global.cs.v4.u32", "st.global.cs.v4.u32", "st.global.cs.v2.u32", "ld.global.v4.u32",
                        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes", "mbarrier.try_wait.parity",
                        "mbarrier.arrive.expect_tx", "mbarrier.init"):
        assert instruction in sm90, f"{instruction} missing from the sm_90a PTX"
    assert "cp.async.bulk" not in sm80 and "griddepcontrol" not in sm80 and "mbarrier" not in sm80, \
        "Hopper code in the sm_80 build"
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", logs["90a"])
    # set_mla: 16-byte vectors x rows 1, 2, 4, 8 x (3 hints + bulk), 4-byte vectors x (vector, bulk), tma x
    # rows 1, 2, 4, 8; store: rows 1, 2, 4, 8 x (3 hints + bulk)
    assert sum("set_mla_kernel" in k for k in kernels) == 18 and sum("set_mla_tma_kernel" in k for k in kernels) == 4
    assert sum("store_fp8_kernel" in k for k in kernels) == 16
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", logs["90a"])
    assert len(frames) == len(kernels) and all(f == ("0", "0") for f in frames), "a kernel spills or uses a stack"
    # the register caps of fg_kv::kMinCtas: <= 64 up to 4 rows (one wave of 4-row tasks at 16384 rows)
    registers = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'.*?Used (\d+) registers", logs["90a"], re.S)
    shapes = []
    for name, count in registers:  # set_mla_kernel<vec, rows, hint, bulk>, store_fp8_kernel<rows, hint, bulk>
        shape = re.search(r"set_mla_kernelILi\d+ELi(\d)ELi\dELb(\d)", name) or \
            re.search(r"store_fp8_kernelILi(\d)ELi\dELb(\d)", name) or re.search(r"set_mla_tma_kernelILi(\d)E()", name)
        rows, staged = int(shape.group(1)), shape.group(2) != "0"
        shapes.append((rows, staged))
        if rows <= 4 and not staged:
            assert int(count) <= 64, f"{name} uses {count} registers"
    assert len(shapes) == len(kernels) and {rows for rows, _ in shapes} == {1, 2, 4, 8}


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


# -- every instantiated task shape ------------------------------------------------------------------------
# (copy, rows per task, hint) as the .cu files instantiate them: 16 shapes an op, and set_mla's tma copy
TASK_SHAPES = [f"vector/r{r}/{h}" for r in (1, 2, 4, 8) for h in kw.HINTS] + [f"bulk/r{r}" for r in (1, 2, 4, 8)]
SET_MLA_SHAPES = TASK_SHAPES + [f"tma/r{r}" for r in (1, 2, 4, 8)]
STORE_COPIES = ("vector", "bulk")  # (its "tma" runs the vector copy: test_store_tma_runs_the_vector_copy)
# how each row count is launched: a partial task on one-warp CTAs; a persistent grid capped at 7 CTAs
# (its warps loop over many tasks, the last partial); a flat grid of 16-warp CTAs
GRID_OF_ROWS = {5: "flat/w1", 4099: "persistent/w4/c7", 16383: "flat/w16"}


# -- set_mla_kv_buffer ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def set_mla_case(T, loc_dtype, dtype=torch.bfloat16, nope=512, rope=64, views=True, seed=0):
    """(initial buffer, loc, k_nope, k_rope, expected buffer) on the GPU, cached: the shape tests share
    them. A random cache (untouched rows keep their bytes), nope/rope as views of a wider row when
    ``views`` and the kernel takes them (else contiguous), padding slots at 0, T/2, T-1 and every 97th."""
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(seed + T + nope)
    S = 2 * T + 8
    buf = random_bytes((S, nope + rope), dtype, g, device)
    rows = random_bytes((T, nope + rope + 8), dtype, g, device)
    k_nope, k_rope = rows[:, :nope], rows[:, nope:nope + rope]
    loc = slots(T, S, loc_dtype, g, device, invalid=(0, T // 2, T - 1))
    if not views or set_mla_cuda._supports(buf, loc, k_nope, k_rope) is not None:  # e.g. 4-byte aligned rows
        k_nope, k_rope = k_nope.contiguous(), k_rope.contiguous()
    assert set_mla_cuda._supports(buf, loc, k_nope, k_rope) is None
    expected = buf.cpu().clone()
    SET_MLA.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    return buf, loc, k_nope, k_rope, expected.to(device)


def check_set_mla(variant, T, loc_dtype, **case):
    initial, loc, k_nope, k_rope, expected = set_mla_case(T, loc_dtype, **case)
    buf = initial.clone()
    set_mla_cuda.launch(buf, loc, k_nope, k_rope, variant=variant)
    torch.cuda.synchronize()
    assert torch.equal(buf.view(torch.uint8), expected.view(torch.uint8)), f"{variant} at T={T}: bytes differ"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", kw.VARIANTS)
@pytest.mark.parametrize("dtype,nope,rope", [(torch.bfloat16, 512, 64), (torch.uint8, 528, 128),
                                             (torch.float32, 5, 3), (torch.bfloat16, 6, 2)])
@pytest.mark.parametrize("T,loc_dtype,pdl", [(0, torch.int64, "1"), (1, torch.int32, "1"), (37, torch.int64, "0"),
                                             (3001, torch.int32, "1"), (16384, torch.int64, "1")])
def test_set_mla_matches_reference(built, variant, dtype, nope, rope, T, loc_dtype, pdl, monkeypatch):
    """The default launch plan of both copies, row widths of 16-byte and 4-byte vectors, PDL on/off."""
    monkeypatch.setenv("FUSEGRAPH_PDL", pdl)
    check_set_mla(variant, T, loc_dtype, dtype=dtype, nope=nope, rope=rope)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", SET_MLA_SHAPES)
@pytest.mark.parametrize("T,loc_dtype", [(5, torch.int32), (4099, torch.int64), (16383, torch.int32)])
def test_set_mla_task_shapes(built, shape, T, loc_dtype):
    """Every instantiation (rows x hint x copy) on DSV4 rows, with flat, capped persistent and wide grids."""
    check_set_mla(f"{shape}/{GRID_OF_ROWS[T]}", T, loc_dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", ["vector/r8/flat", "vector/r4/stream/persistent/c3", "vector/r2/plain/flat",
                                     "bulk/r8/flat", "bulk/r2/persistent/c3", "tma/r8/flat", "tma/r2/persistent/c3"])
@pytest.mark.parametrize("dtype,nope,rope,views", [
    (torch.uint8, 528, 128, False),   # FP8 NSA row: 41 16-byte vectors, 8 rows a task fit one pass
    (torch.uint8, 4000, 96, False),   # 4 KB rows, 16-byte vectors: one row a task, 3 passes
    (torch.uint8, 4000, 96, True),    # the same as views of 4104-byte rows: 4-byte vectors, 11 passes
    (torch.float32, 5, 3, True),      # 4-byte vectors: one row a task, nc hint
    (torch.bfloat16, 0, 8, False),    # no nope part, one vector a row
])
def test_set_mla_other_widths(built, variant, dtype, nope, rope, views):
    """Rows other than DSV4's under several-row variants: the plan caps rows and hints to what is
    instantiated for the width, the bytes stay exact."""
    check_set_mla(variant, 1001, torch.int64, dtype=dtype, nope=nope, rope=rope, views=views)


@pytest.mark.gpu
@needs_gpu
def test_set_mla_offsets_beyond_2gb(built):
    S = (2 ** 31 + 2 ** 27) // DSV4_ROW
    buf = torch.zeros(S, 576, dtype=torch.bfloat16, device=built)
    g = torch.Generator().manual_seed(3)
    k_nope, k_rope = random_bytes((5, 512), torch.bfloat16, g, built), random_bytes((5, 64), torch.bfloat16, g, built)
    loc = torch.tensor([S - 1, S - 4000, -1, 7, S - 2], dtype=torch.int32, device=built)
    for variant in ("vector/r4", "bulk/r4", "vector/r8/flat/stream", "tma/r8/flat"):
        buf.zero_()
        set_mla_cuda.launch(buf, loc, k_nope, k_rope, variant=variant)
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


def page_runs(T, num_pages, page_size, dtype, g, device, invalid=()):
    """T slots as a paged-attention engine hands them out: pages in random order, each page's slots in
    order, starting 3 rows into the first page (so warp tasks straddle page ends), entries at
    ``invalid`` (and every 97th) set to -1."""
    pages = torch.randperm(num_pages, generator=g)
    loc = (pages[:, None] * page_size + torch.arange(page_size)).flatten()[3:3 + T].to(dtype)
    assert loc.numel() == T
    for i in (*invalid, *range(3, T, 97)):
        if 0 <= i < T:
            loc[i] = -1
    return loc.to(device)


@functools.lru_cache(maxsize=None)
def store_case(T, page_size, loc_dtype, views=False, runs=False):
    """(k_nope, k_rope, loc on the GPU; expected cache for POISONS[0], written-bytes mask), cached;
    ``runs``: slots in page runs (``page_runs``), else scattered."""
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(T * 7 + page_size)
    if views:  # nope / rope as the two parts of one kv row
        kv = (torch.randn(T, 512, generator=g) * torch.logspace(-3, 1, 512)).to(torch.bfloat16).to(device)
        nope, rope = kv[:, :448], kv[:, 448:]
    else:
        nope = (torch.randn(T, 448, generator=g) * torch.logspace(-3, 1, 448)).to(torch.bfloat16).to(device)
        rope = torch.randn(T, 64, generator=g).to(torch.bfloat16).to(device)
    num_pages = max(2, -(-3 * T // page_size))
    if runs:
        loc = page_runs(T, num_pages, page_size, loc_dtype, g, device, invalid=(1, T - 1))
    else:
        loc = slots(T, num_pages * page_size, loc_dtype, g, device, invalid=(1, T - 1))
    expected = torch.full((num_pages, _fp8.PagedLayout(page_size).bytes_per_page), POISONS[0], dtype=torch.uint8)
    STORE.reference(expected, loc.cpu(), nope.cpu(), rope.cpu(), page_size, QUANT_EPS)
    return nope, rope, loc, expected.to(device), written_mask(num_pages, page_size, loc).to(device)


def check_store(variant, T, page_size, loc_dtype, views=False, runs=False):
    """Two runs on caches poisoned with different bytes: untouched bytes keep the poison, every byte of a
    written slot is written (the same in both runs), and the bytes are the reference's."""
    nope, rope, loc, expected, mask = store_case(T, page_size, loc_dtype, views, runs)
    caches = []
    for poison in POISONS:
        cache = torch.full_like(expected, poison)
        store_cuda.launch(cache, loc, nope, rope, page_size, QUANT_EPS, variant=variant)
        caches.append(cache)
    torch.cuda.synchronize()
    assert bool((caches[1][~mask] == POISONS[1]).all()), f"{variant}: bytes outside the written slots changed"
    assert torch.equal(caches[0][mask], caches[1][mask]), f"{variant}: some byte of a written slot was not written"
    assert torch.equal(caches[0], expected), f"{variant}: cache bytes differ from the reference"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", STORE_COPIES)
@pytest.mark.parametrize("T,page_size,loc_dtype", [(0, 4, torch.int64), (1, 1, torch.int32), (5, 3, torch.int64),
                                                   (37, 64, torch.int32), (3001, 64, torch.int64),
                                                   (16384, 64, torch.int32)])
@pytest.mark.parametrize("views", [False, True])
def test_store_matches_reference_bytes(built, variant, T, page_size, loc_dtype, views):
    """The default launch plan of both copies; pages of 1, 3, 4, 64 tokens; nope/rope as views."""
    check_store(variant, T, page_size, loc_dtype, views)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", TASK_SHAPES)
@pytest.mark.parametrize("T,page_size,loc_dtype", [(5, 5, torch.int64), (4099, 64, torch.int32),
                                                   (16383, 256, torch.int64)])
def test_store_task_shapes(built, shape, T, page_size, loc_dtype):
    """Every instantiation (rows x hint x copy), with flat, capped persistent and wide grids; pages of a
    power of two (shift) and not (division)."""
    check_store(f"{shape}/{GRID_OF_ROWS[T]}", T, page_size, loc_dtype, views=T == 4099)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", [f"bulk/r{r}" for r in (1, 2, 4, 8)] + ["vector/r8/nc", "vector/r4/stream"])
@pytest.mark.parametrize("T,page_size,loc_dtype", [(5, 5, torch.int64), (4099, 64, torch.int32),
                                                   (16383, 8, torch.int64), (3001, 6, torch.int32)])
def test_store_page_runs(built, shape, T, page_size, loc_dtype):
    """Slots in page runs (the bulk copy writes a task whose slots are one run of a page with one copy):
    runs that straddle page ends, pages shorter than a task, padding inside runs."""
    check_store(f"{shape}/{GRID_OF_ROWS.get(T, 'flat/w4')}", T, page_size, loc_dtype, runs=True)


@pytest.mark.gpu
@needs_gpu
def test_store_tma_runs_the_vector_copy(built):
    check_store("tma/r4/flat", 4099, 64, torch.int32)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", STORE_COPIES)
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
    for variant in ("vector/r4", "bulk/r4", "vector/r8/flat/stream"):
        store_cuda.launch(cache, loc, nope, rope, page_size, QUANT_EPS, variant=variant)
        assert torch.equal(_fp8.dequantize_paged(cache, loc[keep], page_size).cpu(), want)
    assert bool((cache[num_pages // 2] == 0xAB).all())
