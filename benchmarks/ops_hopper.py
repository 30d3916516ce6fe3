"""Benchmark of the CUDA KV writers: Triton vs the CUDA variants, a launch-plan sweep, a same-size copy.

Run alone (what ``bash benchmarks/gpu_batch.sh WRITERS`` does; ~45 s of GPU time, capped by
``--budget-s``)::

    python -m benchmarks.ops_hopper --out writers.json

or, the base cases only, as part of ``python -m benchmarks.ops`` (family ``hopper``). Ops:
set_mla_kv_buffer (bf16 rows of 512 + 64, int32 slots) and store_fp8_paged (448 + 64 bf16 in; 576
FP8/bf16 bytes + 8 scale bytes out; pages of 64; int64 slots).

Cases:

* base, at ``ROWS`` = 1, 64, 1024, 4096, 16384 rows: the Triton provider (``+triton``), the CUDA
  writer's default vector copy (``+cuda_vector``), bulk copy (``+cuda_bulk``) and, set_mla_kv_buffer
  only, tma copy (``+cuda_tma``), with the launch plan the provider picks by default;
* the sweep (this module's command only), at ``GOAL_ROWS`` = 16384 every spec of ``CUDA_SWEEP`` and
  (set_mla_kv_buffer) ``TRITON_SWEEP``, at ``SUBSET_ROWS`` = 4096 the ``*_SUBSET`` ones: CUDA
  variants ``+cuda_<spec>`` (``kernels/_kv_writers.Variant``: rows per warp task 1/2/4/8, warps per
  CTA 1..16, persistent or flat grid, cache hint plain/nc/stream; the bulk and tma copies too) and Triton
  program shapes ``+triton/r8/w4...`` (``set_mla_kv_buffer/triton.Config``);
* a confirmation round: the ``CONFIRM`` fastest CUDA and Triton entries per op at 16384 rows are
  timed twice more (interleaved) and their median of three is what the summary uses.

Method: the harness's (``benchmarks/harness.py``): CUDA-graph replay of one call per input set, sets
rotated so that each replay touches at least twice the L2 (the inputs of one (op, rows) group are
shared by its cases). The cache has about as many slots as there are rows (``cache_slots``), the T
distinct slots in one of two layouts (``SLOT_LAYOUTS``): ``scattered``, a random permutation of all
slots (every row lands somewhere else: the worst case, the default of every op), and, for
store_fp8_paged at ``PAGED_ROWS`` (name suffix ``@paged``), ``paged``: whole pages in random order,
each page's slots in order, which is how paged-attention engines lay out a batch (a sequence's
tokens fill its pages one after the other; vLLM and SGLang hand out slots a page at a time). Every case's written cache is compared with the
reference's first (``err``: 0 expected, the writers being bit-exact); a case that differs is
reported and never suggested. Base cases also time eager; sweep cases do not (time).

Byte floor (``floor_bytes``, what ``%copy`` divides by the copy bandwidth): the inputs read once
plus the rows written once: set_mla_kv_buffer reads 1024 + 128 bytes and a 4-byte slot and writes
1152 bytes a row (2308 B); store_fp8_paged reads 896 + 128 bytes and an 8-byte slot and writes 576 +
8 bytes a row (1616 B). ``%copy`` (the issue's goal: >= 80 % at 16384 rows) is against the 2 GiB
device copy bandwidth. Next to it, ``same-size copy``: the time of a plain copy kernel (Triton,
16-byte accesses, best of ``COPY_BLOCKS``) moving the same bytes (floor / 2 read, floor / 2 written)
under the same graph replay with the same input rotation, and ``%same`` = that time / the writer's:
what is reachable at this transfer size (launch, ramp-up and tail of a ~10 us kernel). Context, not
the goal.

Summary (printed last, also in the JSON's meta): per op the base table, the sweep ranked, and the
lines to paste: ``DISPATCH`` for the op's ``cuda.py`` (per measured row count the fastest CUDA
variant, unless Triton is within ``MARGIN``) and, for set_mla_kv_buffer, ``PROGRAMS`` for its
``triton.py`` (the fastest Triton shape per measured row count).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from benchmarks import harness
from benchmarks.harness import BenchCase, Goal, register_family
from fusegraph import ops
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels._fp8 import PagedLayout
from fusegraph.kernels.set_mla_kv_buffer import cuda as set_mla_cuda
from fusegraph.kernels.set_mla_kv_buffer import triton as set_mla_triton
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

ROWS = (1, 64, 1024, 4096, 16384)
GOAL_ROWS, GOAL_PCT_COPY = 16384, 80.0   # issue #6: >= 80 % of copy bandwidth at 16384 rows
SUBSET_ROWS = 4096
PAGED_ROWS = (16384, 4096)               # store_fp8_paged@paged: the goal row count and the subset's
PAGE_SIZE, QUANT_EPS = 64, 1e-4
MARGIN = 0.03                            # a CUDA copy must beat Triton by this much to be suggested
CONFIRM = 3                              # entries per op and kind re-timed at GOAL_ROWS
SHOWN = 15                               # sweep entries listed per (op, rows) in the summary
BASE_LABELS = {"triton": "triton", "vector": "cuda_vector", "bulk": "cuda_bulk", "tma": "cuda_tma"}

# CUDA variants swept at GOAL_ROWS (both ops). At 16384 DSV4 rows: 8 rows a warp = 2048 warps (one
# wave at <= 128 registers), 4 rows = 4096 warps (one wave at <= 64 registers), 2 rows = 8192 warps,
# 1 row = 16384 warps (several waves: flat lets the hardware schedule them, persistent loops).
CUDA_SWEEP = (
    *(f"vector/r{r}/w{w}/flat" for r in (8, 4) for w in (1, 2, 4, 8, 16)),
    *(f"vector/r{r}/w{w}/flat" for r in (2, 1) for w in (4, 8, 16)),
    *(f"vector/r{r}/w{w}/persistent" for r, w in ((8, 4), (4, 4), (4, 8), (2, 8), (1, 8))),
    *(f"vector/r{r}/w4/flat/{h}" for r in (8, 4) for h in ("plain", "stream")),
    *(f"vector/r{r}/w16/flat/{h}" for r in (8, 4) for h in ("plain", "stream")),
    "vector/r2/w8/flat/stream",
    "bulk/r1/w8/persistent", "bulk/r1/w8/flat", "bulk/r2/w4/flat", "bulk/r4/w4/flat", "bulk/r4/w8/persistent",
    "bulk/r8/w4/flat", "bulk/r8/w8/flat", "bulk/r8/w2/flat",
    # set_mla_kv_buffer only (no registers hold the rows: occupancy bounded by the staged bytes)
    "tma/r8/w4/flat", "tma/r8/w2/flat", "tma/r4/w4/flat", "tma/r4/w8/flat", "tma/r2/w8/flat", "tma/r1/w16/flat",
    "tma/r8/w4/persistent", "tma/r2/w8/persistent",
)
# store_fp8_paged@paged (at PAGED_ROWS): the bulk copies (a run of one page's slots is one bulk copy a task)
# and the vector copies that led the scattered sweeps
PAGED_SWEEP = ("bulk/r8/w4/flat", "bulk/r8/w2/flat", "bulk/r8/w8/flat", "bulk/r4/w4/flat", "bulk/r4/w8/flat",
               "bulk/r2/w4/flat", "bulk/r8/w4/persistent", "vector/r2/w8/flat/stream", "vector/r2/w4/flat",
               "vector/r1/w4/flat", "vector/r4/w4/flat/stream")
CUDA_SUBSET = ("vector/r1/w4/flat", "vector/r1/w8/flat", "vector/r2/w4/flat", "vector/r2/w8/flat", "vector/r4/w2/flat",
               "vector/r4/w4/flat", "vector/r8/w2/flat", "vector/r4/w4/flat/stream", "vector/r1/w8/persistent",
               "bulk/r1/w8/flat", "bulk/r2/w4/flat", "tma/r4/w4/flat", "tma/r2/w8/flat", "tma/r1/w16/flat")
# Triton program shapes of set_mla_kv_buffer (the default at >= 1024 rows: 4 rows, 2 warps, nc)
TRITON_SWEEP = (  # each shape is one Triton compile (~1 s): kept to 14
    "triton/r2/w1", "triton/r2/w2", "triton/r4/w1", "triton/r4/w2", "triton/r4/w4", "triton/r8/w2", "triton/r8/w4",
    "triton/r8/w8", "triton/r16/w4", "triton/r16/w8", "triton/r4/w2/stream", "triton/r8/w4/stream",
    "triton/r4/w2/early", "triton/r8/w4/early",
)
TRITON_SUBSET = ("triton/r1/w1", "triton/r2/w1", "triton/r2/w2", "triton/r4/w4", "triton/r8/w4", "triton/r4/w2/early")
COPY_BLOCKS = ((1024, 4), (2048, 4), (4096, 8), (8192, 8))  # (int32 words a program, warps) of the copy


# -- inputs and floors --------------------------------------------------------------------------------
def cache_slots(T: int) -> int:
    """Slots of the cache a case writes into: T rounded up to whole pages (at least one page)."""
    return max(-(-T // PAGE_SIZE), 1) * PAGE_SIZE


def _slots(T: int, device: torch.device, dtype: torch.dtype, layout: str = "scattered") -> torch.Tensor:
    """T distinct slots of the cache (``cache_slots``) in ``layout`` (one of ``SLOT_LAYOUTS``)."""
    if layout == "scattered":
        return torch.randperm(cache_slots(T), device=device)[:T].to(dtype)
    if layout == "paged":
        pages = torch.randperm(cache_slots(T) // PAGE_SIZE, device=device)
        return (pages[:, None] * PAGE_SIZE + torch.arange(PAGE_SIZE, device=device)).flatten()[:T].to(dtype)
    raise ValueError(f"unknown slot layout {layout!r} (one of {SLOT_LAYOUTS})")


SLOT_LAYOUTS = ("scattered", "paged")


def set_mla_inputs(T: int, device: torch.device) -> tuple:
    buffer = torch.zeros(cache_slots(T), 576, dtype=torch.bfloat16, device=device)
    nope = torch.randn(T, 512, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (buffer, _slots(T, device, torch.int32), nope, rope)


def store_inputs(T: int, device: torch.device, layout: str = "scattered") -> tuple:
    pages = cache_slots(T) // PAGE_SIZE
    cache = torch.zeros(pages, PagedLayout(PAGE_SIZE).bytes_per_page, dtype=torch.uint8, device=device)
    nope = torch.randn(T, 448, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (cache, _slots(T, device, torch.int64, layout), nope, rope, PAGE_SIZE, QUANT_EPS)


def store_inputs_paged(T: int, device: torch.device) -> tuple:
    return store_inputs(T, device, "paged")


def floor_bytes(op: str, args: tuple) -> int:
    """Inputs read once + rows written once for the call ``op(*args)`` (every slot valid)."""
    cache, loc, nope, rope = args[:4]
    read = sum(t.numel() * t.element_size() for t in (loc, nope, rope))
    if op == "set_mla_kv_buffer":
        written = loc.numel() * cache.shape[1] * cache.element_size()
    else:  # store_fp8_paged: the 576-byte row and the 8 scale bytes of every token
        written = loc.numel() * (576 + 8)
    return read + written


def floor_for(op: str, T: int) -> int:
    """:func:`floor_bytes` of the benchmark's own inputs at T rows (from their shapes and dtypes)."""
    per_row = {"set_mla_kv_buffer": (512 + 64) * 2 + 4 + 576 * 2, "store_fp8_paged": (448 + 64) * 2 + 8 + 576 + 8}
    return T * per_row[op]


