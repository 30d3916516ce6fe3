"""Benchmark harness for fused ops: eager vs torch.compile vs fused, timed under CUDA-graph replay.

An op family registers a factory that builds its cases (see ``benchmarks/ops_mhc.py``)::

    from benchmarks.harness import BenchCase, Goal, register_family

    @register_family("mhc")
    def cases(tokens, sizes):
        return [BenchCase(name="mhc_post", op="mhc_post", T=T, size=s,
                          make_inputs=lambda T, dev, D=PRESETS[s].hidden: mhc_post_args(T, D, dev),
                          eager=mhc_post.reference)
                for s in sizes for T in tokens]

``python -m benchmarks.ops`` imports every ``benchmarks/ops_*.py`` module, collects the cases of
all registered families and runs them (``--help`` for the options).

Method (per case):

* ``make_inputs(T, device)`` is called for as many input sets as needed to exceed twice the L2
  (50 MB on H100/H200), so each call of a replay reads cold inputs (no L2 reuse between calls).
* eager (plain torch), torch.compile (of ``eager``, one compiled function per op and preset; T is
  dynamic) and fused (``fused`` or, by default, the provider the op's dispatch selects) are each
  warmed up, captured into one CUDA graph calling the function once per input set (the sets
  cycled until the graph makes at least ``MIN_CALLS`` calls, unless a call takes longer than
  ``LONG_CALL_US``), and replayed back to back; the time per call is the median over replays of
  (replay time / calls). Why cycle: the GPU-side gap between two graph replays (~2-3 µs on an
  H100) is paid once per replay; at 4 sets of 26 MB it added 0.6-0.7 µs to a 11 µs kernel (6%),
  at 32 calls 0.1 µs (``benchmarks/results/writers_h100_ddbf5ee.log`` predates this; the A/B is in
  ``benchmarks/results/graph_calls_h100.log``). A set comes back after the others, which together
  exceed the L2, so inputs stay cold. Before 2026-11-21 evening (commit after ddbf5ee) one pass.
* ``bytes_floor``: every tensor input read once plus every output written once (unless the case
  gives its own), so ``floor / fused time`` is the achieved bandwidth, compared with a
  device-to-device copy measured once per run (2 GiB, event-timed plain ``copy_`` calls, median:
  see ``measure_copy_bandwidth`` for why not under graph replay).
* fused outputs are compared with eager outputs (max relative L2 error over outputs).
* ``goals`` are checked per case and printed (e.g. the latency/bandwidth targets of an issue).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

L2_BYTES = 50 * 2 ** 20            # H100 / H200
ROTATE_BYTES = 2 * L2_BYTES         # input bytes per replay: at least twice the L2
MAX_SETS = 64                       # input sets per graph
MAX_SET_MEMORY = 6 * 2 ** 30        # cap on the memory held by rotating input sets
MIN_CALLS = 32                      # calls per graph replay (sets cycled), see the module docstring
LONG_CALL_US = 500.0                # calls this long make one pass over the sets (the gap is noise)

DEFAULT_TOKENS = (1, 32, 512, 4096, 16384)
QUICK_TOKENS = (1, 32, 4096)


@dataclass(frozen=True)
class Preset:
    """DSV4 sizes a case can pick from (spec section 1)."""

    name: str
    hidden: int          # D
    heads: int           # H
    q_lora: int
    index_topk: int
    head_dim: int = 512
    rope_dim: int = 64
    hc_mult: int = 4


PRESETS = {
    "flash": Preset("flash", hidden=4096, heads=64, q_lora=1024, index_topk=512),
    "pro": Preset("pro", hidden=7168, heads=128, q_lora=1536, index_topk=1024),
}


@dataclass(frozen=True)
class Goal:
    """A target a case should meet. ``kind``:

    * ``"max_us"``: fused time <= value microseconds;
    * ``"min_speedup_compile"``: torch.compile time / fused time >= value;
    * ``"min_pct_copy"``: ``target_bytes`` (or the floor) / fused time >= value % of copy bandwidth.
    """

    kind: str
    value: float

    def check(self, r: "CaseResult") -> Optional[bool]:
        if r.fused_us is None:
            return None
        if self.kind == "max_us":
            return r.fused_us <= self.value
        if self.kind == "min_speedup_compile":
            return None if r.compile_us is None else r.compile_us / r.fused_us >= self.value
        if self.kind == "min_pct_copy":
            return None if r.target_pct_copy is None else r.target_pct_copy >= self.value
        raise ValueError(f"unknown goal kind {self.kind!r}")

    def label(self) -> str:
        return {"max_us": f"<={self.value:g}us", "min_speedup_compile": f">={self.value:g}x compile",
                "min_pct_copy": f">={self.value:g}% copy"}[self.kind]


@dataclass(frozen=True)
class BenchCase:
    """One row of the benchmark table."""

    name: str                                        # row label, e.g. "mhc_pre+norm"
    op: str                                          # fused op (fusegraph.ops registry name)
    T: int                                           # tokens
    size: str                                        # preset name (PRESETS)
    make_inputs: Callable[[int, torch.device], tuple]  # positional args of one call
    eager: Callable[..., Any]                        # plain torch; also what torch.compile compiles
    fused: Optional[Callable[..., Any]] = None       # default: the provider the op's dispatch selects
    bytes_floor: Optional[int] = None                # default: inputs read once + outputs written once
    target_bytes: Optional[int] = None               # bytes model of a bandwidth goal (default: floor)
    goals: tuple[Goal, ...] = ()
    compile: bool = True                             # also time torch.compile(eager)
    mutated: Optional[int] = None                    # index of an argument the op writes in place (a cache):
                                                     # compared instead of the return value


@dataclass
class CaseResult:
    name: str
    op: str
    size: str
    T: int
    provider: str = ""
    eager_us: Optional[float] = None
    compile_us: Optional[float] = None
    fused_us: Optional[float] = None
    n_sets: int = 0
    floor_bytes: int = 0
    target_bytes: int = 0
    floor_us: Optional[float] = None           # floor_bytes at the measured copy bandwidth
    achieved_gbps: Optional[float] = None
    floor_pct_copy: Optional[float] = None     # achieved bandwidth / copy bandwidth, in %
    target_pct_copy: Optional[float] = None    # target_bytes / fused time / copy bandwidth, in %
    max_rel_err: Optional[float] = None        # fused vs eager outputs
    goals: dict[str, Optional[bool]] = field(default_factory=dict)
    error: Optional[str] = None


# -- registry ----------------------------------------------------------------------------------
Factory = Callable[[Sequence[int], Sequence[str]], list[BenchCase]]
FAMILIES: dict[str, Factory] = {}


def register_family(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``factory(tokens, sizes) -> list[BenchCase]`` for an op family."""

    def register(factory: Factory) -> Factory:
        if name in FAMILIES:
            raise ValueError(f"benchmark family {name!r} registered twice")
        FAMILIES[name] = factory
        return factory

    return register


