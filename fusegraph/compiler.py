"""``fusegraph.compile``: the pipeline, as ordered stages over one torch.fx graph.

    capture -> canonicalize -> match -> rewrite -> compose -> dispatch -> check

Each stage is a small function here; each records a frozen ``StageInfo`` (what it changed, how long
it took) in the report, in the spirit of TensorRT-LLM AutoDeploy's transform history. Stages must
leave the graph linted and every node with ``meta["val"]``; ``check`` re-propagates meta tensors
through the rewritten graph, so a rewrite that broke shapes or dtypes fails here, at compile time,
with the site named — never at run time with a wrong result.

Capture (``fusegraph.capture.capture``) is ``torch.fx.symbolic_trace``; where Python control flow
needs sizes (a decode step's per-token loop) it traces again with the example shapes, and the
module then refuses inputs of other shapes (``InputSpecError``) instead of running a graph built for
others. When neither capture works (control flow on tensor values), ``compile`` falls back to the
Dynamo backend (``fusegraph.backend``), which runs the same stages on each graph Dynamo hands it
(graph breaks give several graphs; a guard failure, e.g. another ``start_pos``, a new one), and says
so in ``report.capture_note``.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.fx
from torch.fx._lazy_graph_module import _LazyGraphModule

from fusegraph import capture as _capture
from fusegraph import ops
from fusegraph import targets as _targets
from fusegraph.canonicalize import canonicalize, op_label
from fusegraph.dispatch import plan_call
from fusegraph.functionalize import restore_inplace_writes
from fusegraph.match.matcher import REPORT_FRACTION, Match, Matcher
from fusegraph.pattern import Composition, Pattern
from fusegraph.records import CompileReport, GraphStats, MatchSite, NearMiss
from fusegraph.rewrite import apply, compose

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class StageInfo:
    stage: str
    seconds: float
    changed: int          # nodes added/removed/replaced, sites found: what the stage did
    note: str = ""


class InputSpecError(ValueError):
    """A module compiled for fixed input shapes was called with other shapes or dtypes."""


class CompiledModule(torch.nn.Module):
    """The fused model. Shares parameters and buffers with the original, so its state dict has the
    model's keys and loading into either updates both."""

    def __init__(self, model: torch.nn.Module, fused: torch.fx.GraphModule, unfused: torch.fx.GraphModule,
                 report: CompileReport, stages: list[StageInfo], site_nodes: dict[str, torch.fx.Node],
                 input_specs: tuple | None = None):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
        object.__setattr__(self, "fused", fused)
        object.__setattr__(self, "unfused", unfused)
        object.__setattr__(self, "report", report)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "_site_nodes", site_nodes)
        object.__setattr__(self, "config", getattr(model, "config", None))
        # (shape, dtype) per positional tensor input when the capture specialized to the example
        # shapes (None: the graph takes any shapes); non-tensor arguments are asserted by the graph.
        object.__setattr__(self, "input_specs", input_specs)
        try:  # the graph names a traced-as-constant argument ``start_pos_1``: keywords bind by the model's names
            signature: inspect.Signature | None = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None
        object.__setattr__(self, "_signature", signature)

    @property
    def sites(self) -> list[MatchSite]:
        return self.report.sites

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs and self._signature is not None:
            bound = self._signature.bind(*args, **kwargs)
            args, kwargs = bound.args, bound.kwargs
        if self.input_specs is not None:
            _check_input_specs(self.input_specs, args)
        return self.fused(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # keep the graphs' own attribute copies on the same device
        super()._apply(fn, recurse)
        self.fused._apply(fn, recurse)
        self.unfused._apply(fn, recurse)
        return self

    def site_call(self, site: MatchSite) -> tuple[Callable[..., Any], list[str], dict[str, Any]]:
        """``fn(*values)`` runs the fused op of ``site`` the way the fused graph does, on values of
        the unfused graph's nodes named by ``arg_names``; returns outputs in ``site.outputs`` order."""
        call = self._site_nodes[site.fused_node]
        op = ops.op_of_target(call.target)
        params = list(op.signature.parameters)
        node_args = [(p, a) for p, a in zip(params, call.args)]
        # Node names of the fused graph; an argument produced by another fused call is named after
        # that call's getitem (callers map those back to unfused nodes through ``site.inputs``).
        arg_names = [a.name for _, a in node_args if isinstance(a, torch.fx.Node)]
        literals = {p: a for p, a in node_args if not isinstance(a, torch.fx.Node)}

        def fn(*values: Any) -> tuple:
            it = iter(values)
            args = [next(it) if isinstance(a, torch.fx.Node) else a for _, a in node_args]
            out = op(*args)
            return out if isinstance(out, tuple) else (out,)

        return fn, arg_names, literals

    def warmup(self, max_tokens: int, progress: bool = True, **kwargs: Any):
        """Compile every kernel variant the model meets up to ``max_tokens`` (each split-count
        bucket, each chosen provider) so no request pays a JIT stall; see ``fusegraph.warmup``."""
        from fusegraph.warmup import warmup
        return warmup(self, max_tokens, progress=progress, **kwargs)


def _check_input_specs(specs: tuple, args: tuple) -> None:
    for i, (spec, arg) in enumerate(zip(specs, args)):
        if spec is None or not isinstance(arg, torch.Tensor):
            continue
        shape, dtype = spec
        if tuple(arg.shape) != shape or arg.dtype != dtype:
            raise InputSpecError(
                f"input {i} is {arg.dtype} {tuple(arg.shape)}, but this module was compiled for {dtype} {shape} "
                "(its capture is specialized to the example shapes: see report.capture_note); "
                "compile again with example inputs of these shapes")


# -- stages ---------------------------------------------------------------------------------------
def _select_patterns(names: Iterable[str] | None) -> tuple[list[Pattern], list[Composition]]:
    from fusegraph.patterns import all_compositions, all_patterns

    pats, comps = all_patterns(), all_compositions()
    if names is None:
        return pats, comps
    wanted = set(names)
    known = {p.name for p in pats} | {c.name for c in comps}
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown pattern(s) {sorted(unknown)}; known: {sorted(known)}")
    return [p for p in pats if p.name in wanted], [c for c in comps if c.name in wanted]


def _stats(gm: torch.fx.GraphModule) -> GraphStats:
    try:
        from fusegraph.cost import graph_stats
        return graph_stats(gm)
    except ImportError:  # pragma: no cover - cost model is optional for the core
        census: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op in ("call_function", "call_method", "call_module"):
                census[op_label(n)] = census.get(op_label(n), 0) + 1
        return GraphStats(sum(census.values()), census)


def _bytes(nodes: Iterable[torch.fx.Node]) -> tuple[int, int]:
    try:
        from fusegraph.cost import node_bytes, node_launches
    except ImportError:  # pragma: no cover
        return 0, 0
    nodes = list(nodes)
    return sum(node_bytes(n) for n in nodes), sum(node_launches(n) for n in nodes)


def _match(gm, patterns: list[Pattern], seed: int, progress: Progress | None) -> tuple[list[Match], list[NearMiss]]:
    matcher = Matcher(gm, seed=seed)
    matches: list[Match] = []
    misses: list[NearMiss] = []
    for i, pattern in enumerate(sorted(patterns, key=lambda p: -p.priority)):
        if progress:
            progress(i, len(patterns), f"matching {pattern.name}")
        found, missed = matcher.run(pattern)
        matches += found
        misses += missed
    if progress:
        progress(len(patterns), len(patterns), "matching done")
    return matches, _relevant_misses(misses, matches)


def _relevant_misses(misses: list[NearMiss], matches: list[Match]) -> list[NearMiss]:
    """Drop attempts that were not real candidates, and attempts at sites another pattern of the
    same op fused (``mhc_pre_norm`` failing where the plain ``mhc_pre`` matched is no news)."""
    covered = {(m.pattern.op, m.binding.seed.name) for m in matches}
    ops_of = {m.pattern.name: m.pattern.op for m in matches}
    from fusegraph.patterns import all_patterns
    op_by_pattern = {p.name: p.op for p in all_patterns()} | ops_of
    out = []
    for miss in misses:
        if miss.kind == "missing input" and miss.matched_fraction < REPORT_FRACTION:
            continue
        if miss.stage in ("align", "verify", "evaluate", "constraints") and miss.matched_fraction < REPORT_FRACTION:
            continue
        if (op_by_pattern.get(miss.pattern), miss.anchor) in covered:
            continue
        out.append(miss)
    return out


def _module_of(match: Match) -> str:
    nodes = list(match.region.outputs.values()) + match.region.mutations or match.region.nodes
    return _capture.module_path(nodes[0]) if nodes else ""


def compile(model: torch.nn.Module, *, target: str = "auto", patterns: Iterable[str] | None = None,
            example_inputs: tuple | None = None, verify: bool = True, fuel: int | None = None,
            progress: Progress | None = None, seed: int = 0) -> torch.nn.Module:
    """Capture ``model``, fuse every DSV4 subgraph found, and return the fused module.

    ``target`` plans provider choices for that hardware (``auto``: this machine's); ``patterns``
    restricts the patterns tried; ``fuel`` rewrites only the first ``fuel`` sites (bisection);
    ``verify`` re-checks the rewritten graph's shapes and dtypes. ``example_inputs`` may be fake or
    meta tensors. Models symbolic tracing cannot capture fall back to the Dynamo backend.
    """
    with _gc_paused():
        return _compile(model, target, patterns, example_inputs, verify, fuel, progress, seed)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic collector off while planning: an FX graph is one large cyclic object graph,
    so every full collection walks all of it (measured ~20% of capture on pro, 19-21 s -> 15-18 s
    for the whole plan); what planning leaves is collected once, when it is back on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile(model: torch.nn.Module, target: str, patterns: Iterable[str] | None, example_inputs: tuple | None,
             verify: bool, fuel: int | None, progress: Progress | None, seed: int) -> torch.nn.Module:
    plan_target = _targets.parse(target)
    if example_inputs is None:
        example_inputs = _default_inputs(model)
    pats, comps = _select_patterns(patterns)
    stages: list[StageInfo] = []
    t0 = time.perf_counter()
    try:
        captured = _capture.capture(model, tuple(example_inputs))
    except _capture.CaptureError as exc:
        return _dynamo_fallback(model, plan_target, patterns, str(exc), seed=seed)
    gm = captured.graph_module
    stages.append(StageInfo("capture", time.perf_counter() - t0, len(gm.graph.nodes), captured.note))

    report = CompileReport(model=type(model).__name__, target=plan_target, capture=captured.method,
                           capture_note=captured.note)
    fused, unfused, site_nodes = run_passes(gm, pats, comps, plan_target, report, stages,
                                            fuel=fuel, progress=progress, seed=seed)
    if verify:
        t = time.perf_counter()
        _capture.propagate(fused, tuple(example_inputs))
        fused.graph.lint()
        stages.append(StageInfo("check", time.perf_counter() - t, 0, "meta-tensor propagation of the fused graph"))
    _LazyGraphModule.force_recompile(fused)  # the one code generation (torch.compile/export need it)
    report.after = _stats(fused)
    from fusegraph.expected import expected_sites
    report.expected = expected_sites(model)
    report.timings = {s.stage: round(s.seconds, 4) for s in stages}
    return CompiledModule(model, fused, unfused, report, stages, site_nodes, captured.input_specs)


def run_passes(gm: torch.fx.GraphModule, pats: list[Pattern], comps: list[Composition], target: str,
               report: CompileReport, stages: list[StageInfo], *, fuel: int | None = None,
               progress: Progress | None = None, seed: int = 0):
    """canonicalize -> match -> rewrite -> compose -> dispatch on ``gm`` in place.

    Returns (fused graph, a copy of the canonical graph before matching, fused call by name)."""
    t = time.perf_counter()
    removed = canonicalize(gm)
    stages.append(StageInfo("canonicalize", time.perf_counter() - t, sum(removed.values()),
                            f"{removed['noop']} no-op casts/views, {removed['get_attr']} repeated get_attr, "
                            f"{removed['dead']} dead nodes, {removed['writes']} buffer fills made values"))
    # The copy is only run by `compare` and benchmarks: its code is generated on first call.
    unfused = _LazyGraphModule(gm, copy.deepcopy(gm.graph), class_name=gm.__class__.__name__)
    for a, b in zip(gm.graph.nodes, unfused.graph.nodes):
        b.meta = dict(a.meta)
    report.before = _stats(gm)

    t = time.perf_counter()
    matches, misses = _match(gm, pats, seed, progress)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    matches.sort(key=lambda m: min(order[n] for n in m.region.nodes))
    if fuel is not None:
        matches = matches[:max(0, fuel)]
    stages.append(StageInfo("match", time.perf_counter() - t, len(matches), f"{len(misses)} near misses"))

    t = time.perf_counter()
    site_by_call: dict[torch.fx.Node, MatchSite] = {}
    remap: dict[torch.fx.Node, torch.fx.Node] = {}   # outputs of earlier rewrites -> their results
    for m in matches:
        b_unf, l_unf = _bytes(m.region.nodes)
        module = _module_of(m)
        m.binding.nodes = {k: remap.get(v, v) for k, v in m.binding.nodes.items()}
        done = apply(gm, m)
        remap.update(done.results)
        site_by_call[done.call] = MatchSite(
            pattern=m.pattern.name, op=m.pattern.op, module=module, anchor=m.binding.seed.name,
            fused_node=done.call.name, replaced=tuple(done.replaced), inputs=done.inputs,
            outputs={str(i): n for i, n in done.outputs.items()}, selection=None,  # type: ignore[arg-type]
            bytes_unfused=b_unf, launches_unfused=l_unf, max_error=round(m.error, 4))
    stages.append(StageInfo("rewrite", time.perf_counter() - t, len(site_by_call)))

    t = time.perf_counter()
    n_composed = 0
    gm.graph.eliminate_dead_code(is_impure_node=_impure)  # leftovers must not count as readers
    for comp in comps:
        for first, second, new in compose(gm, comp):
            a, b = site_by_call.pop(first), site_by_call.pop(second)
            site_by_call[new] = MatchSite(
                pattern=comp.name, op=comp.op, module=b.module, anchor=a.anchor, fused_node=new.name,
                replaced=a.replaced + b.replaced, inputs={**b.inputs, **a.inputs},
                outputs={**{f"{comp.first}.{k}": v for k, v in a.outputs.items()},
                         **{f"{comp.second}.{k}": v for k, v in b.outputs.items()}},
                selection=None,  # type: ignore[arg-type]
                bytes_unfused=a.bytes_unfused + b.bytes_unfused,
                launches_unfused=a.launches_unfused + b.launches_unfused,
                max_error=max(a.max_error or 0, b.max_error or 0))
            n_composed += 1
    gm.graph.eliminate_dead_code(is_impure_node=_impure)
    restore_inplace_writes(gm)  # buffer fills no pattern took: in place again, no copies
    gm.graph.lint()
    gm.recompile()
    stages.append(StageInfo("compose", time.perf_counter() - t, n_composed))

    t = time.perf_counter()
    sites = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for call, site in sorted(site_by_call.items(), key=lambda kv: order[kv[0]]):
        selection = plan_call(call, target)
        in_bytes = sum(_nbytes(a.meta.get("val")) for a in call.all_input_nodes)
        sites.append(_replace(site, selection=selection, fused_node=call.name, bytes_fused=in_bytes))
    stages.append(StageInfo("dispatch", time.perf_counter() - t, len(sites)))
    report.sites = sites
    report.near_misses = misses
    site_nodes = {call.name: call for call in site_by_call}
    return gm, unfused, site_nodes


def _replace(site: MatchSite, **changes: Any) -> MatchSite:
    from dataclasses import replace
    return replace(site, **changes)


def _nbytes(val: Any) -> int:
    return val.numel() * val.element_size() if isinstance(val, torch.Tensor) else 0


def _impure(node: torch.fx.Node) -> bool:
    from fusegraph.canonicalize import is_inplace
    op = ops.op_of_target(node.target) if node.op == "call_function" else None
    return is_inplace(node) or node.is_impure() or (op is not None and bool(op.mutates_args))


def _default_inputs(model: torch.nn.Module) -> tuple:
    maker = getattr(model, "example_inputs", None)
    if callable(maker):
        return tuple(maker())
    try:
        from fusegraph.models.model import DSV4Model
        from fusegraph.models.presets import example_inputs
        if isinstance(model, DSV4Model):
            return tuple(example_inputs(model, 128))
    except ImportError:
        pass
    raise ValueError("fusegraph.compile needs example_inputs=(...) for this model (fake or meta tensors are fine)")


def _dynamo_fallback(model: torch.nn.Module, target: str, patterns, why: str, seed: int = 0) -> torch.nn.Module:
    """``torch.compile`` with the fusegraph backend. Dynamo specializes on the non-tensor arguments
    and the shapes (``dynamic=False``): another ``start_pos`` fails a guard and compiles a new graph,
    whose sites join the same report."""
    from fusegraph.backend import backend
    from fusegraph.expected import expected_sites

    be = backend(target=target, patterns=patterns, seed=seed)
    compiled = torch.compile(model, backend=be, dynamic=False)
    report = be.report
    report.model = type(model).__name__
    report.capture = "dynamo"
    report.capture_note = (f"{why}; fell back to the torch.compile backend (graphs are fused when first run; "
                           "another value of a non-tensor argument or another input shape fails a Dynamo guard "
                           "and fuses a new graph, up to torch._dynamo.config.recompile_limit)")
    report.expected = expected_sites(model)
    compiled.report = report  # type: ignore[attr-defined]
    compiled.fusegraph_backend = be  # type: ignore[attr-defined]  # per-graph records: be.graphs
    return compiled
