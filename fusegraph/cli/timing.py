"""GPU timing of one forward: CUDA events, warm-up, median; kernel launches via torch.profiler.

Each forward runs on fresh clones of the inputs with module buffers (KV caches) restored before
every call, so fused and unfused time the same work. ``cuda_graph=True`` also times the forward
captured as one CUDA graph and replayed (what a serving engine does for decode), which removes
launch overhead and shows what fusion saves in HBM traffic alone.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from fusegraph.cli.numerics import clone_value
from fusegraph.cli.recording import restore_buffers


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    iters: int
    launches: int | None          # GPU kernels (and memcpy/memset) per forward
    graph_median_ms: float | None = None  # CUDA-graph replay, when requested and capturable
    graph_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_launches(fn: Callable[[], Any]) -> int | None:
    """GPU activities of one call, counted by torch.profiler (None when the profiler has no CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except Exception:
        return None
    n = 0
    for evt in prof.events():
        if getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA:
            n += 1
    return n


def time_forward(module: torch.nn.Module, inputs: tuple[Any, ...], *, warmup: int = 3, iters: int = 20,
                 cuda_graph: bool = False) -> Timing:
    saved = {name: b.detach().clone() for name, b in module.named_buffers()}
    args = clone_value(inputs)

    def call() -> Any:
        restore_buffers(module, saved)
        with torch.no_grad():
            return module(*args)

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        restore_buffers(module, saved)
        start.record()
        with torch.no_grad():
            module(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    launches = count_launches(call)
    graph_ms, note = None, ""
    if cuda_graph:
        graph_ms, note = _time_graph(module, args, iters)
    restore_buffers(module, saved)
    return Timing(statistics.median(times), min(times), iters, launches, graph_ms, note)


def _time_graph(module: torch.nn.Module, args: tuple[Any, ...], iters: int) -> tuple[float | None, str]:
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                module(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            module(*args)
    except Exception as exc:
        return None, f"not capturable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), ""
