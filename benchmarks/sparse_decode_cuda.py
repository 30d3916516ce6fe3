"""Decode sparse_attn_sink: the CUDA cluster kernel vs the Triton default under CUDA-graph replay.

Cases: flash (64 heads, window 128 + top-k 512) and pro (128 heads, 128 + 1024) at T = 1, 2, 4, the
inputs of ``benchmarks/ops_sparse.py`` (pages of 64, every index valid, each token its own rows).
Each provider variant is captured as one CUDA graph of ``--calls`` (32) calls, call i on its own
input set i (own caches, q, indices), and timed two ways: "cold" replays each preceded by an L2 flush
(a 256 MB memset outside the timed events: every call reads its rows from HBM), "warm" replays back to
back. µs per call = replay time / calls. Printed next to them: the byte floor (every touched cache
row once + q + output, at the measured copy bandwidth) and, at T = 1, the issue's target 2 x floor
+ 5 µs. Variants: ``triton`` (the provider dispatch picks today), ``cuda`` (the default plan),
``cuda/c8`` (clusters of 8, portable), ``cuda/c16`` when the default is not 16.

Correctness: each variant's output on input set 0 against the torch reference (rel. L2).

The summary ends with the ``MEASURED_FASTER`` line to paste into ``kernels/sparse_attn_sink/cuda.py``
(the (heads, T) cases where the CUDA kernel's best variant beat Triton cold and warm).

    python -m benchmarks.sparse_decode_cuda [--only flash] [--calls 32] [--replays 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from benchmarks import harness
from benchmarks.ops_sparse import MODELS, WINDOW, attn_floor, attn_inputs, copy_bandwidth_gbs, rel_l2
from fusegraph.kernels.sparse_attn_sink import cuda as attn_cuda
from fusegraph.kernels.sparse_attn_sink import triton as attn_triton
from fusegraph.kernels.sparse_attn_sink.reference import sparse_attn_sink

BATCHES = (1, 2, 4)
FLUSH_BYTES = 256 << 20


@dataclass
class Row:
    case: str
    heads: int
    T: int
    variant: str
    plan: str
    cold_us: float | None
    warm_us: float | None
    rel_l2: float | None
    floor_us: float
    target_us: float | None
    error: str = ""


def variants() -> list[tuple[str, Callable[..., Any], dict]]:
    return [("triton", attn_triton.sparse_attn_sink_triton, {}),
            ("cuda", attn_cuda.sparse_attn_sink_cuda, {}),
            ("cuda/c8", attn_cuda.sparse_attn_sink_cuda, {"cluster": 8}),
            ("cuda/c16", attn_cuda.sparse_attn_sink_cuda, {"cluster": 16})]


def plan_label(name: str, args: tuple) -> str:
    if not name.startswith("cuda"):
        return "triton default"
    q, swa_idx, cmp_idx = args[0], args[2], args[4]
    p = attn_cuda.make_decode_plan(q.shape[0], q.shape[1], swa_idx.shape[1] + cmp_idx.shape[1])
    return (f"cluster {p.cluster} x {p.head_groups} groups x T {p.tokens} = {p.ctas} CTAs, {p.rows_per_split} rows "
            f"a CTA in {p.chunks} chunk(s) of {p.chunk_rows}, smem {p.smem_bytes / 1024:.1f} KB")


def time_graph(fn: Callable[..., Any], input_sets: list[tuple], replays: int, flush: torch.Tensor) -> tuple[float, float]:
    """(cold, warm) µs per call of a graph that calls ``fn`` once per input set (the harness's capture):
    cold = median replay with the L2 flushed before it, warm = median of back-to-back replays."""
    def call_every_set() -> None:
        for args in input_sets:
            fn(*args)

    graph, _ = harness.capture_graph(call_every_set)
    calls = len(input_sets)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    cold = statistics.median(s.elapsed_time(e) for s, e in events) * 1e3 / calls
    warm = statistics.median(harness.replay_times_ms(graph, replays, 1_000_000)) * 1e3 / calls
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="substring filter on case names (flash/T1 ...)")
    parser.add_argument("--calls", type=int, default=32, help="calls (input sets) per graph")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--json", default="")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    from fusegraph import targets
    target = targets.detect()
    start = time.time()
    attn_cuda.jit.load(attn_cuda.SPEC, device)
    print(f"CUDA extension ready in {time.time() - start:.1f} s")
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"device: {torch.cuda.get_device_name()} ({target})  copy bandwidth: {copy_gbs:.0f} GB/s  "
          f"graph: {opts.calls} calls, {opts.replays} replays (cold: L2 flushed before each replay)")
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    rows: list[Row] = []
    for model, (H, topk) in MODELS.items():
        for T in BATCHES:
            name = f"{model}/T{T}"
            if opts.only not in name:
                continue
            input_sets = [attn_inputs(T, H, topk, device, seed=i) for i in range(opts.calls)]
            expected = sparse_attn_sink.reference(*input_sets[0])
            floor = attn_floor(T, H, topk) / (copy_gbs * 1e9) * 1e6
            target_us = 2 * floor + 5 if T == 1 else None
            tgt = f"target {target_us:.1f}" if target_us else ""
            print(f"\n{name}: {T * (WINDOW + topk)} rows, byte floor {floor:.2f} us {tgt}", flush=True)
            for label, fn, overrides in variants():
                if label == "cuda/c16" and attn_cuda.make_decode_plan(T, H, WINDOW + topk).cluster == 16:
                    continue
                attn_cuda.OVERRIDES.clear()
                attn_cuda.OVERRIDES.update(overrides)
                row = Row(name, H, T, label, plan_label(label, input_sets[0]), None, None, None, floor, target_us)
                try:
                    row.rel_l2 = rel_l2(fn(*input_sets[0]), expected)
                    torch.cuda.synchronize()
                    row.cold_us, row.warm_us = time_graph(fn, input_sets, opts.replays, flush)
                except Exception as exc:   # report and go on (e.g. a cluster size the GPU cannot schedule)
                    row.error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    torch.cuda.synchronize()
                finally:
                    attn_cuda.OVERRIDES.clear()
                rows.append(row)
                if row.error:
                    print(f"  {label:9s} FAILED {row.error}", flush=True)
                    continue
                met = "" if target_us is None else ("  MET" if min(row.cold_us, row.warm_us) <= target_us else "  missed")
                print(f"  {label:9s} cold {row.cold_us:7.2f} us  warm {row.warm_us:7.2f} us  rel {row.rel_l2:.1e}"
                      f"{met}  [{row.plan}]", flush=True)
            del input_sets
            torch.cuda.empty_cache()
    print("\nsummary (µs per call, cold / warm):")
    faster = []
    for name in dict.fromkeys(r.case for r in rows):
        mine = [r for r in rows if r.case == name and not r.error]
        tri = next((r for r in mine if r.variant == "triton"), None)
        cuda = [r for r in mine if r.variant.startswith("cuda") and r.rel_l2 is not None and r.rel_l2 < 5e-3]
        if tri is None or not cuda:
            print(f"  {name:10s} incomplete")
            continue
        best = min(cuda, key=lambda r: r.cold_us)
        print(f"  {name:10s} triton {tri.cold_us:6.2f} / {tri.warm_us:6.2f}   best cuda [{best.variant}] "
              f"{best.cold_us:6.2f} / {best.warm_us:6.2f}   floor {best.floor_us:.2f}"
              + (f"  target {best.target_us:.1f}" if best.target_us else ""))
        if best.cold_us < tri.cold_us and best.warm_us < tri.warm_us:
            faster.append((best.heads, best.T))
    print(f"\nMEASURED_FASTER = frozenset({sorted(faster)!r})")
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, "rows": [asdict(r) for r in rows],
                       "measured_faster": faster}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
