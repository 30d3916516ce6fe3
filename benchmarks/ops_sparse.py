"""Benchmarks of the sparse-attention side: sparse_attn_sink (F8) and gather_dequant (F8a).

``cases()`` lists the entries for the shared harness (``benchmarks/harness.py``, being written;
until it lands each entry is a :class:`BenchCase`: name, T, ``make_inputs(device) -> args``,
``eager`` (the torch reference), ``fused`` (the Triton provider), ``bytes_floor``).

Decode shapes: batch T in {1, 8, 64, 512}; "flash" = 64 heads, top-k 512 compressed rows, "pro" =
128 heads, top-k 1024; both + the 128-row sliding window. Every token reads its own rows (as in a
decode batch of different sequences), all indices valid, pages of 64 tokens. Byte floor = every
touched cache row read once (584 B) + q read + output written.

Targets (issue 8): >= 70 % of copy bandwidth at batch >= 64; at batch 1 <= 2x the floor time
(floor bytes / copy bandwidth) + 5 us.

Run standalone on a GPU::

    python benchmarks/ops_sparse.py                 # all cases, cold-L2 do_bench + CUDA-graph replay
    python benchmarks/ops_sparse.py --sweep         # also try alternative attention plans
    python benchmarks/ops_sparse.py --only flash --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
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


@dataclass(frozen=True)
class BenchCase:
    name: str
    T: int
    make_inputs: Callable[[torch.device], tuple]
    eager: Callable[..., Any]
    fused: Callable[..., Any]
    bytes_floor: int


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
                bytes_floor=attn_floor(T, H, topk)))
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


def measure(case: BenchCase, device: torch.device, copy_gbs: float, plan_label: str = "default",
            with_eager: bool = True) -> Row:
    args = case.make_inputs(device)
    fused = case.fused(*args)
    eager_us = diff = None
    if with_eager:
        expected = case.eager(*args)
        diff = (fused.float() - expected.float()).abs().max().item()
        eager_us = time_cold_us(lambda: case.eager(*args))
        del expected
    fused_us = time_cold_us(lambda: case.fused(*args))
    try:
        graph_us = time_graph_us(lambda: case.fused(*args))
    except Exception as exc:  # report, keep going
        print(f"  graph timing failed for {case.name}: {exc}", file=sys.stderr)
        graph_us = None
    gbs = case.bytes_floor / (fused_us * 1e-6) / 1e9
    floor_us = case.bytes_floor / (copy_gbs * 1e9) * 1e6
    if case.name.startswith("sparse_attn_sink") and case.T == 1:
        best = min(x for x in (fused_us, graph_us) if x is not None)
        target, met = f"<= {2 * floor_us + 5:.1f} us", best <= 2 * floor_us + 5
    elif case.T >= 64:
        target, met = ">= 70% copy BW", gbs >= 0.7 * copy_gbs
    else:
        target, met = "-", None
    return Row(case.name, plan_label, eager_us, fused_us, graph_us, case.bytes_floor, gbs, 100 * gbs / copy_gbs,
               target, met, diff)


# Alternative attention plans tried by --sweep (fields of plan.AttnPlan, plus "native" for FP8 decode).
SWEEP = (
    {"block_h": 32},
    {"block_h": 32, "num_warps": 4},
    {"block_h": 64, "num_warps": 4},
    {"block_n": 16},
    {"block_n": 64},
    {"num_stages": 1},
    {"num_stages": 3},
    {"max_splits": 16},
    {"max_splits": 8},
    {"max_splits": 1},
    {"native": False},
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="substring filter on case names")
    parser.add_argument("--sweep", action="store_true", help="also time alternative attention plans")
    parser.add_argument("--no-eager", action="store_true", help="skip the torch reference")
    parser.add_argument("--json", default="", help="write the rows to this file")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    from fusegraph.kernels.gather_dequant import triton_fp8
    device = torch.device("cuda")
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"device: {torch.cuda.get_device_name()}  copy bandwidth: {copy_gbs:.0f} GB/s")
    rows: list[Row] = []
    for case in cases():
        if opts.only not in case.name:
            continue
        variants: list[dict] = [{}]
        if opts.sweep and case.name.startswith("sparse_attn_sink"):
            variants += list(SWEEP)
        for variant in variants:
            native = variant.get("native")
            attn_plan.OVERRIDES.clear()
            attn_plan.OVERRIDES.update({k: v for k, v in variant.items() if k != "native"})
            triton_fp8.FORCE_NATIVE_FP8 = native
            label = ",".join(f"{k}={v}" for k, v in variant.items()) or "default"
            try:
                row = measure(case, device, copy_gbs, label, with_eager=not opts.no_eager and not variant)
            except Exception as exc:
                print(f"{case.name} [{label}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            finally:
                attn_plan.OVERRIDES.clear()
                triton_fp8.FORCE_NATIVE_FP8 = None
            rows.append(row)
            eager = f"{row.eager_us:9.1f}" if row.eager_us is not None else "        -"
            graph = f"{row.fused_graph_us:8.1f}" if row.fused_graph_us is not None else "       -"
            print(f"{row.name:34s} {label:28s} eager {eager} us  fused {row.fused_us:8.1f} us  graph {graph} us  "
                  f"{row.gbs:7.0f} GB/s {row.pct_copy:5.1f}%  target {row.target} "
                  f"{'' if row.target_met is None else ('MET' if row.target_met else 'MISSED')}"
                  + (f"  max|diff| {row.max_abs_diff:.3g}" if row.max_abs_diff is not None else ""))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs,
                       "rows": [asdict(r) for r in rows]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