def collect_cases(tokens: Sequence[int], sizes: Sequence[str], ops: Optional[Iterable[str]] = None
                  ) -> list[BenchCase]:
    """Cases of every family; ``ops`` keeps those whose op or name (or name prefix) is listed."""
    cases = [c for factory in FAMILIES.values() for c in factory(tokens, sizes)]
    if ops:
        wanted = set(ops)
        cases = [c for c in cases if c.op in wanted or c.name in wanted or c.name.split("+")[0] in wanted]
    return cases


# -- measurement -------------------------------------------------------------------------------
def tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in tensors_of(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_of(o)]
    return []


def nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_of(obj))


def make_args(case: BenchCase, device: torch.device) -> tuple:
    """``make_inputs(T, device)``; a one-parameter ``make_inputs(device)`` (T bound) is accepted too."""
    try:
        n_params = len(inspect.signature(case.make_inputs).parameters)
    except (TypeError, ValueError):
        n_params = 2
    return tuple(case.make_inputs(device) if n_params == 1 else case.make_inputs(case.T, device))


def input_sets(case: BenchCase, device: torch.device) -> list[tuple]:
    first = make_args(case, device)
    size = max(1, nbytes(first))
    n = max(1, min(MAX_SETS, math.ceil(ROTATE_BYTES / size), MAX_SET_MEMORY // size))
    if size < L2_BYTES:
        n = max(n, 2)
    return [first] + [make_args(case, device) for _ in range(n - 1)]


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def capture_graph(run: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm ``run()`` up twice on a side stream, capture one call of it as a CUDA graph and replay
    that once; returns the graph and what the captured call returned (its outputs live in the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: compilation, autotuning, workspaces
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    graph.replay()
    torch.cuda.synchronize()
    return graph, out


def replay_times_ms(graph: torch.cuda.CUDAGraph, replays: int, backlog_cycles: int) -> list[float]:
    """Milliseconds of each of ``replays`` back-to-back replays of ``graph`` (CUDA events)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(replays + 1)]
    torch.cuda._sleep(backlog_cycles)  # a backlog, so that replays run back to back on the GPU
    events[0].record()
    for i in range(replays):
        graph.replay()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) for i in range(replays)]


def graph_calls(n_sets: int, pass_us: float, min_calls: int = MIN_CALLS) -> int:
    """Calls per graph replay: whole passes over the ``n_sets`` sets until at least ``min_calls``,
    one pass when a call takes ``LONG_CALL_US`` or more (``pass_us``: one pass's time per call)."""
    if pass_us >= LONG_CALL_US or n_sets >= min_calls:
        return n_sets
    return n_sets * math.ceil(min_calls / n_sets)


def time_graph(fn: Callable[..., Any], sets: list[tuple], replays: int, min_calls: int = MIN_CALLS) -> float:
    """Median microseconds per call of ``fn`` over CUDA-graph replays that call it on the sets in
    turn, :func:`graph_calls` calls a replay (one pass over the sets is timed first to decide)."""
    def calls_of(n: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(n):
                fn(*sets[i % len(sets)])
        return run

    graph, _ = capture_graph(calls_of(len(sets)))
    pass_us = statistics.median(replay_times_ms(graph, min(replays, 5), 2_000_000)) * 1e3 / len(sets)
    calls = graph_calls(len(sets), pass_us, min_calls)
    if calls != len(sets):
        del graph
        graph, _ = capture_graph(calls_of(calls))
    per_replay_ms = replay_times_ms(graph, replays, 2_000_000)
    del graph
    return statistics.median(per_replay_ms) * 1e3 / calls


COPY_BYTES = 2 * 2 ** 30  # per buffer: far past the L2, long enough that launch cost is noise


def measure_copy_bandwidth(device: torch.device, nbytes_: int = COPY_BYTES, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written): the median of ``repeats``
    event-timed plain ``dst.copy_(src)`` calls on ``nbytes_``-byte buffers.

    Not under graph replay: a captured ``copy_`` of a contiguous tensor becomes a memcpy graph node,
    which the driver may run on a copy engine (measured 2.76 TB/s on an H200 against 4.24 TB/s for
    the same copy launched as a kernel); every kernel we compare with runs on the SMs.
    """
    src = torch.empty(nbytes_, dtype=torch.uint8, device=device)
    src.random_(0, 256)  # never time zeros
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    torch.cuda.synchronize(device)
    times_ms = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times_ms.append(start.elapsed_time(end))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes_ / (statistics.median(times_ms) * 1e-3) / 1e9


def max_rel_err(fused_out: Any, eager_out: Any) -> float:
    worst = 0.0
    for a, b in zip(tensors_of(fused_out), tensors_of(eager_out)):
        a64, b64 = a.detach().double(), b.detach().double()  # (uint8 caches: error of the byte values)
        denom = b64.norm().item()
        err = (a64 - b64).norm().item() / denom if denom > 0 else (a64 - b64).norm().item()
        worst = max(worst, err if math.isfinite(err) else float("inf"))
    return worst


class CompileCache:
    """One ``torch.compile`` per (eager function, preset). T varies between calls, so the token dim is
    marked dynamic (T = 1 still gets its own specialization) and every other dim static, so that a
    new preset recompiles with its sizes baked in instead of turning D dynamic."""

    def __init__(self) -> None:
        self._fns: dict[tuple[int, str], Callable[..., Any]] = {}
        # compiled code is cached per code object: every (preset, T = 1 or dynamic, optional args
        # present or None) is a recompile of the same function
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))

    @staticmethod
    def _mark(args: tuple, T: int) -> None:
        for t in args:
            if not isinstance(t, torch.Tensor):
                continue
            for dim in range(t.dim()):
                if dim == 0 and t.shape[0] == T and T > 1:
                    torch._dynamo.maybe_mark_dynamic(t, 0)
                else:
                    torch._dynamo.mark_static(t, dim)

    def get(self, case: BenchCase) -> Callable[..., Any]:
        key = (id(case.eager), case.size)
        if key not in self._fns:
            self._fns[key] = torch.compile(case.eager)
        compiled, T = self._fns[key], case.T

        def call(*args: Any) -> Any:
            self._mark(args, T)
            return compiled(*args)

        return call


def fused_callable(case: BenchCase, args: tuple) -> tuple[Callable[..., Any], str]:
    if case.fused is not None:
        return case.fused, getattr(case.fused, "__name__", "fused")
    from fusegraph import ops, targets

    op = ops.get(case.op)
    device = next(t.device for t in tensors_of(args))
    selection = op.select(targets.of_device(device), args)
    return op.providers[selection.provider].impl, selection.provider


def run_case(case: BenchCase, device: torch.device, replays: int, copy_gbps: float,
             compile_cache: Optional[CompileCache]) -> CaseResult:
    r = CaseResult(case.name, case.op, case.size, case.T)
    try:
        sets = input_sets(case, device)
        r.n_sets = len(sets)
        fused, r.provider = fused_callable(case, sets[0])
        with torch.no_grad():
            if case.mutated is None:
                eager_out, fused_out = case.eager(*sets[0]), fused(*sets[0])
            else:  # in-place op: run each on its own copy and compare the written argument
                a, b = _clone(sets[0]), _clone(sets[0])
                case.eager(*a)
                fused(*b)
                eager_out, fused_out = a[case.mutated], b[case.mutated]
                del a, b
            r.max_rel_err = max_rel_err(fused_out, eager_out)
            r.floor_bytes = case.bytes_floor or (nbytes(sets[0]) + nbytes(fused_out))
            r.target_bytes = case.target_bytes or r.floor_bytes
            del eager_out, fused_out
            r.fused_us = time_graph(fused, sets, replays)
            r.eager_us = time_graph(case.eager, sets, replays)
            if case.compile and compile_cache is not None:
                r.compile_us = time_graph(compile_cache.get(case), sets, replays)
        r.floor_us = r.floor_bytes / (copy_gbps * 1e9) * 1e6
        r.achieved_gbps = r.floor_bytes / (r.fused_us * 1e-6) / 1e9
        r.floor_pct_copy = 100.0 * r.achieved_gbps / copy_gbps
        r.target_pct_copy = 100.0 * r.target_bytes / (r.fused_us * 1e-6) / 1e9 / copy_gbps
    except Exception as exc:  # one broken case must not take the run down
        r.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        torch.cuda.empty_cache()
    r.goals = {g.label(): g.check(r) for g in case.goals}
    return r


# -- output ------------------------------------------------------------------------------------
def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: Sequence[CaseResult], copy_gbps: float) -> str:
    head = ("case", "size", "T", "provider", "eager us", "compile us", "fused us", "floor us", "x eager", "x compile",
            "floor MB", "GB/s", "%copy", "tgt%copy", "rel err", "goals")
    rows = [head]
    for r in results:
        if r.error:
            rows.append((r.name, r.size, str(r.T), r.provider or "-", "ERROR", r.error, *[""] * 10))
            continue
        goals = " ".join(f"{k}:{'ok' if v else ('FAIL' if v is False else '?')}" for k, v in r.goals.items())
        rows.append((
            r.name, r.size, str(r.T), r.provider, _fmt(r.eager_us, ".1f"), _fmt(r.compile_us, ".1f"),
            _fmt(r.fused_us, ".2f"), _fmt(r.floor_us, ".2f"),
            _fmt(r.eager_us / r.fused_us if r.eager_us and r.fused_us else None, ".1f"),
            _fmt(r.compile_us / r.fused_us if r.compile_us and r.fused_us else None, ".1f"),
            _fmt(r.floor_bytes / 1e6, ".2f"), _fmt(r.achieved_gbps, ".0f"), _fmt(r.floor_pct_copy, ".0f"),
            _fmt(r.target_pct_copy, ".0f") if r.target_bytes != r.floor_bytes else "",
            _fmt(r.max_rel_err, ".1e"), goals))
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"copy bandwidth (device-to-device, read + write): {copy_gbps:.0f} GB/s. Times: median per call "
                 "under CUDA-graph replay, cold inputs. floor us / %copy: the byte floor (inputs read once, "
                 "outputs written once) at copy bandwidth; tgt%copy: the case's own bytes model")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except Exception:
        pass
    return os.environ.get("FUSEGRAPH_COMMIT", "unknown")


def environment(device: Optional[torch.device]) -> dict[str, Any]:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv,
        "pdl": os.environ.get("FUSEGRAPH_PDL", "1") != "0",
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gb=round(props.total_memory / 2 ** 30, 1))
    return info


def write_json(path: str, results: Sequence[CaseResult], copy_gbps: float, meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "copy_bandwidth_gbps": copy_gbps,
                   "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)


def run_all(cases: Sequence[BenchCase], device: torch.device, replays: int, compile_: bool,
            log: Callable[[str], None]) -> tuple[list[CaseResult], float]:
    t0 = time.time()
    copy_gbps = measure_copy_bandwidth(device)
    log(f"[{time.time() - t0:6.1f}s] copy bandwidth {copy_gbps:.0f} GB/s")
    cache = CompileCache() if compile_ else None
    results = []
    for case in cases:
        r = run_case(case, device, replays, copy_gbps, cache)
        results.append(r)
        status = r.error or (f"fused {r.fused_us:.2f} us, eager {_fmt(r.eager_us, '.1f')} us, "
                             f"compile {_fmt(r.compile_us, '.1f')} us, err {_fmt(r.max_rel_err, '.1e')}")
        log(f"[{time.time() - t0:6.1f}s] {case.name} {case.size} T={case.T} ({r.provider}): {status}")
    return results, copy_gbps
