"""End-to-end benchmark of DSV4 decoder layers: eager, torch.compile, fusegraph, torch.compile(fusegraph).

``python -m benchmarks.e2e [--quick] [--T 1,8,64,4096,16384] [--out FILE.json] [--plot FILE.png]``
(``--help`` for every option; ``--dry-run`` runs the CPU path on the ``tiny`` preset).

What is measured
----------------
A DSV4 stack at ``flash`` sizes with one decoder layer per compress ratio (0, 4, 128; dense FFN,
reference attention; the vocabulary is cut because embedding and head are not benchmarked). Each
layer is its own module ``x [T, 4, D] -> [T, 4, D]`` (``LayerRunner``) and is timed on its own, so
the table is per layer; a "stack" row sums the layers. Fusions across a layer boundary (the last
``mhc_post`` of one layer with the first ``mhc_pre`` of the next) are therefore not measured.

The reference model holds ONE sequence, so "decode T" is the prefill graph run on T tokens at
positions 0..T-1. The fusable ops (mHC, norms, RoPE, compressor pooling, KV store) work per token,
so this is their work for a decode batch of T sequences; attention sees at most T keys, far fewer
than a real decode step, so attention time (and the whole-layer time) is understated at small T.

Variants (``VARIANTS``), each compiled once per layer and token count (torch.compile runs with
``dynamic=False`` unless ``--compile-dynamic``). ``fusegraph.compile`` runs at the decode T itself; a
prefill T above ``--prefill-compile-T`` (default 128, where every site of the stack exists) reuses
one compile per layer made at that T: matching evaluates candidates at the graph's shapes, which
takes minutes per layer at T=4096, while the fused graph is a shape-generic symbolic trace whose
fused ops select their providers again at run time (outputs are judged at the run T):

* ``eager``: the plain model;
* ``compile``: ``torch.compile(layer)`` (Inductor, default mode);
* ``fusegraph``: ``fusegraph.compile(layer)``;
* ``fusegraph_compile``: ``torch.compile(fusegraph.compile(layer))``: fused ops are custom ops,
  opaque to Inductor; graph breaks are counted and the fused calls are counted in the profile.

Each variant is timed two ways: ``stream`` (calls launched back to back from Python, CUDA events,
median) and ``graph`` (one forward captured with ``torch.cuda.graph`` and replayed back to back,
median; for T <= ``--graph-max-T``). "torch.compile with CUDA graphs" is the ``graph`` time of
``compile``: a manual capture, as a serving engine does (like ``mode="reduce-overhead"`` without
its bookkeeping). The headline time is ``graph`` where measured, else ``stream``. Fused variants
run with PDL on and off (``FUSEGRAPH_PDL``, read at every launch; graphs are re-captured).

Per row: kernel launches per forward (GPU activities in one profiled forward), fused-op calls and
the share of GPU time inside them (the device time of ``fusegraph::*`` ops over all GPU time),
compile seconds, graph breaks, and the output against the eager layer with the compare tool's
model-output tolerance (``fusegraph.tolerances``; fp64 reference for T <= ``--fp64-max-T``).

"The fusable part of a decode layer" (``fusable_part``): the subgraphs fusegraph replaces, minus
attention (``ATTENTION_OPS``), timed alone on recorded activations of the layer: the fused calls
exactly as the fused graph makes them (``compiled.site_call``) against a graph holding exactly the
replaced nodes of the unfused graph, run eagerly and under ``torch.compile``, all three under CUDA
graph replay. Cutting the regions out of the layer only helps torch.compile (it may fuse regions
that the GEMMs between them keep apart in the real layer), so the speedup is a lower bound.

Checks (pass/fail in the output): CUDA-graph replay of the fused variants equals their plain run;
``torch.export.export(compiled.fused)`` succeeds and its program gives the fused output; no graph
breaks in ``fusegraph_compile``; every output within tolerance. Goals (``evaluate_goals``) are
computed from the numbers of the same run.

Budgets: a (variant, T) whose forward is projected past ``--case-budget`` seconds (from the
largest T measured) is skipped with the reason. ``fusegraph.compile`` is aborted past
``--compile-budget`` (checked between patterns) and skipped where projected past it (its time grows
~linearly with T above ~1k tokens, see ``Budget.compile_projection``). Under ``--time-budget``,
everything past it is skipped, and so is a compile (torch.compile of a variant or of the fusable
regions) whose slowest measured first call no longer fits in what is left; ``--T`` is measured in
the order given, so the important token counts go first. Out-of-memory skips the case. Results go to
JSON (``--out``) and a markdown table (``--markdown``) after every layer (so a run killed by a time
limit keeps what it measured; SIGTERM ends the run cleanly), and to a plot at the end (``--plot``,
see ``benchmarks/plot.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.fx
from torch import nn

from benchmarks import harness

SCHEMA = "fusegraph.e2e/1"
VARIANTS = ("eager", "compile", "fusegraph", "fusegraph_compile")
FUSED_VARIANTS = frozenset({"fusegraph", "fusegraph_compile"})
COMPILED_VARIANTS = frozenset({"compile", "fusegraph_compile"})
DECODE_TOKENS = (1, 8, 64)
PREFILL_TOKENS = (4096, 16384)
QUICK_TOKENS = (1,)           # compiles dominate a short slot: the decode goal only
DRY_RUN_TOKENS = (8,)
RATIOS = (0, 4, 128)
ATTENTION_OPS = frozenset({"sparse_attn_sink", "gather_dequant"})  # not part of "the fusable part"
COMPILE_LINEAR_T = 1024         # from this T on, fusegraph.compile time grows ~linearly with T
PREFILL_COMPILE_T = 128         # prefill T reuse a fusegraph.compile made at this T (every site exists there)
# fusegraph.compile of the 3-layer flash stack (meta tensors, sm90) on the 2-core CPU machine, by T
# (s per layer summed), before and after commit 863f1a1 (one-thread evaluation on a retained heap,
# large row-wise candidates verified on 13 token rows): planning no longer grows with T.
CPU_STACK_COMPILE_S = {1: 10.9, 64: 18.2, 128: 22.9, 256: 50.8, 512: 227.0, 1024: 519.0}
CPU_STACK_COMPILE_S_863F1A1 = {128: 3.7, 512: 4.1, 2048: 5.8}
CPU_STACK_COMPILE_NOTE = (", ".join(f"{s:.0f} s at T={t}" for t, s in CPU_STACK_COMPILE_S.items())
                          + " before commit 863f1a1; since then "
                          + ", ".join(f"{s:.1f} s at T={t}" for t, s in CPU_STACK_COMPILE_S_863F1A1.items()))
REPLAY_RTOL = 1e-5              # CUDA-graph replay vs plain run: bitwise expected, this allowed
GOAL_DECODE_FUSABLE_X = 3.0     # fusable part at T = 1: x faster than torch.compile + CUDA graphs
GOAL_PREFILL_LAYER_X = 1.3      # whole layer at prefill T: x faster than torch.compile


# -- the model under test ------------------------------------------------------------------------
class LayerRunner(nn.Module):
    """One decoder layer as a module of the residual stream: ``x bf16 [T, C, D] -> [T, C, D]`` for
    tokens at positions 0..T-1 (a prefill; see the module docstring for what "decode T" means)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.size(0), device=x.device)
        return self.layer(x, positions, 0)


@dataclass
class Stack:
    model: nn.Module
    runners: list[LayerRunner]
    ratios: list[int]
    preset: str
    max_seq_len: int


