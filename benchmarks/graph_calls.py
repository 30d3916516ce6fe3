"""Per-call time vs calls per CUDA-graph replay, for the harness's ``MIN_CALLS`` choice.

``python -m benchmarks.graph_calls`` (GPU, ~40 s with the writers' JIT build): store_fp8_paged at
16384 rows (three CUDA variants, scattered and paged slots) and the same-size Triton copy, in graphs
that call the kernel 4, 8, 32 and 64 times over 4 cold input sets (26 MB each: more than the L2
between two uses of a set). The difference is the GPU-side gap between graph replays spread over
the calls; ``benchmarks.harness.time_graph`` cycles the sets to at least ``MIN_CALLS`` calls.
Output of one run: ``benchmarks/results/graph_calls_h100.log``.
"""
import statistics

import torch

from benchmarks import harness, ops_hopper as oh
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

def timed(fn, sets, replays, calls):
    def run():
        for i in range(calls):
            fn(*sets[i % len(sets)])
    graph, _ = harness.capture_graph(run)
    ms = harness.replay_times_ms(graph, replays, 2_000_000)
    return statistics.median(ms) * 1e3 / calls

if __name__ != "__main__":
    raise ImportError("benchmarks.graph_calls is a script: python -m benchmarks.graph_calls")
dev = torch.device("cuda")
copy_gbps = harness.measure_copy_bandwidth(dev)
print(f"copy bandwidth {copy_gbps:.0f} GB/s")
T = 16384
for layout in ("scattered", "paged"):
    case_sets = [oh.store_inputs(T, dev, layout) for _ in range(4)]
    for spec in ("bulk/r8/w8/flat", "bulk/r8/w4/flat", "vector/r2/w8/flat/stream"):
        fn = lambda *a, spec=spec: store_cuda.launch(*a, variant=spec)
        for calls in (4, 8, 32, 64):
            us = statistics.median(timed(fn, case_sets, 50, calls) for _ in range(3))
            pct = 100 * oh.floor_for("store_fp8_paged", T) / (us * 1e-6) / (copy_gbps * 1e9)
            print(f"{layout:9s} {spec:26s} calls/graph {calls:3d}: {us:6.2f} us  {pct:4.1f}% copy")
n_words = (oh.floor_for("store_fp8_paged", T) // 2) // 64 * 16
sets = [(torch.randint(-2**31, 2**31 - 1, (n_words,), dtype=torch.int32, device=dev), torch.empty(n_words, dtype=torch.int32, device=dev)) for _ in range(4)]
for block, warps in oh.COPY_BLOCKS:
    def copy(src, dst, block=block, warps=warps):
        oh._copy_kernel[(-(-n_words // block),)](src, dst, n_words, BLOCK=block, num_warps=warps)
    for calls in (4, 32):
        us = statistics.median(timed(copy, sets, 50, calls) for _ in range(3))
        print(f"same-size copy block {block} w{warps} calls/graph {calls:3d}: {us:6.2f} us = {100 * 8 * n_words / (us * 1e-6) / (copy_gbps * 1e9):4.1f}% copy")