# -- cases --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WriterOp:
    name: str
    make_inputs: Callable[[int, torch.device], tuple]
    launch: Callable[..., None]
    copies: tuple[str, ...]                               # the CUDA copies it has
    triton_launch: Optional[Callable[..., None]] = None  # with a config argument (swept), if any
    layout: str = "scattered"                            # its slots (SLOT_LAYOUTS)
    rows: tuple[int, ...] = ROWS                          # the row counts of its base cases
    sweep: Optional[tuple[str, ...]] = None               # its sweep at every row count (None: CUDA_SWEEP / _SUBSET)

    @property
    def key(self) -> str:
        """Case-name prefix: the op, and the slot layout unless scattered (``store_fp8_paged@paged``)."""
        return self.name if self.layout == "scattered" else f"{self.name}@{self.layout}"


WRITER_OPS = (WriterOp("set_mla_kv_buffer", set_mla_inputs, set_mla_cuda.launch, ("vector", "bulk", "tma"),
                       set_mla_triton.launch),
              WriterOp("store_fp8_paged", store_inputs, store_cuda.launch, ("vector", "bulk")),
              WriterOp("store_fp8_paged", store_inputs_paged, store_cuda.launch, ("vector", "bulk"), layout="paged",
                       rows=PAGED_ROWS, sweep=PAGED_SWEEP))