def build_stack(preset: str, ratios: Sequence[int], max_tokens: int, device: torch.device, seed: Optional[int],
                max_seq_len: Optional[int] = None) -> Stack:
    """One layer per compress ratio. ``max_seq_len`` (cache capacity; default 16384, 512 for ``tiny``)
    is raised to ``max_tokens`` if needed; it is fixed rather than derived from the token counts so
    that runs with different ``--T`` time the same caches (the reference attention reads the whole
    window cache)."""
    from fusegraph.models.presets import build_model

    default = 512 if preset == "tiny" else 16384
    max_seq_len = max(max_seq_len or default, -(-max_tokens // 128) * 128)
    model = build_model(preset, device=device, seed=seed, n_layers=len(ratios), compress_ratios=tuple(ratios),
                        max_seq_len=max_seq_len, vocab_size=4096)
    model.eval()
    return Stack(model, [LayerRunner(layer).eval() for layer in model.layers], list(ratios), preset, max_seq_len)


def residual_input(stack: Stack, T: int, seed: int) -> torch.Tensor:
    """The residual stream the first layer sees: ``hc_expand(embed(ids))`` for seeded token ids."""
    from fusegraph.models.mhc import hc_expand

    cfg = stack.model.config
    g = torch.Generator(device="cpu").manual_seed(seed + T)
    ids = torch.randint(0, cfg.vocab_size, (T,), generator=g).to(stack.model.embed.weight.device)
    with torch.no_grad():
        return hc_expand(stack.model.embed(ids), cfg.hc_mult).contiguous()


# -- results -------------------------------------------------------------------------------------
@dataclass
class Row:
    """One (layer, T, variant, PDL) measurement."""

    layer: int
    ratio: int
    T: int
    variant: str
    pdl: Optional[bool]              # None: the variant launches no fused kernels
    stream_us: Optional[float] = None
    graph_us: Optional[float] = None
    gpu_ops: Optional[int] = None    # GPU activities (kernels, memcpy, memset) of one forward
    gpu_us: Optional[float] = None   # their summed device time
    fused_calls: Optional[int] = None
    fused_share: Optional[float] = None  # device time inside fusegraph:: ops / gpu_us
    compile_s: Optional[float] = None  # fusegraph: fusegraph.compile; torch.compile variants: first call
    compiled_at_T: Optional[int] = None  # fused variants: the T fusegraph.compile saw (see --prefill-compile-T)
    graph_breaks: Optional[int] = None
    graphs: Optional[int] = None
    rel_l2: Optional[float] = None   # vs fp64 (or vs eager when no fp64 reference)
    within_tolerance: Optional[bool] = None
    check_reason: str = ""
    replay_matches: Optional[bool] = None
    replay_rel_l2: Optional[float] = None
    graph_error: str = ""            # CUDA-graph capture or replay failed (the stream time still stands)
    sites: Optional[dict[str, int]] = None
    skipped: str = ""
    error: str = ""

    @property
    def headline_us(self) -> Optional[float]:
        return self.graph_us if self.graph_us is not None else self.stream_us


@dataclass
class FusablePart:
    """The fusable part of one layer at one T (see ``fusable_part``)."""

    layer: int
    ratio: int
    T: int
    sites: dict[str, int] = field(default_factory=dict)
    nodes_replaced: int = 0
    eager_graph_us: Optional[float] = None
    compile_graph_us: Optional[float] = None
    fused_graph_us: Optional[float] = None           # PDL on (or PDL unsupported)
    fused_graph_us_pdl_off: Optional[float] = None
    compile_s: Optional[float] = None                # torch.compile of the regions: first call
    outputs_checked: int = 0
    outputs_within_tolerance: Optional[bool] = None
    check_reason: str = ""
    error: str = ""

    @property
    def speedup_vs_compile(self) -> Optional[float]:
        if self.compile_graph_us and self.fused_graph_us:
            return self.compile_graph_us / self.fused_graph_us
        return None


@dataclass
class Check:
    name: str                        # "export", ...
    layer: int
    T: int
    passed: Optional[bool]
    detail: str = ""


@dataclass
class Goal:
    name: str
    target: str
    value: Optional[float]
    passed: Optional[bool]
    detail: str = ""


@dataclass
class RunResult:
    meta: dict[str, Any]
    layers: list[dict[str, int]]
    rows: list[Row] = field(default_factory=list)
    fusable: list[FusablePart] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def rows(items: Sequence[Any]) -> list[dict[str, Any]]:
            out = []
            for it in items:
                d = dataclasses.asdict(it)
                if isinstance(it, Row):
                    d["headline_us"] = it.headline_us
                if isinstance(it, FusablePart):
                    d["speedup_vs_compile"] = it.speedup_vs_compile
                out.append(d)
            return out

        return {"schema": SCHEMA, "meta": self.meta, "layers": self.layers, "rows": rows(self.rows),
                "fusable": rows(self.fusable), "checks": rows(self.checks), "goals": rows(self.goals),
                "notes": list(self.notes)}


# -- options -------------------------------------------------------------------------------------
@dataclass
class Options:
    preset: str
    ratios: list[int]
    tokens: list[int]
    variants: list[str]
    pdl: str                         # "both" | "on" | "off"
    device: str
    iters: int
    replays: int
    graph_max_T: int
    fp64_max_T: int
    case_budget: float
    compile_budget: float
    time_budget: Optional[float]
    compile_dynamic: bool
    compile_backend: str
    timing: bool                     # False: the dry path (run once, no timing)
    export_check: bool
    fusable_max_T: int
    prefill_compile_T: int           # fusegraph.compile once per layer at this T for larger prefill T (0: each T)
    pdl_max_T: Optional[int]         # both PDL settings only up to this T (None: every T)
    max_seq_len: Optional[int]
    patterns: Optional[list[str]]   # fusegraph.compile(patterns=...); None: all
    providers: dict[str, list[str]]  # forced provider order per op ("*": every op), fusegraph.ops.prefer
    seed: int
    out: Optional[str]
    plot: Optional[str]
    markdown: Optional[str]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Optional[list[str]] = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="model preset (default flash; tiny with --dry-run)")
    p.add_argument("--ratios", type=_ints, default=list(RATIOS),
                   help="compress ratio of each layer, one layer each (default 0,4,128)")
    p.add_argument("--T", type=_ints, default=None,
                   help=f"token counts, measured in this order (put the important ones first under a "
                        f"--time-budget; default {','.join(map(str, DECODE_TOKENS + PREFILL_TOKENS))}; "
                        f"quick {','.join(map(str, QUICK_TOKENS))}; dry run {','.join(map(str, DRY_RUN_TOKENS))})")
    p.add_argument("--variants", type=_names, default=list(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--pdl", choices=("both", "on", "off"), default="both",
                   help="PDL settings for the fused variants (default both)")
    p.add_argument("--quick", action="store_true",
                   help="a short GPU slot (~4 min on an H100): T=1 (the decode goal), fewer repeats, "
                        "a time budget; prefill needs its own slot (e.g. --T 4096)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU path on the tiny preset: build, compile, run every variant once, check outputs, "
                        "no timing")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (dry run)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per stream timing (default 20, quick 10)")
    p.add_argument("--replays", type=int, default=None, help="graph replays per timing (default 50, quick 20)")
    p.add_argument("--graph-max-T", type=int, default=64, help="time under CUDA graphs for T <= this (default 64)")
    p.add_argument("--fp64-max-T", type=int, default=64,
                   help="fp64 reference of the layer for T <= this (default 64); above, outputs are judged "
                        "against eager")
    p.add_argument("--fusable-max-T", type=int, default=64, help="measure the fusable part for T <= this")
    p.add_argument("--prefill-compile-T", type=int, default=PREFILL_COMPILE_T,
                   help=f"prefill T (above --graph-max-T) larger than this reuse one fusegraph.compile per layer "
                        f"made at this T (default {PREFILL_COMPILE_T}; 0: compile at every T, which takes minutes "
                        f"per layer at 4096)")
    p.add_argument("--pdl-max-T", type=int, default=None,
                   help="with --pdl both: time PDL off as well only for T <= this (default: every T)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="cache capacity in tokens (default 16384; tiny 512; at least the largest T)")
    p.add_argument("--case-budget", type=float, default=None,
                   help="seconds per (layer, variant, T) measurement (default 60, quick 30)")
    p.add_argument("--compile-budget", type=float, default=None,
                   help="abort a fusegraph.compile past this many seconds (checked between patterns) and skip "
                        "one projected to take longer (default 300, quick 120; 0: no limit)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for the whole run; what is left is skipped (default none, quick 230)")
    p.add_argument("--compile-dynamic", action="store_true",
                   help="torch.compile with automatic dynamic shapes instead of one static compile per T")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; "
                                                           "dry run aot_eager)")
    p.add_argument("--no-export", action="store_true", help="skip the torch.export check")
    p.add_argument("--patterns", type=_names, default=None,
                   help="only these fusegraph patterns (default all; e.g. to leave out one that fails)")
    p.add_argument("--provider", action="append", default=None, metavar="OP=NAME[,NAME]",
                   help="force providers, as in the fusegraph CLI (e.g. '*=torch': every fused op runs its "
                        "torch reference; repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write results as JSON here")
    p.add_argument("--plot", default=None, help="write the time-per-layer plot here (.png with matplotlib, "
                                                 "else .svg)")
    p.add_argument("--markdown", default=None, help="write the README headline table (markdown) here")
    a = p.parse_args(argv)
    unknown = [v for v in a.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    bad = [r for r in a.ratios if r not in RATIOS]
    if bad:
        p.error(f"compress ratios must be in {RATIOS}, got {bad}")
    from fusegraph.cli.compiling import parse_providers
    from fusegraph.cli.errors import UsageError
    try:
        providers = parse_providers(a.provider)
    except UsageError as exc:
        p.error(str(exc))
    dry = a.dry_run
    tokens = a.T or list(DRY_RUN_TOKENS if dry else QUICK_TOKENS if a.quick else DECODE_TOKENS + PREFILL_TOKENS)
    return Options(
        preset=a.preset or ("tiny" if dry else "flash"), ratios=a.ratios, tokens=list(dict.fromkeys(tokens)),
        variants=[v for v in VARIANTS if v in a.variants], pdl=a.pdl,
        device=a.device or ("cpu" if dry else "cuda"),
        iters=a.iters or (10 if a.quick else 20), replays=a.replays or (20 if a.quick else 50),
        graph_max_T=a.graph_max_T, fp64_max_T=a.fp64_max_T,
        case_budget=a.case_budget if a.case_budget is not None else (30.0 if a.quick else 60.0),
        compile_budget=a.compile_budget if a.compile_budget is not None else (120.0 if a.quick else 300.0),
        time_budget=a.time_budget if a.time_budget is not None else (230.0 if a.quick else None),
        compile_dynamic=a.compile_dynamic,
        compile_backend=a.compile_backend or ("aot_eager" if dry else "inductor"),
        timing=not dry, export_check=not a.no_export, fusable_max_T=a.fusable_max_T,
        prefill_compile_T=a.prefill_compile_T, pdl_max_T=a.pdl_max_T,
        max_seq_len=a.max_seq_len, patterns=a.patterns,
        providers=providers, seed=a.seed,
        out=a.out, plot=a.plot, markdown=a.markdown)


# -- environment ---------------------------------------------------------------------------------
def git_commit() -> str:
    """``FUSEGRAPH_COMMIT`` (set it on machines that get a copy of the tree), else ``git rev-parse``."""
    env = os.environ.get("FUSEGRAPH_COMMIT")
    if env:
        return env
    from benchmarks.harness import git_commit as from_git
    return from_git()


def environment(device: torch.device, opts: Options) -> dict[str, Any]:
    try:
        import triton
        triton_version: Optional[str] = triton.__version__
    except Exception:
        triton_version = None
    meta: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "torch": torch.__version__, "triton": triton_version,
        "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
        "argv": sys.argv, "device": device.type, "pdl_supported": pdl_supported(device),
        "options": dataclasses.asdict(opts),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gb=round(props.total_memory / 2 ** 30, 1))
    return meta


def pdl_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from fusegraph.kernels import _triton_common as tc
    except Exception:
        return False
    with pdl(True):
        return bool(tc.pdl_enabled(device))


@contextlib.contextmanager
def pdl(on: bool) -> Iterator[None]:
    """``FUSEGRAPH_PDL`` for the duration (the Triton providers read it at every launch)."""
    old = os.environ.get("FUSEGRAPH_PDL")
    os.environ["FUSEGRAPH_PDL"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FUSEGRAPH_PDL", None)
        else:
            os.environ["FUSEGRAPH_PDL"] = old


# -- timing --------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stream(call: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    """Median microseconds per call, calls launched back to back (launch overhead included)."""
    with torch.no_grad():
        for _ in range(warmup):
            call()
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            call()
            end.record()
        torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def time_graph(call: Callable[[], Any], replays: int) -> tuple[float, Any]:
    """Median microseconds per replay of one call captured as a CUDA graph, and the replayed output."""
    with torch.no_grad():
        graph, out = harness.capture_graph(call)
        replayed = _clone(out)
        per_replay = harness.replay_times_ms(graph, replays, 1_000_000)
        del graph, out
    return statistics.median(per_replay) * 1e3, replayed


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


@dataclass
class Profile:
    gpu_ops: Optional[int]
    gpu_us: Optional[float]
    fused_calls: int
    fused_gpu_us: Optional[float]

    @property
    def fused_share(self) -> Optional[float]:
        if self.gpu_us and self.fused_gpu_us is not None:
            return self.fused_gpu_us / self.gpu_us
        return None


def profile_forward(call: Callable[[], Any], device: torch.device) -> Profile:
    """One forward under torch.profiler: GPU activities and their time, and the ``fusegraph::`` op
    calls with the device time of the kernels launched inside them (children included)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        call()
        _sync(device)
    events = list(prof.events())
    fused = [e for e in events if e.name.startswith("fusegraph::") and not _inside_fused(e)]
    if device.type != "cuda":
        return Profile(None, None, len(fused), None)
    gpu = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    gpu_us = float(sum(e.time_range.elapsed_us() for e in gpu))
    fused_us: Optional[float] = float(sum(e.device_time_total for e in fused))
    if fused and not fused_us:  # the profiler did not link the ops' kernels to them: unknown, not zero
        fused_us = None
    return Profile(len(gpu), gpu_us, len(fused), fused_us)


def _inside_fused(event: Any) -> bool:
    parent = getattr(event, "cpu_parent", None)
    while parent is not None:
        if parent.name.startswith("fusegraph::"):
            return True
        parent = getattr(parent, "cpu_parent", None)
    return False


# -- numerics ------------------------------------------------------------------------------------
@dataclass
class OutputCheck:
    rel_l2: Optional[float]
    passed: bool
    reason: str


def check_output(out: Any, eager: torch.Tensor, ref64: Optional[torch.Tensor]) -> OutputCheck:
    """The compare tool's verdict for a model output (``fusegraph.tolerances.for_model_output``)."""
    from fusegraph import tolerances
    from fusegraph.cli.numerics import check

    if not isinstance(out, torch.Tensor):
        return OutputCheck(None, False, f"returned {type(out).__name__}, not a tensor")
    c = check("output", out, eager, ref64, tolerances.for_model_output(eager.dtype))
    return OutputCheck(c.rel_l2, c.passed, c.reason)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    den = float(b64.norm())
    num = float((a64 - b64).norm())
    return num / den if den > 0 else num


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# -- the fusable part ----------------------------------------------------------------------------
def region_graph(compiled: Any, sites: Sequence[Any]) -> tuple[torch.fx.GraphModule, list[str], list[str]]:
    """A graph holding exactly the unfused nodes the ``sites`` replaced, in graph order.

    Values from outside the regions become placeholders (named as the unfused node they stand for);
    parameters and buffers stay ``get_attr`` nodes, so the regions write the live KV caches. Returns
    (graph module, placeholder node names, output node names: the sites' outputs, in site order)."""
    unfused = compiled.unfused
    nodes = list(unfused.graph.nodes)
    by_name = {n.name: n for n in nodes}
    keep = {name for s in sites for name in s.replaced if name in by_name and by_name[name].op != "placeholder"}
    outside: list[torch.fx.Node] = []
    for n in nodes:
        if n.name in keep:
            for a in n.all_input_nodes:
                if a.name not in keep and a not in outside:
                    outside.append(a)
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    inputs = []
    for a in outside:
        if a.op == "get_attr":
            continue
        env[a] = graph.placeholder(a.name)
        inputs.append(a.name)
    for a in outside:
        if a.op == "get_attr":
            env[a] = graph.get_attr(a.target)
    for n in nodes:
        if n.name in keep:
            env[n] = graph.node_copy(n, lambda a: env[a])
    outputs = []
    for s in sites:
        for name in s.outputs.values():
            node = by_name.get(name)
            if node is not None and node in env and name not in outputs:
                outputs.append(name)
    graph.output(tuple(env[by_name[name]] for name in outputs))
    gm = torch.fx.GraphModule(unfused, graph, class_name="FusableRegions")
    return gm, inputs, outputs


class _KeepValues(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)


def record_values(gm: torch.fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    """Every node's value from one run of ``gm`` (parameters and buffers: the live tensors)."""
    interp = _KeepValues(gm)
    with torch.no_grad():
        interp.run(x)
    return {n.name: v for n, v in interp.env.items()}


def _site_calls(compiled: Any, sites: Sequence[Any]) -> list[tuple[Any, Callable[..., Any], list[str]]]:
    try:
        from fusegraph.cli.compare import resolve_arg_names
    except Exception:  # pragma: no cover - the CLI is part of the package
        resolve_arg_names = None
    calls = []
    for s in sites:
        fn, names, literals = compiled.site_call(s)
        if resolve_arg_names is not None:
            names = resolve_arg_names(compiled, s, (fn, names, literals))
        calls.append((s, fn, list(names)))
    return calls


def fusable_part(compiled: Any, x: torch.Tensor, layer: int, ratio: int, T: int, opts: Options,
                 compile_fn: Callable[[nn.Module], Callable[..., Any]], pdl_both: bool) -> FusablePart:
    """Time (or, in the dry path, run once and compare) the fusable part of one layer at one T."""
    from fusegraph import tolerances
    from fusegraph.cli.numerics import check

    sites = [s for s in compiled.sites if s.op not in ATTENTION_OPS]
    result = FusablePart(layer, ratio, T)
    counts: dict[str, int] = {}
    for s in sites:
        counts[s.pattern] = counts.get(s.pattern, 0) + 1
    result.sites = counts
    if not sites:
        result.error = "no fused site outside attention"
        return result
    gm, input_names, output_names = region_graph(compiled, sites)
    result.nodes_replaced = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method"))
    values = record_values(compiled.unfused, x)
    region_args = [values[n] for n in input_names]
    calls = _site_calls(compiled, sites)
    missing = [n for _, _, names in calls for n in names if n not in values]
    if missing:
        result.error = f"fused-call arguments not found in the unfused run: {', '.join(sorted(set(missing)))}"
        return result
    call_args = [(fn, [values[n] for n in names]) for _, fn, names in calls]

    def run_regions() -> Any:
        return gm(*region_args)

    def run_fused() -> list[Any]:
        return [fn(*args) for fn, args in call_args]

    with torch.no_grad():
        unfused_out = dict(zip(output_names, _as_tuple(run_regions())))
        fused_out = run_fused()
    # outputs: each site's fused results against the region's values of the nodes they replace
    checks, reasons = 0, []
    for (site, _, _), outs in zip(calls, fused_out):
        outs = _as_tuple(outs)
        for (out_name, node_name), value in zip(site.outputs.items(), outs):
            ref = unfused_out.get(node_name)
            if not isinstance(value, torch.Tensor) or not isinstance(ref, torch.Tensor):
                continue
            tol = tolerances.for_site_output(value.dtype, site.op)
            c = check(out_name, value, ref, None, tol)
            checks += 1
            if not c.passed:
                reasons.append(f"{site.pattern}@{site.module}.{out_name}: {c.reason}")
    result.outputs_checked = checks
    result.outputs_within_tolerance = not reasons
    result.check_reason = "; ".join(reasons)[:600]
    compiled_regions = compile_fn(gm)
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled_regions(*region_args)  # the compile (the dry path only checks that it compiles and runs)
    _sync(x.device)
    result.compile_s = time.perf_counter() - t0
    if not opts.timing:
        return result
    try:
        result.eager_graph_us, _ = time_graph(run_regions, opts.replays)
        result.compile_graph_us, _ = time_graph(lambda: compiled_regions(*region_args), opts.replays)
        with pdl(True):
            result.fused_graph_us, _ = time_graph(run_fused, opts.replays)
        if pdl_both:
            with pdl(False):
                result.fused_graph_us_pdl_off, _ = time_graph(run_fused, opts.replays)
    except Exception as exc:
        result.error = _short(exc)
    return result


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,)


# -- checks --------------------------------------------------------------------------------------
def export_check(compiled: Any, x: torch.Tensor, expected: torch.Tensor, layer: int, T: int) -> Check:
    """``torch.export.export`` of the fused graph module; its program must give the fused output."""
    try:
        program = torch.export.export(compiled.fused, (x,))
    except Exception as exc:
        return Check("export", layer, T, False, f"torch.export.export(compiled.fused) raised {_short(exc)}")
    try:
        with torch.no_grad():
            out = program.module()(x)
    except Exception as exc:
        return Check("export", layer, T, False, f"exported program failed to run: {_short(exc)}")
    err = rel_l2(out, expected)
    ops = sum(1 for n in program.graph.nodes if n.op == "call_function" and "fusegraph" in str(n.target))
    ok = err <= REPLAY_RTOL
    return Check("export", layer, T, ok, f"{ops} fused ops in the exported graph; output rel L2 {err:.1e} vs the "
                                        f"fused module" + ("" if ok else f" > {REPLAY_RTOL:g}"))


# -- the driver ----------------------------------------------------------------------------------
class Budget:
    """Wall-clock budgets: the whole run, and projections of a forward / a fusegraph compile."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.t0 = time.perf_counter()
        self.forward_s: dict[tuple[int, str], tuple[int, float]] = {}   # (layer, variant) -> (largest T, s)
        self.first_call_s: dict[str, float] = {}                         # compiling kind -> slowest first call
        self.compile_s: dict[int, list[tuple[int, float]]] = {}          # layer -> [(T, s)]
        self.compile_aborted: dict[int, tuple[int, str]] = {}             # layer -> (T, why)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def out_of_time(self) -> Optional[str]:
        if self.opts.time_budget is not None and self.elapsed() > self.opts.time_budget:
            return f"run time budget ({self.opts.time_budget:.0f} s) spent"
        return None

    def record_forward(self, layer: int, variant: str, T: int, seconds: float) -> None:
        """Keep the forward at the largest T: decode forwards are launch-bound, so projecting a prefill
        forward from a small T would overestimate it by orders of magnitude."""
        last = self.forward_s.get((layer, variant))
        if last is None or T >= last[0]:
            self.forward_s[(layer, variant)] = (T, seconds)

    def record_first_call(self, kind: str, seconds: float) -> None:
        self.first_call_s[kind] = max(seconds, self.first_call_s.get(kind, 0.0))

    def compile_overruns(self, kind: str) -> Optional[str]:
        """Why a first call (a compile) of ``kind`` would not fit in what is left of --time-budget,
        projected from the slowest one so far (None: go, or nothing measured yet)."""
        seconds = self.first_call_s.get(kind)
        if self.opts.time_budget is None or seconds is None:
            return None
        left = self.opts.time_budget - self.elapsed()
        if seconds > left:
            return (f"its compile (up to {seconds:.0f} s so far) does not fit in the {max(left, 0):.0f} s left of "
                    f"--time-budget {self.opts.time_budget:.0f} s")
        return None

    def forward_skip(self, layer: int, variant: str, T: int) -> Optional[str]:
        if not self.opts.timing:
            return None
        last = self.forward_s.get((layer, variant))
        if last is None:
            return None
        t_prev, s_prev = last
        projected = s_prev * T / t_prev
        if projected * 3 > self.opts.case_budget:  # first call, warm-up, at least one timed call
            return (f"one forward projected at {projected:.1f} s (linear in T from {s_prev:.2f} s at T={t_prev}); "
                    f"3 calls exceed --case-budget {self.opts.case_budget:g} s")
        return None

    def iters_for(self, forward_s: float, wanted: int) -> int:
        """Timed calls for a forward of ``forward_s``: ``wanted``, fewer for long (prefill) forwards, whose
        times vary little: at most a quarter of the case budget, and at most 5 s, per timing."""
        seconds = min(self.opts.case_budget / 4, 5.0)
        return max(3, min(wanted, int(seconds / max(forward_s, 1e-6))))

    def compile_projection(self, layer: int, T: int) -> Optional[float]:
        """Seconds fusegraph.compile is expected to take at T, or None when unknown.

        A conservative guard: before commit 863f1a1 planning grew ~linearly above ~1k tokens (flash
        ratio-4 layer on 2 CPU cores: ~40 s at T=512, ~395 s at T=4096); since then it is nearly flat
        in T. Only compiles at T >= 1024 project, proportionally to T; without one, the compile is
        attempted under the abort guard."""
        big = sorted(p for p in self.compile_s.get(layer, []) if p[0] >= COMPILE_LINEAR_T)
        if not big:
            return None
        t, s = big[-1]
        return s * T / t if T > t else s


class Interrupted(BaseException):
    """SIGTERM (e.g. ``timeout``) during a run: stop measuring, keep and write what was measured."""


class Runner:
    def __init__(self, opts: Options, log: Callable[[str], None],
                 on_checkpoint: Optional[Callable[[RunResult], None]] = None) -> None:
        self.opts = opts
        self.log = log
        self.on_checkpoint = on_checkpoint
        self.device = torch.device(opts.device)
        self.budget = Budget(opts)
        self.pdl_ok = pdl_supported(self.device)
        # None: PDL does not apply (CPU); [False]: a GPU without PDL
        self.pdl_settings: list[Optional[bool]] = (
            [True, False] if opts.pdl == "both" else [True] if opts.pdl == "on" else [False]
        ) if self.pdl_ok else [False] if self.device.type == "cuda" else [None]
        self._compiled_runners: dict[int, Callable[..., Any]] = {}  # --compile-dynamic: one per layer
        self._prefill_compiled: dict[int, tuple[Any, float, int]] = {}  # layer -> (fused module, s, compile T)
        self.result = RunResult(meta=environment(self.device, opts), layers=[])
        self.result.notes += [
            "decode T = the prefill graph run on T new tokens at positions 0..T-1 of one sequence: the fusable "
            "ops work per token, so this is their work for a decode batch of T; attention sees at most T keys, "
            "so attention (and whole-layer) time is understated at small T",
            "each layer is compiled and timed on its own; fusions across a layer boundary are not measured",
            f"torch.compile: backend {opts.compile_backend}, "
            + ("automatic dynamic shapes" if opts.compile_dynamic else "dynamic=False (one compile per T)"),
            "CUDA graphs: one forward captured with torch.cuda.graph and replayed back to back (median)",
        ]
        if not self.pdl_ok and opts.timing:
            self.result.notes.append("PDL is not supported here (needs sm90+ and Triton gdc_*): fused variants "
                                     "run once, PDL off")

    def pdl_for(self, T: int) -> list[Optional[bool]]:
        """PDL settings of the fused variants at T (--pdl-max-T: above it, the first setting only)."""
        limit = self.opts.pdl_max_T
        return self.pdl_settings[:1] if limit is not None and T > limit else self.pdl_settings

    # -- compile helpers ---------------------------------------------------------------------
    def torch_compile(self, module: Any) -> Callable[..., Any]:
        kwargs: dict[str, Any] = {"backend": self.opts.compile_backend}
        if not self.opts.compile_dynamic:
            kwargs["dynamic"] = False
        return torch.compile(module, **kwargs)

    def fusegraph_compile(self, runner: LayerRunner, layer: int, T: int, x: torch.Tensor) -> tuple[Any, float]:
        import fusegraph

        limit = self.opts.compile_budget if self.opts.timing and self.opts.compile_budget > 0 else None
        t0 = time.perf_counter()

        def progress(done: int, total: int, what: str) -> None:  # abort between patterns past the budget
            if limit is not None and time.perf_counter() - t0 > limit:
                raise TimeoutError(f"fusegraph.compile passed --compile-budget {limit:g} s at '{what}'")

        try:
            compiled = fusegraph.compile(runner, example_inputs=(x.to("meta"),), progress=progress,
                                         patterns=self.opts.patterns)
        except TimeoutError as exc:
            self.budget.compile_aborted[layer] = (T, str(exc))
            raise
        seconds = time.perf_counter() - t0
        self.budget.compile_s.setdefault(layer, []).append((T, seconds))
        return compiled, seconds

    def compile_skip(self, layer: int, T: int) -> Optional[str]:
        """Why fusegraph.compile at T is skipped (None: go)."""
        limit = self.opts.compile_budget
        if not self.opts.timing or limit <= 0:
            return None
        aborted = self.budget.compile_aborted.get(layer)
        if aborted is not None and T >= aborted[0]:
            return f"fusegraph.compile at T={aborted[0]} was aborted: {aborted[1]}"
        projected = self.budget.compile_projection(layer, T)
        if projected is not None and projected > limit:
            pts = ", ".join(f"T={t}: {s:.1f} s" for t, s in sorted(self.budget.compile_s[layer]))
            return (f"fusegraph.compile projected at {projected:.0f} s (fitted on {pts}) > --compile-budget "
                    f"{limit:g} s")
        return None

    def compile_T_for(self, T: int) -> int:
        """The T fusegraph.compile sees for a run at T: T itself, or --prefill-compile-T for prefill T
        above it (the fused graph is a symbolic trace, shape-generic, and every fused op selects its
        provider again from the real tensors at run time; outputs are judged at the run T)."""
        c = self.opts.prefill_compile_T
        return c if (c > 0 and T > self.opts.graph_max_T and T > c) else T

    def _fused_module(self, runner: LayerRunner, layer: int, T: int, x: torch.Tensor) -> tuple[Any, Optional[str]]:
        """(fused module, None) or (None, why the fused variants are skipped) for layer at T."""
        compile_T = self.compile_T_for(T)
        cached = self._prefill_compiled.get(layer) if compile_T != T else None
        if cached is not None:
            compiled, self._fg_seconds, self._fg_T = cached
            self.log(f"  layer {layer} T={T}: reusing fusegraph.compile at T={self._fg_T} ({self._fg_seconds:.1f} s)")
            return compiled, None
        skip = self.budget.out_of_time() or self.compile_skip(layer, compile_T)
        if skip is None and compile_T != T:
            skip = self.budget.compile_overruns("fusegraph.compile")
        if skip is not None:
            return None, skip
        example = x if compile_T == T else torch.empty((compile_T,) + tuple(x.shape[1:]), dtype=x.dtype,
                                                        device="meta")
        try:
            compiled, seconds = self.fusegraph_compile(runner, layer, compile_T, example)
        except Exception as exc:
            why = f"fusegraph.compile{'' if compile_T == T else f' at T={compile_T}'} failed: {_short(exc)}"
            self.log(f"  layer {layer} T={T}: {why}")
            return None, why
        self._fg_seconds, self._fg_T = seconds, compile_T
        if compile_T != T:
            self.budget.record_first_call("fusegraph.compile", seconds)
            self._prefill_compiled[layer] = (compiled, seconds, compile_T)
        self.log(f"  layer {layer} T={T}: fusegraph.compile at T={compile_T} {seconds:.1f} s, sites "
                 f"{compiled.report.counts()}")
        return compiled, None

    # -- one (layer, T) ----------------------------------------------------------------------
    def run_layer(self, layer: int, T: int) -> None:
        opts = self.opts
        ratio = self.stack.ratios[layer]
        runner = self.stack.runners[layer]
        x = residual_input(self.stack, T, opts.seed)
        rows: list[Row] = []

        def add(variant: str, pdl_on: Optional[bool], **kw: Any) -> Row:
            row = Row(layer, ratio, T, variant, pdl_on, **kw)
            rows.append(row)
            self.result.rows.append(row)
            return row

        # eager reference output (every variant is judged against it; without it, outputs are not judged)
        eager_out: Optional[torch.Tensor] = None
        try:
            with torch.no_grad():
                eager_out = runner(x)
        except Exception as exc:
            self.result.notes.append(f"layer {layer} T={T}: no eager reference output ({_short(exc)}); "
                                     "outputs at this T are not judged")
            self._free()

        compiled = None
        fg_skip = None
        self._fg_seconds: Optional[float] = None
        self._fg_T: Optional[int] = None
        if FUSED_VARIANTS & set(opts.variants):
            compiled, fg_skip = self._fused_module(runner, layer, T, x)
        ref64 = self._fp64_reference(compiled, x, T)

        for variant in opts.variants:
            skip = self.budget.out_of_time()
            if skip is None and variant in FUSED_VARIANTS:
                skip = fg_skip
            if skip is None:
                skip = self.budget.forward_skip(layer, variant, T)
            if skip is None and variant in COMPILED_VARIANTS and not (
                    variant == "compile" and opts.compile_dynamic and layer in self._compiled_runners):
                skip = self.budget.compile_overruns(variant)
            pdl_list = self.pdl_for(T) if variant in FUSED_VARIANTS else [None]
            if skip is not None:
                for p in pdl_list:
                    add(variant, p, skipped=skip)
                self.log(f"  layer {layer} T={T} {variant}: skipped: {skip}")
                continue
            self._run_variant(variant, pdl_list, runner, compiled, x, eager_out, ref64, layer, T, add)
            self._free()

        if compiled is not None and getattr(compiled, "unfused", None) is not None:
            self._layer_checks(compiled, x, layer, T)
            if T <= opts.fusable_max_T and (not opts.timing or T <= opts.graph_max_T):
                skip = self.budget.out_of_time() or self.budget.compile_overruns("fusable part")
                if skip is not None:
                    part = FusablePart(layer, ratio, T, error=f"skipped: {skip}")
                else:
                    try:
                        part = fusable_part(compiled, x, layer, ratio, T, opts, self.torch_compile,
                                            pdl_both=len(self.pdl_for(T)) > 1)
                    except Exception as exc:
                        part = FusablePart(layer, ratio, T, error=_short(exc))
                    if part.compile_s is not None:
                        self.budget.record_first_call("fusable part", part.compile_s)
                self.result.fusable.append(part)
                self.log(f"  layer {layer} T={T} fusable part: " + (part.error or (
                    f"eager {_fmt(part.eager_graph_us)} us, compile+cg {_fmt(part.compile_graph_us)} us, "
                    f"fused {_fmt(part.fused_graph_us)} us" if opts.timing else
                    f"{part.outputs_checked} outputs, within tolerance: {part.outputs_within_tolerance}")))
        del compiled
        self._free()

    def _fp64_reference(self, compiled: Any, x: torch.Tensor, T: int) -> Optional[torch.Tensor]:
        if compiled is None or getattr(compiled, "unfused", None) is None or T > self.opts.fp64_max_T:
            return None
        from fusegraph.cli.recording import Fp64Unsupported, run_fp64
        try:
            out = run_fp64(compiled.unfused, (x,))
        except Fp64Unsupported as exc:
            self.result.notes.append(f"no fp64 reference at T={T}: {exc}")
            return None
        except Exception as exc:
            if _is_oom(exc):
                self._free()
            self.result.notes.append(f"no fp64 reference at T={T}: {_short(exc)}")
            return None
        return out if isinstance(out, torch.Tensor) else None

    def _run_variant(self, variant: str, pdl_list: list[Optional[bool]], runner: LayerRunner, compiled: Any,
                     x: torch.Tensor, eager_out: Optional[torch.Tensor], ref64: Optional[torch.Tensor], layer: int, T: int,
                     add: Callable[..., Row]) -> None:
        from torch._dynamo.utils import counters

        opts = self.opts
        fn: Callable[..., Any]
        compile_s: Optional[float] = None
        breaks = graphs = None
        sites = compiled.report.counts() if variant in FUSED_VARIANTS else None
        for k, p in enumerate(pdl_list):
            row = add(variant, p, sites=sites)
            try:
                with pdl(bool(p)) if p is not None else contextlib.nullcontext():
                    if k == 0:
                        if variant == "eager":
                            fn = runner
                        elif variant == "compile" and opts.compile_dynamic:  # kept across T
                            fn = self._compiled_runners.setdefault(layer, self.torch_compile(runner))
                        elif variant == "compile":
                            fn = self.torch_compile(runner)
                        elif variant == "fusegraph":
                            fn = compiled
                        else:
                            fn = self.torch_compile(compiled)
                        counters.clear()
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            out = fn(x)
                        _sync(self.device)
                        first_s = time.perf_counter() - t0
                        if variant == "fusegraph":
                            compile_s = self._fg_seconds
                        if variant in COMPILED_VARIANTS:
                            compile_s = first_s
                            self.budget.record_first_call(variant, first_s)
                            breaks = int(sum(counters["graph_break"].values()))
                            graphs = int(counters["stats"].get("unique_graphs", 0))
                    else:
                        with torch.no_grad():
                            out = fn(x)
                    row.compile_s, row.graph_breaks, row.graphs = compile_s, breaks, graphs
                    if variant in FUSED_VARIANTS:
                        row.compiled_at_T = self._fg_T
                    if eager_out is not None:
                        verdict = check_output(out, eager_out, ref64)
                        row.rel_l2, row.within_tolerance, row.check_reason = (verdict.rel_l2, verdict.passed,
                                                                              verdict.reason)
                    prof = profile_forward(lambda: fn(x), self.device)
                    row.gpu_ops, row.gpu_us, row.fused_calls = prof.gpu_ops, prof.gpu_us, prof.fused_calls
                    row.fused_share = prof.fused_share
                    if opts.timing:
                        self._time(row, fn, x, out, layer, variant)
            except Interrupted:
                row.skipped = "run interrupted while measuring this row"
                raise
            except Exception as exc:
                if _is_oom(exc):
                    row.skipped = f"out of memory: {_short(exc)}"
                    self._free()
                else:
                    row.error = _short(exc)
                self.log(f"  layer {layer} T={T} {variant} pdl={p}: {row.skipped or row.error}")
                break
            self.log(f"  layer {layer} T={T} {variant:17s} pdl={str(p):5s} stream {_fmt(row.stream_us)} us, graph "
                     f"{_fmt(row.graph_us)} us, {row.gpu_ops} GPU ops, {row.fused_calls} fused calls, "
                     f"rel L2 {_fmt(row.rel_l2, '.1e')}, tolerance {'ok' if row.within_tolerance else 'FAIL'}")

    def _time(self, row: Row, fn: Callable[..., Any], x: torch.Tensor, plain_out: Any, layer: int,
              variant: str) -> None:
        opts = self.opts
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x)
        _sync(self.device)
        forward_s = time.perf_counter() - t0
        self.budget.record_forward(layer, variant, row.T, forward_s)
        row.stream_us = time_stream(lambda: fn(x), self.budget.iters_for(forward_s, opts.iters))
        if row.T <= opts.graph_max_T:
            try:
                us, replayed = time_graph(lambda: fn(x), self.budget.iters_for(forward_s, opts.replays))
            except Exception as exc:
                if _is_oom(exc):
                    raise
                row.graph_error = f"CUDA-graph capture/replay failed: {_short(exc)}"
                if variant in FUSED_VARIANTS:
                    row.replay_matches = False
                self._free()
                return
            row.graph_us = us
            if variant in FUSED_VARIANTS and isinstance(replayed, torch.Tensor):
                row.replay_rel_l2 = rel_l2(replayed, plain_out)
                row.replay_matches = bool(torch.equal(replayed, plain_out)) or row.replay_rel_l2 <= REPLAY_RTOL

    def _layer_checks(self, compiled: Any, x: torch.Tensor, layer: int, T: int) -> None:
        if not self.opts.export_check or any(c.name == "export" and c.layer == layer for c in self.result.checks):
            return
        try:
            with torch.no_grad():
                expected = compiled(x)
            check = export_check(compiled, x, expected, layer, T)
        except Exception as exc:
            check = Check("export", layer, T, False, _short(exc))
        self.result.checks.append(check)
        self.log(f"  layer {layer} T={T}: torch.export {'ok' if check.passed else 'FAILED'}: {check.detail}")

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> RunResult:
        opts = self.opts
        if opts.compile_dynamic is False:  # one static compile per T and layer: allow the recompiles
            for knob in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
        t = time.perf_counter()
        self.stack = build_stack(opts.preset, opts.ratios, max(opts.tokens), self.device, opts.seed, opts.max_seq_len)
        self.result.layers = [{"index": i, "ratio": r} for i, r in enumerate(self.stack.ratios)]
        cfg = self.stack.model.config
        self.result.meta["model"] = {"preset": opts.preset, "dim": cfg.dim, "n_heads": cfg.n_heads,
                                     "hc_mult": cfg.hc_mult, "ratios": self.stack.ratios,
                                     "max_seq_len": cfg.max_seq_len, "kv_cache_layout": cfg.kv_cache_layout}
        self.log(f"[{self.budget.elapsed():6.1f}s] built {opts.preset} layers {self.stack.ratios} "
                 f"(max_seq_len {cfg.max_seq_len}) in {time.perf_counter() - t:.1f} s")
        reused = [T for T in opts.tokens if self.compile_T_for(T) != T]
        if reused and FUSED_VARIANTS & set(opts.variants):
            self.result.notes.append(
                f"prefill T={','.join(map(str, reused))}: the fused variants run the fusegraph.compile made once per "
                f"layer at T={opts.prefill_compile_T} (rows: compiled_at_T). The fused graph is a symbolic trace "
                f"(shape-generic) and every fused op selects its provider again from the real tensors, so it serves "
                f"any T; its outputs are judged against eager at the run T. One compile serves every prefill T "
                f"(planning at the prefill T itself: on a 2-core CPU the 3-layer flash stack took "
                f"{CPU_STACK_COMPILE_NOTE})")
        try:
            for T in opts.tokens:
                for layer in range(len(self.stack.runners)):
                    self.log(f"[{self.budget.elapsed():6.1f}s] layer {layer} (ratio {self.stack.ratios[layer]}) T={T}")
                    try:
                        self.run_layer(layer, T)
                    except Exception as exc:  # one broken layer must not take the run down
                        self.result.notes.append(f"layer {layer} T={T}: {_short(exc)}")
                        self.log(f"  layer {layer} T={T}: {_short(exc)}")
                    if not opts.compile_dynamic:
                        torch._dynamo.reset()  # static compiles: free them, and stay under the recompile limit
                    self._free()
                    self._checkpoint()
        except Interrupted as exc:
            self.result.notes.append(f"run interrupted after {self.budget.elapsed():.0f} s ({exc}): what follows the "
                                     "last measured layer was not run")
            self.log(f"interrupted: {exc}")
        self._prefill_compiled.clear()
        self._checkpoint()
        return self.result

    def _checkpoint(self) -> None:
        """Goals and wall time so far, handed to --out/--markdown writers: a run killed at its time limit
        keeps what it measured."""
        self.result.goals = evaluate_goals(self.result, self.opts)
        self.result.meta["wall_s"] = round(self.budget.elapsed(), 1)
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(self.result)
            except Exception as exc:  # a full disk must not lose the run in memory
                self.log(f"writing results failed: {_short(exc)}")


# -- goals ---------------------------------------------------------------------------------------
def _find(rows: Sequence[Row], **key: Any) -> Optional[Row]:
    for r in rows:
        if all(getattr(r, k) == v for k, v in key.items()) and not r.skipped and not r.error:
            return r
    return None


def evaluate_goals(result: RunResult, opts: Options) -> list[Goal]:
    goals: list[Goal] = []
    rows = result.rows
    fused_pdl = True if result.meta.get("pdl_supported") and opts.pdl != "off" else False
    # 1. the fusable part of a decode layer at T = 1
    parts = [p for p in result.fusable if p.T == 1 and p.speedup_vs_compile is not None]
    if opts.timing:
        if parts:
            worst = min(parts, key=lambda p: p.speedup_vs_compile or 0.0)
            total_c = sum(p.compile_graph_us or 0.0 for p in parts)
            total_f = sum(p.fused_graph_us or 0.0 for p in parts)
            detail = ", ".join(f"layer {p.layer} (r={p.ratio}) {p.speedup_vs_compile:.2f}x" for p in parts)
            goals.append(Goal("decode fusable part, T=1", f">= {GOAL_DECODE_FUSABLE_X:g}x torch.compile + CUDA graphs",
                              worst.speedup_vs_compile, (worst.speedup_vs_compile or 0) >= GOAL_DECODE_FUSABLE_X,
                              f"{detail}; all layers {total_c / total_f:.2f}x" if total_f else detail))
        else:
            goals.append(Goal("decode fusable part, T=1", f">= {GOAL_DECODE_FUSABLE_X:g}x torch.compile + CUDA graphs",
                              None, None, "not measured"))
        # 2. whole-layer prefill
        for T in [t for t in opts.tokens if t > opts.graph_max_T]:
            worst = None
            parts_txt: list[str] = []
            for layer in result.layers:
                base = _find(rows, layer=layer["index"], T=T, variant="compile")
                cands = [r for v in ("fusegraph", "fusegraph_compile")
                         if (r := _find(rows, layer=layer["index"], T=T, variant=v, pdl=fused_pdl))]
                if base is None or base.stream_us is None or not cands:
                    parts_txt.append(f"layer {layer['index']}: not measured")
                    continue
                best = min(cands, key=lambda r: r.stream_us or math.inf)
                x = base.stream_us / best.stream_us if best.stream_us else None
                if x is not None:
                    worst = x if worst is None else min(worst, x)
                parts_txt.append(f"layer {layer['index']} (r={layer['ratio']}) {x:.2f}x ({best.variant})")
            measured = all("not measured" not in t for t in parts_txt)
            goals.append(Goal(f"prefill whole layer, T={T}", f">= {GOAL_PREFILL_LAYER_X:g}x torch.compile",
                              worst, (worst >= GOAL_PREFILL_LAYER_X) if (worst is not None and measured) else None,
                              "; ".join(parts_txt)))
    # 3. numerics, capture, export, graph breaks
    judged = [r for r in rows if r.within_tolerance is not None]
    bad = [f"layer {r.layer} T={r.T} {r.variant}" for r in judged if not r.within_tolerance]
    goals.append(Goal("outputs within the compare tool's tolerances", "all variants", None,
                      (not bad) if judged else None, ("FAIL: " + ", ".join(bad[:8])) if bad else f"{len(judged)} runs"))
    parts_checked = [p for p in result.fusable if p.outputs_within_tolerance is not None]
    bad_parts = [f"layer {p.layer} T={p.T}: {p.check_reason}" for p in parts_checked if not p.outputs_within_tolerance]
    goals.append(Goal("fused ops vs the regions they replace", "site tolerances", None,
                      (not bad_parts) if parts_checked else None,
                      "; ".join(bad_parts)[:400] if bad_parts else f"{sum(p.outputs_checked for p in parts_checked)} outputs"))
    if opts.timing:
        replays = [r for r in rows if r.replay_matches is not None]
        bad = [f"layer {r.layer} T={r.T} {r.variant} pdl={r.pdl} ("
               + (r.graph_error or f"rel L2 {r.replay_rel_l2:.1e}") + ")" for r in replays if not r.replay_matches]
        goals.append(Goal("CUDA-graph replay equals the plain run (fused variants)", "all", None,
                          (not bad) if replays else None, ", ".join(bad) if bad else f"{len(replays)} captures"))
    exports = [c for c in result.checks if c.name == "export"]
    goals.append(Goal("torch.export of the fused graph", "all layers", None,
                      all(c.passed for c in exports) if exports else None,
                      "; ".join(f"layer {c.layer}: {c.detail}" for c in exports)[:600]))
    fgc = [r for r in rows if r.variant == "fusegraph_compile" and r.graph_breaks is not None]
    broken = [f"layer {r.layer} T={r.T}: {r.graph_breaks} breaks" for r in fgc if r.graph_breaks]
    goals.append(Goal("torch.compile(fusegraph) without graph breaks", "0 breaks", None,
                      (not broken) if fgc else None, ", ".join(broken) if broken else f"{len(fgc)} compiles"))
    opaque = [r for r in rows if r.variant == "fusegraph_compile" and r.fused_calls is not None and r.sites]
    lost = [f"layer {r.layer} T={r.T}: {r.fused_calls} of {sum(r.sites.values())} fused calls"
            for r in opaque if r.fused_calls < sum(r.sites.values())]
    goals.append(Goal("fused ops stay opaque inside torch.compile", "every site called", None,
                      (not lost) if opaque else None, ", ".join(lost) if lost else f"{len(opaque)} runs"))
    return goals


# -- output --------------------------------------------------------------------------------------
def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _pdl_label(p: Optional[bool]) -> str:
    return "-" if p is None else ("on" if p else "off")


def stack_rows(result: RunResult) -> list[Row]:
    """Per (T, variant, PDL): the layers summed, when every layer was measured."""
    out = []
    n_layers = len(result.layers)
    keys = []
    for r in result.rows:
        k = (r.T, r.variant, r.pdl)
        if k not in keys:
            keys.append(k)
    for T, variant, p in keys:
        rs = [r for r in result.rows if (r.T, r.variant, r.pdl) == (T, variant, p) and not r.skipped and not r.error]
        if len(rs) != n_layers or n_layers < 2 or all(r.headline_us is None for r in rs):
            continue
        s = Row(-1, -1, T, variant, p)
        s.stream_us = sum(r.stream_us for r in rs) if all(r.stream_us is not None for r in rs) else None
        s.graph_us = sum(r.graph_us for r in rs) if all(r.graph_us is not None for r in rs) else None
        s.gpu_ops = sum(r.gpu_ops for r in rs) if all(r.gpu_ops is not None for r in rs) else None
        s.fused_calls = sum(r.fused_calls for r in rs) if all(r.fused_calls is not None for r in rs) else None
        if all(r.gpu_us is not None and r.fused_share is not None for r in rs):
            total = sum(r.gpu_us for r in rs)
            s.fused_share = sum(r.gpu_us * r.fused_share for r in rs) / total if total else None
        out.append(s)
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def format_report(result: RunResult) -> str:
    meta = result.meta
    lines = [f"{meta.get('device')}  torch {meta.get('torch')}  triton {meta.get('triton')}  "
             f"commit {str(meta.get('git_commit'))[:12]}  {meta.get('date')}", ""]
    head = ("layer", "r", "T", "variant", "PDL", "stream us", "graph us", "GPU ops", "fused", "fused %",
            "compile s", "breaks", "rel L2", "tol", "note")
    body = []
    for r in sorted(result.rows + stack_rows(result), key=lambda r: (r.T, r.layer if r.layer >= 0 else 99,
                                                                     VARIANTS.index(r.variant), r.pdl is False)):
        layer = "stack" if r.layer < 0 else str(r.layer)
        ratio = "" if r.layer < 0 else str(r.ratio)
        note = r.skipped and f"skipped: {r.skipped}" or r.error and f"ERROR: {r.error}" or r.check_reason
        if r.compiled_at_T is not None and r.compiled_at_T != r.T and not r.skipped:
            note = f"fusegraph.compile at T={r.compiled_at_T}" + (f"; {note}" if note else "")
        if r.graph_error:
            note = r.graph_error + " " + note
        elif r.replay_matches is False:
            note = f"graph replay differs (rel L2 {r.replay_rel_l2:.1e}) " + note
        body.append((layer, ratio, str(r.T), r.variant, _pdl_label(r.pdl), _fmt(r.stream_us), _fmt(r.graph_us),
                     _fmt(r.gpu_ops, "d") if r.gpu_ops is not None else "-",
                     _fmt(r.fused_calls, "d") if r.fused_calls is not None else "-",
                     _fmt(100 * r.fused_share if r.fused_share is not None else None, ".0f"),
                     _fmt(r.compile_s), "-" if r.graph_breaks is None else str(r.graph_breaks),
                     _fmt(r.rel_l2, ".1e"), "-" if r.within_tolerance is None else ("ok" if r.within_tolerance else "FAIL"),
                     note[:90]))
    lines += ["Per layer (graph us: one forward under CUDA-graph replay; stream us: launched from Python):"]
    lines += _table(head, body)
    if result.fusable:
        lines += ["", "Fusable part of a decode layer (mHC, norms, RoPE, compressor pooling, KV store; attention "
                      "excluded), under CUDA-graph replay:"]
        fhead = ("layer", "r", "T", "sites", "nodes", "eager us", "compile+cg us", "fused us", "fused us PDL off",
                 "x compile+cg", "outputs", "note")
        fbody = []
        for p in sorted(result.fusable, key=lambda p: (p.T, p.layer)):
            fbody.append((str(p.layer), str(p.ratio), str(p.T), str(sum(p.sites.values())), str(p.nodes_replaced),
                          _fmt(p.eager_graph_us), _fmt(p.compile_graph_us), _fmt(p.fused_graph_us),
                          _fmt(p.fused_graph_us_pdl_off), _fmt(p.speedup_vs_compile, ".2f"),
                          "-" if p.outputs_within_tolerance is None else
                          (f"{p.outputs_checked} ok" if p.outputs_within_tolerance else "FAIL"),
                          (p.error or p.check_reason)[:80]))
        lines += _table(fhead, fbody)
    if result.checks:
        lines += ["", "Checks:"] + [f"  {c.name} layer {c.layer} (T={c.T}): {'ok' if c.passed else 'FAIL'}: {c.detail}"
                                    for c in result.checks]
    lines += ["", "Goals:"]
    for g in result.goals:
        status = "?" if g.passed is None else ("ok" if g.passed else "FAIL")
        value = f" {g.value:.2f}x" if g.value is not None else ""
        lines.append(f"  [{status:4s}] {g.name} ({g.target}):{value} {g.detail}")
    lines += ["", "Notes:"] + [f"  - {n}" for n in result.notes]
    return "\n".join(lines)


def write_json(path: str, result: RunResult) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result.as_dict(), f, indent=1, default=str)


def write_outputs(opts: Options, result: RunResult, plot_too: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> None:
    """--out JSON and --markdown (after every layer), and the --plot (at the end)."""
    say = log or (lambda msg: None)
    if opts.out:
        write_json(opts.out, result)
        say(f"wrote {opts.out}")
    if opts.markdown or (plot_too and opts.plot):
        from benchmarks import plot as _plot
        data = result.as_dict()
        if opts.markdown:
            os.makedirs(os.path.dirname(os.path.abspath(opts.markdown)), exist_ok=True)
            with open(opts.markdown, "w") as f:
                f.write(_plot.markdown(data))
            say(f"wrote {opts.markdown}")
        if plot_too and opts.plot:
            say(f"wrote {_plot.plot(data, opts.plot)}")


def main(argv: Optional[list[str]] = None) -> int:
    opts = parse_args(argv)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks.e2e: no CUDA device here; the benchmark times GPU kernels. Use --dry-run for the CPU "
              "path (tiny preset, no timing).", file=sys.stderr)
        return 2
    if opts.timing and not opts.device.startswith("cuda"):
        print("benchmarks.e2e: timing needs a CUDA device; use --dry-run on CPU", file=sys.stderr)
        return 2
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    runner = Runner(opts, log, on_checkpoint=lambda result: write_outputs(opts, result))
    log(f"{runner.result.meta.get('device')} | torch {torch.__version__} | preset {opts.preset} | ratios "
        f"{opts.ratios} | T {opts.tokens} | variants {opts.variants} | PDL {runner.pdl_settings} | "
        f"prefill compile T {opts.prefill_compile_T} | time budget {opts.time_budget}")
    from fusegraph.cli.compiling import forced_providers

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with forced_providers(opts.providers):
            result = runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_outputs(opts, result, plot_too=True, log=log)
    print(format_report(result))
    failed = any(g.passed is False for g in result.goals) or any(r.error for r in result.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
