"""Per-call time vs calls per CUDA-graph replay, for the harness's ``MIN_CALLS`` choice.

``python -m benchmarks.graph_calls`` (GPU, ~40 s with the writers' JIT build): store_fp8_paged at
16384 rows (three CUDA variants, scattered and paged slots) and the same-size Triton copy, in graphs
that call the kernel 4, 8, 32 and 64 times over 4 cold input sets (26 MB each: more than the L2
between two uses of a set), timed by ``benchmarks.harness.time_graph`` with ``min_calls`` set to
each count. The difference is the GPU-side gap between graph replays spread over the calls; the
harness's default cycles the sets to at least ``MIN_CALLS`` calls. Output of one run:
``benchmarks/results/graph_calls_h100.log``.
"""
from __future__ import annotations

import statistics
import sys
from typing import Any, Callable

import torch

from benchmarks import harness
from benchmarks import ops_hopper as oh
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

T = 16384
SETS = 4
STORE_SPECS = ("bulk/r8/w8/flat", "bulk/r8/w4/flat", "vector/r2/w8/flat/stream")


def per_call_us(fn: Callable[..., Any], sets: list[tuple], calls: int) -> float:
    """Median of three harness timings (50 replays each) of graphs making ``calls`` calls."""
    return statistics.median(harness.time_graph(fn, sets, 50, min_calls=calls) for _ in range(3))


def main() -> int:
    if not torch.cuda.is_available():
        print("benchmarks.graph_calls: no CUDA device here", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    copy_gbps = harness.measure_copy_bandwidth(dev)
    print(f"copy bandwidth {copy_gbps:.0f} GB/s")
    floor = oh.floor_for("store_fp8_paged", T)
    for layout in oh.SLOT_LAYOUTS:
        sets = [oh.store_inputs(T, dev, layout) for _ in range(SETS)]
        for spec in STORE_SPECS:
            def store(*args, spec=spec):
                store_cuda.launch(*args, variant=spec)
            for calls in (4, 8, 32, 64):
                us = per_call_us(store, sets, calls)
                print(f"{layout:9s} {spec:26s} calls/graph {calls:3d}: {us:6.2f} us  "
                      f"{100 * floor / (us * 1e-6) / (copy_gbps * 1e9):4.1f}% copy")
        del sets
    n_words = (floor // 2) // 64 * 16
    sets = [(torch.randint(-2 ** 31, 2 ** 31 - 1, (n_words,), dtype=torch.int32, device=dev),
             torch.empty(n_words, dtype=torch.int32, device=dev)) for _ in range(SETS)]
    for block, warps in oh.COPY_BLOCKS:
        def copy(src, dst, block=block, warps=warps):
            oh._copy_kernel[(-(-n_words // block),)](src, dst, n_words, BLOCK=block, num_warps=warps)
        for calls in (4, 32):
            us = per_call_us(copy, sets, calls)
            print(f"same-size copy block {block} w{warps} calls/graph {calls:3d}: {us:6.2f} us = "
                  f"{100 * 8 * n_words / (us * 1e-6) / (copy_gbps * 1e9):4.1f}% copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