def _cuda(launch: Callable[..., None], spec: str) -> Callable[..., None]:
    def run(*args) -> None:
        launch(*args, variant=spec)

    run.__name__ = BASE_LABELS[spec] if spec in BASE_LABELS else f"cuda_{spec}"
    return run


def _triton(op_name: str) -> Callable[..., None]:
    impl = ops.get(op_name).providers["triton"].impl

    def run(*args) -> None:
        impl(*args)

    run.__name__ = "triton"
    return run


def _triton_config(launch: Callable[..., None], spec: str) -> Callable[..., None]:
    def run(*args) -> None:
        launch(*args, config=spec)

    run.__name__ = spec
    return run


def _case(op: WriterOp, T: int, size: str, fused: Callable[..., None]) -> BenchCase:
    goals = (Goal("min_pct_copy", GOAL_PCT_COPY),) if T >= GOAL_ROWS else ()
    return BenchCase(name=f"{op.key}+{fused.__name__}", op=op.name, T=T, size=size, make_inputs=op.make_inputs,
                     eager=ops.get(op.name).reference, fused=fused, bytes_floor=floor_for(op.name, T),
                     goals=goals, compile=False, mutated=0)


def base_cases(op: WriterOp, T: int, size: str = "flash") -> list[BenchCase]:
    return [_case(op, T, size, _triton(op.name))] + [_case(op, T, size, _cuda(op.launch, copy)) for copy in op.copies]


