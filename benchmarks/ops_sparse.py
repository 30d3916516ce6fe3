"""Benchmarks of the sparse-attention side: sparse_attn_sink (F8) and gather_dequant (F8a).

``cases()`` lists the entries for the shared harness (``benchmarks/harness.py``, being written;
until it lands each entry is a :class:`BenchCase`: name, T, ``make_inputs(device) -> args``,
``eager`` (the torch reference), ``fused`` (the Triton provider), ``bytes_floor``).

Decode shapes: batch T in {1, 8, 64, 512}; "flash" = 64 heads, top-k 512 compressed rows, "pro" =
128 heads, top-k 1024; both + the 128-row sliding window. Every token reads its own rows (as in a
decode batch of different sequences), all indices valid, pages of 64 tokens. Byte floor = every
touched cache row read once (584 B) + q read + output written.

Targets (issue 8): >= 70 % of copy bandwidth at batch >= 64; at batch 1 <= 2x the floor time
(floor bytes / copy bandwidth) + 5 us. Next to the byte floor every attention case prints its
compute floor: per token ``2 * H * (window + topk) * 512 * 2`` FLOP (QK and PV: MQA reads each row
once for all heads) at the dense bf16 tensor-core peak (``--peak-tflops``; 989 on H100/H200 SXM),
and the share of that peak the 70 %-of-copy-bandwidth time would need (> 100 %: the bandwidth
target is out of reach at that shape whatever the kernel does).

``--sweep`` (sparse_attn_sink at T in 1, 8, 64; see ``SWEEP``): the default plan (the path
``plan.py`` picks), the two-kernel path, the one-launch path with block_h 16/32/64 x block_n
32/64, and a few one-launch knobs (group_h 8, two tiles per split, bf16 partials, both); T >= 64
also gets the two-kernel path with 32-head blocks. Rows print the plan that ran
(``1L``: one launch, ``2K``: attention + combine kernels) with registers and spills.

Run standalone on a GPU::

    python benchmarks/ops_sparse.py                 # all cases, cold-L2 do_bench + CUDA-graph replay
    python benchmarks/ops_sparse.py --sweep         # also try alternative attention plans
    python benchmarks/ops_sparse.py --only flash --json out.json
    python benchmarks/ops_sparse.py --sweep --precompile 12   # compile all plans in 12 processes first
    python -m benchmarks.ops_sparse --sweep --precompile 16 --only sparse_attn --no-eager
    ncu -k regex:sparse_attn -s 1 -c 1 python benchmarks/ops_sparse.py --once --only flash/T512
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from fusegraph.kernels.gather_dequant import triton as gd_triton
from fusegraph.kernels.gather_dequant.reference import TOKEN_BYTES, gather_dequant
from fusegraph.kernels.sparse_attn_sink import plan as attn_plan
from fusegraph.kernels.sparse_attn_sink import triton as attn_triton
from fusegraph.kernels.sparse_attn_sink.reference import sparse_attn_sink
from fusegraph.kernels._fp8 import PagedLayout

WINDOW = 128
PAGE_SIZE = 64
BATCHES = (1, 8, 64, 512)
MODELS = {"flash": (64, 512), "pro": (128, 1024)}   # heads, compressed top-k
GATHER_ROWS = (128, 4096, 65536)
SWEEP_BATCHES = (1, 8, 64)     # batches that get every attention variant under --sweep
# dense bf16 tensor-core peak (TFLOPS) by device name; --peak-tflops overrides
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H20", 148.0),
               ("B200", 2250.0), ("A100", 312.0))
DEFAULT_PEAK_TFLOPS = 989.0


@dataclass(frozen=True)
class BenchCase:
    name: str
    T: int
    make_inputs: Callable[[torch.device], tuple]
    eager: Callable[..., Any]
    fused: Callable[..., Any]
    bytes_floor: int
    flops: int = 0          # attention: QK + PV tensor-core work (0: not compute-relevant)


def random_cache(num_rows: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """A paged FP8 cache of valid random rows (no NaN codes, scales 2^-11..2^-6), built on device."""
    layout = PagedLayout(PAGE_SIZE)
    pages = -(-num_rows // PAGE_SIZE)
    cache = torch.empty(pages, layout.bytes_per_page, dtype=torch.uint8, device=device)
    rows = cache[:, :PAGE_SIZE * 576].view(pages, PAGE_SIZE, 576)
    magnitude = torch.randint(0, 0x7F, (pages, PAGE_SIZE, 448), device=device, generator=gen, dtype=torch.uint8)
    sign = torch.randint(0, 2, (pages, PAGE_SIZE, 448), device=device, generator=gen, dtype=torch.uint8) << 7
    rows[..., :448] = magnitude | sign
    rope = torch.randn(pages, PAGE_SIZE, 64, device=device, generator=gen).bfloat16()
    rows[..., 448:] = rope.view(torch.uint8)
    scales = cache[:, PAGE_SIZE * 576:PAGE_SIZE * 584].view(pages, PAGE_SIZE, 8)
    scales.copy_(torch.randint(116, 122, (pages, PAGE_SIZE, 8), device=device, generator=gen, dtype=torch.uint8))
    return cache


def attn_inputs(T: int, H: int, topk: int, device: torch.device, seed: int = 0) -> tuple:
    gen = torch.Generator(device=device).manual_seed(seed)
    swa_cache = random_cache(T * WINDOW, device, gen)
    cmp_cache = random_cache(T * 2 * topk, device, gen)   # each sequence has 2*topk blocks, top-k picks half
    swa_idx = torch.arange(T * WINDOW, device=device, dtype=torch.int32).view(T, WINDOW)
    pick = torch.rand(T, 2 * topk, device=device, generator=gen).argsort(-1)[:, :topk]
    cmp_idx = (pick + torch.arange(T, device=device)[:, None] * 2 * topk).to(torch.int32)
    q = torch.randn(T, H, 512, device=device, generator=gen).bfloat16()
    sink = torch.randn(H, device=device, generator=gen)
    angles = torch.rand(T, 32, device=device, generator=gen) * 6.3
    return (q, swa_cache, swa_idx, cmp_cache, cmp_idx, sink, angles.cos(), angles.sin(), 512 ** -0.5,
            PAGE_SIZE, PAGE_SIZE)


def attn_floor(T: int, H: int, topk: int) -> int:
    return T * (WINDOW + topk) * TOKEN_BYTES + 2 * (T * H * 512 * 2)


def attn_flops(T: int, H: int, topk: int) -> int:
    """QK^T and PV of every head over every row: 2 dots x 2 FLOP per multiply-add."""
    return T * 2 * H * (WINDOW + topk) * 512 * 2


def gather_inputs(n: int, device: torch.device, seed: int = 0) -> tuple:
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = random_cache(2 * n, device, gen)
    slots = torch.randperm(2 * n, device=device, generator=gen)[:n].to(torch.int32)
    return cache, slots, PAGE_SIZE


def cases() -> list[BenchCase]:
    out = []
    for model, (H, topk) in MODELS.items():
        for T in BATCHES:
            out.append(BenchCase(
                name=f"sparse_attn_sink/{model}/T{T}", T=T,
                make_inputs=lambda device, T=T, H=H, topk=topk: attn_inputs(T, H, topk, device),
                eager=sparse_attn_sink.reference, fused=attn_triton.sparse_attn_sink_triton,
                bytes_floor=attn_floor(T, H, topk), flops=attn_flops(T, H, topk)))
    for n in GATHER_ROWS:
        out.append(BenchCase(
            name=f"gather_dequant/n{n}", T=n, make_inputs=lambda device, n=n: gather_inputs(n, device),
            eager=gather_dequant.reference, fused=gd_triton.gather_dequant_triton,
            bytes_floor=n * (TOKEN_BYTES + 512 * 2)))
    return out


# -- standalone timing (until benchmarks/harness.py exists) ----------------------------------------

def time_cold_us(fn: Callable[[], Any]) -> float:
    """Median µs per call with L2 flushed before each call (triton.testing.do_bench)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def time_graph_us(fn: Callable[[], Any], calls: int = 20, replays: int = 20) -> float:
    """µs per call when ``calls`` calls are replayed from one CUDA graph (launch cost as in serving)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * replays)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    us = time_cold_us(lambda: dst.copy_(src))
    return 2 * nbytes / (us * 1e-6) / 1e9


@dataclass
class Row:
    name: str
    plan: str
    eager_us: float | None
    fused_us: float
    fused_graph_us: float | None
    floor_bytes: int
    gbs: float
    pct_copy: float
    target: str
    target_met: bool | None
    max_abs_diff: float | None
    rel_l2: float | None = None          # vs the torch reference (bf16 outputs)
    kernel: str = ""                     # attention: registers / spills / shared memory / grid plan
    floor_us: float = 0.0                # byte floor at the measured copy bandwidth
    compute_floor_us: float = 0.0        # FLOP at the dense bf16 peak (attention)


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def attn_kernel_stats(args: tuple) -> str:
    """Plan and compile report (registers, spills, shared memory) of the attention kernel for ``args``."""
    q, swa_idx, cmp_idx = args[0], args[2], args[4]
    T, H, _ = q.shape
    plan = attn_plan.make_plan(T, H, swa_idx.shape[1], cmp_idx.shape[1], torch.cuda.get_device_properties(
        q.device).multi_processor_count, gpu=True)
    out = torch.empty_like(q)
    kernel = attn_triton.launch(plan, *args, out)
    regs, spills = getattr(kernel, "n_regs", "?"), getattr(kernel, "n_spills", "?")
    shared = getattr(getattr(kernel, "metadata", None), "shared", "?")
    path = "1L" if plan.one_launch else "2K"
    group = f"/g{plan.group_h}" if plan.one_launch and plan.group_h else ""
    extra = " bf16part" if plan.one_launch and plan.partial_dtype == "bf16" else ""
    grid = T * -(-H // plan.heads_per_program) * plan.splits
    return (f"{path} h{plan.block_h}{group} n{plan.block_n} w{plan.num_warps} s{plan.num_stages}{extra} "
            f"splits {plan.splits}x{plan.tiles_per_split} grid {grid} regs {regs} spills {spills} smem {shared}")


def floor_us(case: BenchCase, copy_gbs: float) -> float:
    return case.bytes_floor / (copy_gbs * 1e9) * 1e6


def compute_floor_us(case: BenchCase, peak_tflops: float) -> float:
    return case.flops / (peak_tflops * 1e12) * 1e6


def floors_line(case: BenchCase, copy_gbs: float, peak_tflops: float) -> str:
    """Byte floor, compute floor and what the 70 %-of-copy-bandwidth target asks of the tensor cores."""
    byte_us, flop_us = floor_us(case, copy_gbs), compute_floor_us(case, peak_tflops)
    line = (f"  floors {case.name}: bytes {case.bytes_floor / 1e6:.2f} MB -> {byte_us:.2f} us at {copy_gbs:.0f} GB/s; "
            f"compute {case.flops / 1e9:.2f} GFLOP -> {flop_us:.2f} us at {peak_tflops:.0f} TFLOPS")
    if case.T == 1:
        return line + f"; target <= 2 x bytes + 5 = {2 * byte_us + 5:.1f} us"
    target_us = byte_us / 0.7
    need = 100 * flop_us / target_us
    if need > 100:
        verdict = "UNREACHABLE (the compute floor alone is above the target time)"
    elif need > 75:
        verdict = (f"practically unreachable: needs {need:.0f}% of the dense peak sustained, with the FP8 "
                   f"gather, dequant and softmax fully hidden")
    else:
        verdict = f"needs {need:.0f}% of the dense peak, with the FP8 gather, dequant and softmax overlapped"
    return line + f"; 70% copy BW = {target_us:.2f} us: {verdict}"


def measure(case: BenchCase, device: torch.device, copy_gbs: float, args: tuple, expected: torch.Tensor | None,
            eager_us: float | None, plan_label: str = "default", peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> Row:
    fused = case.fused(*args)
    torch.cuda.synchronize()
    diff = err = None
    if expected is not None:
        diff = (fused.float() - expected.float()).abs().max().item()
        err = rel_l2(fused, expected)
    del fused
    stats = attn_kernel_stats(args) if case.name.startswith("sparse_attn_sink") else ""
    fused_us = time_cold_us(lambda: case.fused(*args))
    try:
        graph_us = time_graph_us(lambda: case.fused(*args))
    except Exception as exc:  # report, keep going
        print(f"  graph timing failed for {case.name}: {exc}", file=sys.stderr)
        graph_us = None
    best = min(x for x in (fused_us, graph_us) if x is not None)
    gbs = case.bytes_floor / (fused_us * 1e-6) / 1e9
    floor = floor_us(case, copy_gbs)
    if case.name.startswith("sparse_attn_sink") and case.T == 1:
        target, met = f"<= {2 * floor + 5:.1f} us", best <= 2 * floor + 5
    elif case.T >= 64:
        target, met = ">= 70% copy BW", gbs >= 0.7 * copy_gbs
    else:
        target, met = "-", None
    return Row(case.name, plan_label, eager_us, fused_us, graph_us, case.bytes_floor, gbs, 100 * gbs / copy_gbs,
               target, met, diff, err, stats, floor, compute_floor_us(case, peak_tflops))


# Alternative plans tried by --sweep. Attention: fields of plan.AttnPlan, plus "native" (FP8 decode
# path). Gather: "rows" / "gwarps" force one GatherConfig. {} (the default plan) always runs first.
ONE_LAUNCH = {"path": "one_launch"}
SWEEP = (
    {"path": "two_kernel"},                                     # the previous default (64 x 64, 3 stages)
    *({**ONE_LAUNCH, "block_h": h, "block_n": n} for h in (16, 32, 64) for n in (32, 64)),
    {**ONE_LAUNCH, "block_h": 16, "block_n": 64, "group_h": 8},   # 8 heads a program: half the partials a finisher reads
    {**ONE_LAUNCH, "block_h": 16, "block_n": 64, "min_tiles_per_split": 2, "num_stages": 2},   # fewer, deeper splits
    {**ONE_LAUNCH, "block_h": 16, "block_n": 64, "partial_dtype": "bf16"},   # half the partial bytes
    {**ONE_LAUNCH, "block_h": 16, "block_n": 64, "group_h": 8, "partial_dtype": "bf16"},   # a quarter
)
LARGE_T_SWEEP = (
    {"path": "two_kernel", "block_h": 32},   # T >= 64: 32-head blocks, half the accumulator (64 x 512 spills)
)
GATHER_SWEEP = (
    {"rows": 8, "gwarps": 4},                  # = the default for n > 256: a repeat
    {"rows": 16, "gwarps": 8},
)


def apply_variant(variant: dict) -> None:
    """Set the module-level switches for ``variant`` ({} = defaults)."""
    from fusegraph.kernels.gather_dequant import triton_fp8
    attn_plan.OVERRIDES.clear()
    attn_plan.OVERRIDES.update({k: v for k, v in variant.items() if k not in ("native", "rows", "gwarps")})
    triton_fp8.FORCE_NATIVE_FP8 = variant.get("native")
    gd_triton.CONFIG_OVERRIDE = (gd_triton.GatherConfig(rows=variant["rows"], num_warps=variant["gwarps"])
                                 if "rows" in variant else None)


def variants_for(case: BenchCase, sweep: bool) -> list[dict]:
    if not sweep:
        return [{}]
    if not case.name.startswith("sparse_attn_sink"):
        return [{}] + list(GATHER_SWEEP)
    small = list(SWEEP) if case.T in SWEEP_BATCHES else []
    return [{}] + small + (list(LARGE_T_SWEEP) if case.T >= 64 else [])


def peak_tflops_of(device_name: str) -> float:
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops
    return DEFAULT_PEAK_TFLOPS


_SHORT = {"path": "", "block_h": "h", "block_n": "n", "group_h": "g", "num_warps": "w", "num_stages": "s",
          "min_tiles_per_split": "tiles>=", "partial_dtype": "part=", "one_launch_max_fill": "fill=", "splits": "splits="}
_SHORT_PATHS = {"one_launch": "1L", "two_kernel": "2K"}


def label_of(variant: dict) -> str:
    """Short label of a variant, e.g. ``1L,h16,n64,g8`` (``1L``/``2K``: one launch / two kernels)."""
    parts = []
    for key, value in variant.items():
        value = _SHORT_PATHS.get(value, value) if key == "path" else value
        parts.append(f"{_SHORT[key]}{value}" if key in _SHORT else f"{key}={value}")
    return ",".join(parts) or "default"


def _warm(job: tuple[str, dict]) -> str:
    """Worker: compile (run once) one (case, variant); returns an error line or ''."""
    name, variant = job
    try:
        device = torch.device("cuda")
        case = next(c for c in cases() if c.name == name)
        apply_variant(variant)
        args = case.make_inputs(device)
        case.fused(*args)
        if name.startswith("sparse_attn_sink"):
            attn_kernel_stats(args)
        torch.cuda.synchronize()
        return ""
    except Exception as exc:
        return f"{name} [{label_of(variant)}] failed to compile/run: {type(exc).__name__}: {str(exc)[:300]}"


def precompile(jobs: list[tuple[str, dict]], workers: int) -> None:
    """Compile every job's kernels in parallel processes (they share Triton's on-disk cache), so
    the timed loop that follows only loads them."""
    import multiprocessing as mp
    start = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        for err in pool.imap_unordered(_warm, jobs):
            if err:
                print(err, file=sys.stderr)
    print(f"precompiled {len(jobs)} case/variant pairs in {time.time() - start:.0f} s with {workers} workers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="substring filter on case names")
    parser.add_argument("--sweep", action="store_true", help="also time alternative plans")
    parser.add_argument("--no-eager", action="store_true", help="skip the torch reference timing")
    parser.add_argument("--precompile", type=int, default=0, help="compile in this many processes first")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense bf16 tensor-core peak for the compute floor (default: by device name)")
    parser.add_argument("--once", action="store_true",
                        help="run each selected case twice and exit (a profiler target: ncu -k ... -s 1)")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    selected = [c for c in cases() if opts.only in c.name]
    if opts.once:
        for case in selected:
            args = case.make_inputs(device)
            for _ in range(2):
                case.fused(*args)
            torch.cuda.synchronize()
        return 0
    if opts.precompile:
        precompile([(c.name, v) for c in selected for v in variants_for(c, opts.sweep)], opts.precompile)
    copy_gbs = copy_bandwidth_gbs(device)
    peak = opts.peak_tflops or peak_tflops_of(torch.cuda.get_device_name())
    print(f"device: {torch.cuda.get_device_name()}  copy bandwidth: {copy_gbs:.0f} GB/s  "
          f"dense bf16 peak (compute floor): {peak:.0f} TFLOPS")
    start = time.time()
    rows: list[Row] = []
    for case in selected:
        args = case.make_inputs(device)
        expected = case.eager(*args)
        eager_us = None if opts.no_eager else time_cold_us(lambda: case.eager(*args))
        if case.flops:
            print(floors_line(case, copy_gbs, peak), flush=True)
        for variant in variants_for(case, opts.sweep):
            label = label_of(variant)
            apply_variant(variant)
            try:
                row = measure(case, device, copy_gbs, args, expected, eager_us if not variant else None, label, peak)
            except Exception as exc:
                print(f"{case.name} [{label}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            finally:
                apply_variant({})
            rows.append(row)
            eager = f"{row.eager_us:9.1f}" if row.eager_us is not None else "        -"
            graph = f"{row.fused_graph_us:8.1f}" if row.fused_graph_us is not None else "       -"
            print(f"{row.name:30s} {label:40s} eager {eager} us  fused {row.fused_us:8.1f} us  graph {graph} us  "
                  f"{row.gbs:6.0f} GB/s {row.pct_copy:5.1f}%  target {row.target} "
                  f"{'' if row.target_met is None else ('MET' if row.target_met else 'MISSED')}"
                  f"  rel {row.rel_l2:.2e}  {row.kernel}", flush=True)
        torch.cuda.empty_cache()
    print("\nbest per case (min of cold and graph µs):")
    for name in dict.fromkeys(r.name for r in rows):
        mine = [r for r in rows if r.name == name]
        default = mine[0]
        best = min(mine, key=lambda r: min(x for x in (r.fused_us, r.fused_graph_us) if x is not None))
        t = lambda r: min(x for x in (r.fused_us, r.fused_graph_us) if x is not None)
        print(f"  {name:30s} default {t(default):8.1f} ({default.pct_copy:4.1f}%)  best {t(best):8.1f} "
              f"({best.pct_copy:4.1f}%) [{best.plan}]  rel {best.rel_l2:.1e}")
    graphed = [r for r in rows if r.fused_graph_us is not None and r.name.startswith("sparse_attn_sink")]
    if graphed:
        print("\nattention, best CUDA-graph µs per case (default plan's in brackets), floors:")
    for name in dict.fromkeys(r.name for r in graphed):
        mine = [r for r in graphed if r.name == name]
        best = min(mine, key=lambda r: r.fused_graph_us)
        default = next((r for r in mine if r.plan == "default"), mine[0])
        print(f"  {name:30s} {best.fused_graph_us:8.1f} ({default.fused_graph_us:8.1f})  [{best.plan}]  "
              f"byte floor {best.floor_us:6.2f}  compute floor {best.compute_floor_us:6.2f}  target {best.target}")
    print(f"timed loop: {time.time() - start:.0f} s")
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs,
                       "rows": [asdict(r) for r in rows]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
