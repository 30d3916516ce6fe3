"""Benchmark cases of the CUDA KV writers: Triton vs the CUDA vector copy vs the CUDA bulk copy.

Run alone (what ``bash benchmarks/gpu_batch.sh WRITERS`` does)::

    python -m benchmarks.ops_hopper --out writers.json

or as part of ``python -m benchmarks.ops`` (family ``hopper``). Ops: set_mla_kv_buffer (bf16 rows of
512 + 64, int32 slots) and store_fp8_paged (448 + 64 bf16 in; 576 FP8/bf16 bytes + 8 scale bytes
out; pages of 64; int64 slots) at ``ROWS`` = 1, 64, 1024, 4096, 16384 rows, each written by the
Triton provider (``+triton``), the CUDA writer with its plain 16-byte warp copy
(``+cuda_vector``) and with the bulk async copy (``+cuda_bulk``), with the launch plan the
provider would pick; at ``SWEEP_ROWS`` also with fixed rows per warp task (``+cuda_vector/r2``
...), to check that plan. Rows are fixed whatever ``--T`` says.

Method: the harness's (``benchmarks/harness.py``): CUDA-graph replay of one call per input set,
sets rotated so that each replay touches at least twice the L2. The inputs here are sized so that
the harness's rotation sees the bytes a call really touches: the cache has about as many slots as
there are rows (``cache_slots``), the T distinct random slots scattered over all of it, so a
replay of n sets moves n times the byte floor (not n small calls inside one big, mostly idle
cache that would leave the sets warm in L2).

Byte floor (``floor_bytes``, what ``%copy`` divides by the copy bandwidth): the inputs read once
plus the rows written once, nothing else: set_mla_kv_buffer reads 1024 + 128 bytes and a 4-byte
slot and writes 1152 bytes a row (2308 B); store_fp8_paged reads 896 + 128 bytes and an 8-byte
slot and writes 576 + 8 bytes a row (1616 B). (The 8-byte scale write fills a quarter of a 32-byte
sector; what the memory does with the rest is not counted.)

The harness compares the written cache with eager's (``mutated``): 0 error expected, the writers
being bit-exact. After the table, ``summarize`` prints the % of copy bandwidth of each writer by
row count and the ``DISPATCH`` line these numbers suggest for each op's ``cuda.py`` (the fastest
writer per measured row count; Triton kept unless a CUDA copy is more than ``MARGIN`` faster).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from benchmarks import harness
from benchmarks.harness import BenchCase, Goal, register_family
from fusegraph import ops
from fusegraph.kernels._fp8 import PagedLayout
from fusegraph.kernels.set_mla_kv_buffer import cuda as set_mla_cuda
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

ROWS = (1, 64, 1024, 4096, 16384)
SWEEP_ROWS = (4096, 16384)
SWEEP = (("vector", 1), ("vector", 2), ("vector", 4), ("bulk", 1), ("bulk", 4))
GOAL_ROWS, GOAL_PCT_COPY = 16384, 80.0   # issue #6: >= 80 % of copy bandwidth at 16384 rows
PAGE_SIZE, QUANT_EPS = 64, 1e-4
MARGIN = 0.03                            # a CUDA copy must beat Triton by this much to be suggested
WRITER_LABELS = {"triton": "triton", "vector": "cuda_vector", "bulk": "cuda_bulk"}


# -- inputs and floors --------------------------------------------------------------------------------
def cache_slots(T: int) -> int:
    """Slots of the cache a case writes into: T rounded up to whole pages (at least one page)."""
    return max(-(-T // PAGE_SIZE), 1) * PAGE_SIZE


def _slots(T: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.randperm(cache_slots(T), device=device)[:T].to(dtype)


def set_mla_inputs(T: int, device: torch.device) -> tuple:
    buffer = torch.zeros(cache_slots(T), 576, dtype=torch.bfloat16, device=device)
    nope = torch.randn(T, 512, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (buffer, _slots(T, device, torch.int32), nope, rope)


def store_inputs(T: int, device: torch.device) -> tuple:
    pages = cache_slots(T) // PAGE_SIZE
    cache = torch.zeros(pages, PagedLayout(PAGE_SIZE).bytes_per_page, dtype=torch.uint8, device=device)
    nope = torch.randn(T, 448, device=device).bfloat16()
    rope = torch.randn(T, 64, device=device).bfloat16()
    return (cache, _slots(T, device, torch.int64), nope, rope, PAGE_SIZE, QUANT_EPS)


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


WRITER_OPS = (WriterOp("set_mla_kv_buffer", set_mla_inputs, set_mla_cuda.launch),
              WriterOp("store_fp8_paged", store_inputs, store_cuda.launch))


def _cuda(launch: Callable[..., None], variant: str, rows_per_task: int | None) -> Callable[..., None]:
    def run(*args) -> None:
        launch(*args, variant=variant, rows_per_task=rows_per_task)

    run.__name__ = WRITER_LABELS[variant] + (f"/r{rows_per_task}" if rows_per_task else "")
    return run


def _triton(op_name: str) -> Callable[..., None]:
    impl = ops.get(op_name).providers["triton"].impl

    def run(*args) -> None:
        impl(*args)

    run.__name__ = "triton"
    return run


def _case(op: WriterOp, T: int, size: str, fused: Callable[..., None]) -> BenchCase:
    goals = (Goal("min_pct_copy", GOAL_PCT_COPY),) if T >= GOAL_ROWS else ()
    return BenchCase(name=f"{op.name}+{fused.__name__}", op=op.name, T=T, size=size, make_inputs=op.make_inputs,
                     eager=ops.get(op.name).reference, fused=fused, bytes_floor=floor_for(op.name, T),
                     goals=goals, compile=False, mutated=0)


@register_family("hopper")
def hopper_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    size = sizes[0]  # the writers do not depend on the preset
    cases = []
    for op in WRITER_OPS:
        for T in ROWS:
            cases.append(_case(op, T, size, _triton(op.name)))
            for variant in ("vector", "bulk"):
                cases.append(_case(op, T, size, _cuda(op.launch, variant, None)))
            if T in SWEEP_ROWS:
                for variant, rows_per_task in SWEEP:
                    cases.append(_case(op, T, size, _cuda(op.launch, variant, rows_per_task)))
    return cases


# -- summary --------------------------------------------------------------------------------------------
def suggest_steps(times: dict[int, dict[str, float]]) -> tuple[tuple[int, str], ...]:
    """Dispatch steps from ``times[T][writer]`` (us): per measured T the fastest writer, Triton kept
    unless a CUDA copy is more than ``MARGIN`` faster; a step starts at the first T of each run."""
    steps: list[tuple[int, str]] = []
    for T in sorted(times):
        row = times[T]
        best = min((w for w in row if w != "triton"), key=row.get, default="triton")
        if "triton" in row and not row.get(best, float("inf")) < row["triton"] * (1 - MARGIN):
            best = "triton"
        if not steps or steps[-1][1] != best:
            steps.append((0 if not steps else T, best))
    return tuple(steps) or ((0, "triton"),)


def summarize(results: Sequence[harness.CaseResult], source: str) -> str:
    """% of copy bandwidth per op, row count and writer, and the suggested ``DISPATCH`` lines."""
    lines = []
    for op in WRITER_OPS:
        times: dict[int, dict[str, float]] = {}
        pct: dict[tuple[int, str], float] = {}
        sweep: dict[int, list[str]] = {}
        for r in results:
            if r.op != op.name or r.fused_us is None:
                continue
            label = r.name.split("+", 1)[1]
            if "/" in label:
                sweep.setdefault(r.T, []).append(f"{label} {r.fused_us:.2f}us")
                continue
            writer = next(w for w, lab in WRITER_LABELS.items() if lab == label)
            times.setdefault(r.T, {})[writer] = r.fused_us
            pct[(r.T, writer)] = r.floor_pct_copy or 0.0
        if not times:
            continue
        lines.append(f"{op.name}: % of copy bandwidth (us)")
        lines.append("  rows    " + "".join(f"{WRITER_LABELS[w]:>20s}" for w in ("triton", "vector", "bulk")))
        for T in sorted(times):
            cells = "".join(f"{pct[(T, w)]:>11.0f}% ({times[T][w]:5.2f})" if w in times[T] else f"{'-':>20s}"
                            for w in ("triton", "vector", "bulk"))
            lines.append(f"  {T:<8d}{cells}")
        for T, entries in sorted(sweep.items()):
            lines.append(f"  rows per warp task at {T}: " + ", ".join(entries))
        steps = suggest_steps(times)
        lines.append(f"  suggested: DISPATCH = kw.Dispatch({steps!r}, source={source!r})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops_hopper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=None, help="comma list of ops or case names (default: both writers)")
    p.add_argument("--replays", type=int, default=50, help="graph replays per timing")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.ops_hopper: no CUDA device here", file=sys.stderr)
        return 2
    wanted = set(args.ops.split(",")) if args.ops else None
    cases = [c for c in hopper_cases((), ["flash"])
             if wanted is None or c.op in wanted or c.name in wanted or c.name.split("/")[0] in wanted]
    device = torch.device("cuda", torch.cuda.current_device())
    meta = harness.environment(device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{meta.get('device')} | torch {meta['torch']} | {len(cases)} cases")
    results, copy_gbps = harness.run_all(cases, device, args.replays, False, log)
    source = f"{meta.get('device')} {meta['date'][:10]} commit {meta['git_commit'][:8]}"
    summary = summarize(results, source)
    if args.out:
        meta["summary"] = summary
        harness.write_json(args.out, results, copy_gbps, meta)
        log(f"wrote {args.out}")
    print(harness.format_table(results, copy_gbps))
    print()
    print(summary)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