def sweep_cases(op: WriterOp, T: int, size: str = "flash") -> list[BenchCase]:
    full = T >= GOAL_ROWS
    specs = op.sweep if op.sweep is not None else (CUDA_SWEEP if full else CUDA_SUBSET)
    cases = [_case(op, T, size, _cuda(op.launch, spec)) for spec in specs if spec.split("/")[0] in op.copies]
    if op.triton_launch is not None:
        cases += [_case(op, T, size, _triton_config(op.triton_launch, spec))
                  for spec in (TRITON_SWEEP if full else TRITON_SUBSET)]
    return cases


@register_family("hopper")
def hopper_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    """The base cases (``benchmarks.ops``); the sweep is this module's command only."""
    return [c for op in WRITER_OPS for T in op.rows for c in base_cases(op, T, sizes[0])]


def planned_cases() -> list[BenchCase]:
    """Every case of the command, in the order it runs them: the goal row count first (both ops,
    base and sweep), then the 4096-row subset, then the other base row counts (largest first), so
    that a time budget cuts the least informative ones."""
    order = [GOAL_ROWS, SUBSET_ROWS] + sorted((T for T in ROWS if T not in (GOAL_ROWS, SUBSET_ROWS)), reverse=True)
    cases = []
    for T in order:
        for op in WRITER_OPS:
            if T not in op.rows:
                continue
            cases += base_cases(op, T)
            if T in (GOAL_ROWS, SUBSET_ROWS):
                cases += sweep_cases(op, T)
    return cases


def label_of(case_name: str) -> str:
    """``"set_mla_kv_buffer+cuda_vector/r4/w4/flat"`` -> ``"cuda_vector/r4/w4/flat"``."""
    return case_name.split("+", 1)[1]


def key_of(case_name: str) -> str:
    """``"store_fp8_paged@paged+cuda_bulk"`` -> ``"store_fp8_paged@paged"`` (a ``WriterOp.key``)."""
    return case_name.split("+", 1)[0]


def writer_of(label: str) -> str:
    """Case label -> the writer a dispatch table names: ``"triton"`` for every Triton shape, else the
    CUDA variant spec (``"cuda_vector"`` -> ``"vector"``, ``"cuda_vector/r4/w4"`` -> ``"vector/r4/w4"``)."""
    return "triton" if label.startswith("triton") else label[len("cuda_"):]


# -- same-size copy -----------------------------------------------------------------------------------
if tc.HAS_TRITON:
    triton, tl = tc.triton, tc.tl

    @triton.jit
    def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


@dataclass
class CopyReference:
    """A plain copy moving ``nbytes`` read + ``nbytes`` written, timed like the writers."""

    nbytes: int          # each way
    us: float            # best over COPY_BLOCKS
    block: tuple[int, int]
    gbps: float          # (read + write) / time


def same_size_copy(total_bytes: int, device: torch.device, replays: int) -> CopyReference:
    """Time a Triton copy of ``total_bytes / 2`` bytes (rounded down to 64 bytes: a word count Triton
    sees divisible by 16, so that its masked accesses stay 16-byte vectors) under graph replay with
    rotated buffers (at least twice the L2 per replay, as the harness's input sets)."""
    n_words = max(16, (total_bytes // 2) // 64 * 16)
    nbytes = 4 * n_words
    sets_needed = max(2, min(harness.MAX_SETS, -(-harness.ROTATE_BYTES // (2 * nbytes))))
    sets = [(torch.randint(-2 ** 31, 2 ** 31 - 1, (n_words,), dtype=torch.int32, device=device),
             torch.empty(n_words, dtype=torch.int32, device=device)) for _ in range(sets_needed)]
    best: Optional[tuple[float, tuple[int, int]]] = None
    for block, warps in COPY_BLOCKS:
        def copy(src, dst, block=block, warps=warps):
            _copy_kernel[(tc.cdiv(n_words, block),)](src, dst, n_words, BLOCK=block, num_warps=warps)

        us = harness.time_graph(copy, sets, replays)
        if best is None or us < best[0]:
            best = (us, (block, warps))
    assert best is not None
    if not torch.equal(sets[0][0], sets[0][1]):
        raise RuntimeError("same-size copy reference: the copy kernel did not copy")
    del sets
    return CopyReference(nbytes, best[0], best[1], 2 * nbytes / (best[0] * 1e-6) / 1e9)


# -- running ------------------------------------------------------------------------------------------
@dataclass
class Group:
    """Input sets shared by the cases of one (op, rows) group."""

    key: tuple[str, int]
    sets: list[tuple]


def first_difference(case: BenchCase, args: tuple, fused: Callable[..., None]) -> float:
    """Run the reference and ``fused`` on copies of ``args``; the relative L2 error of the written
    cache (bytes as values; 0.0 when bit-exact)."""
    a, b = (tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in args) for _ in range(2))
    case.eager(*a)
    fused(*b)
    if torch.equal(a[0], b[0]):
        return 0.0
    return harness.max_rel_err(b[0], a[0]) or float("inf")


def run_light(case: BenchCase, group: Group, device: torch.device, replays: int, copy_gbps: float,
              with_eager: bool) -> harness.CaseResult:
    """The harness's run_case on shared input sets; eager timed only ``with_eager``."""
    r = harness.CaseResult(case.name, case.op, case.size, case.T, provider=label_of(case.name))
    try:
        fused = case.fused
        assert fused is not None
        r.n_sets = len(group.sets)
        with torch.no_grad():
            r.max_rel_err = first_difference(case, group.sets[0], fused)
            r.fused_us = harness.time_graph(fused, group.sets, replays)
            if with_eager:
                r.eager_us = harness.time_graph(case.eager, group.sets, replays)
        r.floor_bytes = r.target_bytes = case.bytes_floor or 0
        r.floor_us = r.floor_bytes / (copy_gbps * 1e9) * 1e6
        r.achieved_gbps = r.floor_bytes / (r.fused_us * 1e-6) / 1e9
        r.floor_pct_copy = r.target_pct_copy = 100.0 * r.achieved_gbps / copy_gbps
    except Exception as exc:  # one broken case must not take the run down
        r.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    r.goals = {g.label(): g.check(r) for g in case.goals}
    return r


@dataclass
class Run:
    results: list[harness.CaseResult] = field(default_factory=list)
    copies: dict[tuple[str, int], CopyReference] = field(default_factory=dict)
    confirmed: dict[str, list[float]] = field(default_factory=dict)  # case name -> the three times
    skipped: list[str] = field(default_factory=list)


def run_cases(cases: Sequence[BenchCase], device: torch.device, replays: int, copy_gbps: float, budget_s: float,
              log: Callable[[str], None], t0: float) -> Run:
    run = Run()
    group: Optional[Group] = None
    for case in cases:
        if time.time() - t0 > budget_s:
            run.skipped.append(case.name + f" T={case.T}")
            continue
        key = (key_of(case.name), case.T)
        if group is None or group.key != key:
            group = None
            torch.cuda.empty_cache()
            group = Group(key, harness.input_sets(case, device))
            try:
                run.copies[key] = same_size_copy(floor_for(case.op, case.T), device, replays)
                c = run.copies[key]
                log(f"[{time.time() - t0:6.1f}s] same-size copy {key[0]} T={case.T}: {2 * c.nbytes / 1e6:.2f} MB "
                    f"in {c.us:.2f} us ({c.gbps:.0f} GB/s, {100 * c.gbps / copy_gbps:.0f}% of copy bandwidth)")
            except Exception as exc:
                log(f"same-size copy {key[0]} T={case.T} failed: {type(exc).__name__}: {exc}")
        base = label_of(case.name) in BASE_LABELS.values()
        r = run_light(case, group, device, replays, copy_gbps, with_eager=base)
        run.results.append(r)
        status = r.error or f"{r.fused_us:.2f} us, {r.floor_pct_copy:.0f}% copy, err {r.max_rel_err:.1e}"
        log(f"[{time.time() - t0:6.1f}s] {case.name} T={case.T}: {status}")
    return run


def confirm(run: Run, cases: Sequence[BenchCase], device: torch.device, replays: int, copy_gbps: float,
            log: Callable[[str], None], t0: float) -> None:
    """Re-time the CONFIRM fastest CUDA and Triton entries per op at GOAL_ROWS twice, interleaved;
    their results then hold the median of the three timings."""
    by_name = {c.name: c for c in cases if c.T == GOAL_ROWS}
    picked: list[harness.CaseResult] = []
    for op in WRITER_OPS:
        ok = [r for r in run.results if key_of(r.name) == op.key and r.T == GOAL_ROWS and r.fused_us and not r.error
              and r.max_rel_err == 0.0]
        for triton_kind in (False, True):
            kind = sorted((r for r in ok if label_of(r.name).startswith("triton") == triton_kind),
                          key=lambda r: r.fused_us)
            picked += kind[:CONFIRM]
    if not picked:
        return
    sets: dict[str, list[tuple]] = {}
    for r in picked:
        if key_of(r.name) not in sets:
            sets[key_of(r.name)] = harness.input_sets(by_name[r.name], device)
    times = {r.name: [r.fused_us] for r in picked}
    for _ in range(2):
        for r in picked:
            times[r.name].append(harness.time_graph(by_name[r.name].fused, sets[key_of(r.name)], replays))
    for r in picked:
        r.fused_us = statistics.median(times[r.name])
        r.achieved_gbps = r.floor_bytes / (r.fused_us * 1e-6) / 1e9
        r.floor_pct_copy = r.target_pct_copy = 100.0 * r.achieved_gbps / copy_gbps
        r.goals = {g.label(): g.check(r) for g in by_name[r.name].goals}
        run.confirmed[r.name] = times[r.name]
        log(f"[{time.time() - t0:6.1f}s] confirmed {r.name}: " + " / ".join(f"{t:.2f}" for t in times[r.name])
            + f" us -> {r.fused_us:.2f} us ({r.floor_pct_copy:.0f}% copy)")


# -- summary --------------------------------------------------------------------------------------------
def suggest_steps(times: dict[int, dict[str, float]]) -> tuple[tuple[int, str], ...]:
    """Dispatch steps from ``times[T][writer]`` (us; writer ``"triton"`` or a CUDA variant spec): per
    measured T the fastest CUDA variant if it beats Triton by more than ``MARGIN``, else Triton; a step
    starts at the first T of each run of equal choices."""
    steps: list[tuple[int, str]] = []
    for T in sorted(times):
        row = times[T]
        best = min((w for w in row if w != "triton"), key=row.get, default="triton")
        if "triton" in row and not row.get(best, float("inf")) < row["triton"] * (1 - MARGIN):
            best = "triton"
        if not steps or steps[-1][1] != best:
            steps.append((0 if not steps else T, best))
    return tuple(steps) or ((0, "triton"),)


def suggest_programs(best_config: dict[int, str]) -> tuple[tuple[int, set_mla_triton.Config], ...]:
    """``PROGRAMS`` steps of set_mla_kv_buffer/triton.py from the fastest Triton spec per measured T
    (``"triton"``: the provider's default there)."""
    steps: list[tuple[int, set_mla_triton.Config]] = []
    for T in sorted(best_config):
        spec = best_config[T]
        config = set_mla_triton.program_config(T) if spec == "triton" else set_mla_triton.Config.parse(spec)
        if not steps or steps[-1][1] != config:
            steps.append((0 if not steps else T, config))
    return tuple(steps)


def _usable(r: harness.CaseResult) -> bool:
    return r.fused_us is not None and not r.error and r.max_rel_err == 0.0


def summarize(run: Run, copy_gbps: float, source: str) -> str:
    """Per op: the base table, the sweep ranked (with the same-size copy), the lines to paste."""
    lines = [f"copy bandwidth (2 GiB device copy, the goal's reference): {copy_gbps:.0f} GB/s; "
             f"goal: >= {GOAL_PCT_COPY:.0f}% at {GOAL_ROWS} rows"]
    for op in WRITER_OPS:
        mine = [r for r in run.results if key_of(r.name) == op.key]
        if not mine:
            continue
        lines.append(f"{op.key}: % of copy bandwidth (us), slots {op.layout}; same-size copy: a plain copy of the "
                     "same bytes")
        lines.append("  rows    " + "".join(f"{lab:>20s}" for lab in BASE_LABELS.values()) + "      same-size copy")
        times: dict[int, dict[str, float]] = {}
        best_triton: dict[int, tuple[float, str]] = {}
        for T in sorted({r.T for r in mine}):
            at_T = {label_of(r.name): r for r in mine if r.T == T}
            cells = "".join(f"{at_T[lab].floor_pct_copy:>11.0f}% ({at_T[lab].fused_us:5.2f})"
                            if lab in at_T and _usable(at_T[lab]) else f"{'-':>20s}" for lab in BASE_LABELS.values())
            c = run.copies.get((op.key, T))
            same = f"{c.us:8.2f} us = {100 * c.gbps / copy_gbps:3.0f}%" if c else ""
            lines.append(f"  {T:<8d}{cells}  {same}")
            for lab, r in at_T.items():
                if not _usable(r):
                    continue
                writer = writer_of(lab)
                if writer == "triton":
                    if T not in best_triton or r.fused_us < best_triton[T][0]:
                        best_triton[T] = (r.fused_us, "triton" if lab == "triton" else lab)
                    times.setdefault(T, {})["triton"] = best_triton[T][0]
                else:
                    times.setdefault(T, {})[writer] = min(r.fused_us, times.get(T, {}).get(writer, float("inf")))
        for T in sorted({r.T for r in mine if label_of(r.name) not in BASE_LABELS.values()}):
            ranked = sorted((r for r in mine if r.T == T and _usable(r)), key=lambda r: r.fused_us)
            c = run.copies.get((op.key, T))
            lines.append(f"  sweep at {T} rows, fastest first (us, % of copy bandwidth"
                         + (f", % of the same-size copy's {c.us:.2f} us" if c else "") + "; * = median of 3):")
            for r in ranked[:SHOWN]:
                same = f" {100 * c.us / r.fused_us:4.0f}%same" if c else ""
                mark = "*" if r.name in run.confirmed else " "
                lines.append(f"    {r.fused_us:6.2f}{mark} {r.floor_pct_copy:4.0f}%copy{same}  {label_of(r.name)}")
            if len(ranked) > SHOWN:
                lines.append(f"    ... {len(ranked) - SHOWN} slower, up to {ranked[-1].fused_us:.2f} us "
                             f"({label_of(ranked[-1].name)}); all in the table above and the JSON")
            bad = [r for r in mine if r.T == T and not _usable(r)]
            for r in bad:
                lines.append(f"    FAILED {label_of(r.name)}: {r.error or f'bytes differ (err {r.max_rel_err:.1e})'}")
        steps = suggest_steps(times)
        lines.append(f"  suggested for kernels/{op.name}/cuda.py:")
        lines.append(f"    DISPATCH = kw.Dispatch({steps!r}, source={source!r})")
        if op.triton_launch is not None and best_triton:
            programs = suggest_programs({T: spec for T, (_, spec) in best_triton.items()})
            lines.append(f"  suggested for kernels/{op.name}/triton.py:")
            lines.append(f"    PROGRAMS = {programs!r}")
    if run.skipped:
        lines.append(f"skipped (time budget): {len(run.skipped)} cases: " + ", ".join(run.skipped[:8])
                     + (" ..." if len(run.skipped) > 8 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops_hopper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=None, help="comma list of ops (default: both writers)")
    p.add_argument("--replays", type=int, default=50, help="graph replays per timing")
    p.add_argument("--budget-s", type=float, default=55.0,
                   help="stop starting cases after this many seconds (the rest are listed as skipped)")
    p.add_argument("--no-sweep", action="store_true", help="the base cases only")
    p.add_argument("--exclude", default="", help="comma list of label substrings to leave out (e.g. cuda_tma)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.ops_hopper: no CUDA device here", file=sys.stderr)
        return 2
    wanted = set(args.ops.split(",")) if args.ops else None
    excluded = [x for x in args.exclude.split(",") if x]
    cases = [c for c in planned_cases() if (wanted is None or c.op in wanted)
             and not (args.no_sweep and label_of(c.name) not in BASE_LABELS.values())
             and not any(x in label_of(c.name) for x in excluded)]
    device = torch.device("cuda", torch.cuda.current_device())
    meta = harness.environment(device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    log(f"{meta.get('device')} | torch {meta['torch']} | {len(cases)} cases | budget {args.budget_s:.0f} s")
    copy_gbps = harness.measure_copy_bandwidth(device)
    log(f"[{time.time() - t0:6.1f}s] copy bandwidth {copy_gbps:.0f} GB/s")
    run = run_cases(cases, device, args.replays, copy_gbps, args.budget_s, log, t0)
    confirm(run, cases, device, args.replays, copy_gbps, log, t0)
    source = f"{meta.get('device')} {meta['date'][:10]} commit {meta['git_commit'][:8]}, benchmarks/ops_hopper.py"
    summary = summarize(run, copy_gbps, source)
    if args.out:
        meta["summary"] = summary
        meta["same_size_copy"] = {f"{op}@{T}": vars(c) for (op, T), c in run.copies.items()}
        meta["confirmed"] = run.confirmed
        meta["skipped"] = run.skipped
        harness.write_json(args.out, run.results, copy_gbps, meta)
        log(f"wrote {args.out}")
    print(harness.format_table(run.results, copy_gbps))
    print()
    print(summary)
    log(f"[{time.time() - t0:6.1f}s] done")
    return 1 if any(r.error for r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
