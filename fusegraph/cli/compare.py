"""``fusegraph compare MODEL``: is the fused model still the same model?

1. Run ``compiled.unfused`` (the captured graph, original math) and ``compiled`` (fused) on the same
   seeded inputs, with module buffers (KV caches) restored between runs.
2. Model outputs: fused vs unfused, and both against an fp64 run of the unfused graph.
3. Per match site, differential testing on real activations: the site's inputs are recorded during
   the unfused run (``recording.SiteRecorder``); the fused op is called on them exactly as the fused
   graph calls it (``compiled.site_call``) and compared with what the replaced subgraph produced,
   and both with the op's torch reference run on the inputs upcast to fp64.
4. Tolerances per dtype (and per op where quantization is involved) come from
   ``fusegraph.tolerances``, the only place numbers are set.
5. On a GPU: fused vs unfused time (CUDA events, median) and kernel launches per forward.
6. ``--bisect``: binary search over ``fusegraph.compile(..., fuel=k)`` for the first site whose
   fusion pushes a model output past tolerance.
7. ``-o DIR``: ``DIR/compare.html`` (graph diff per site, two SVG graphs side by side) and
   ``DIR/compare.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fusegraph import targets, tolerances
from fusegraph.cli import model_source
from fusegraph.cli.compiling import (CompileFn, default_compile, forced_providers, parse_providers,
                                     parse_target, run_compile)
from fusegraph.cli.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
from fusegraph.cli.numerics import TensorCheck, check, clone_value, upcast64
from fusegraph.cli.outputs import check_output_dir, write_text
from fusegraph.cli.progress import Progress
from fusegraph.cli.recording import Fp64Unsupported, SiteRecorder, restore_buffers, run_fp64
from fusegraph.cli.timing import Timing
from fusegraph.records import CompileReport, MatchSite

SCHEMA = "fusegraph.compare/1"


@dataclass
class SiteCheck:
    index: int
    site: MatchSite
    checks: list[TensorCheck] = field(default_factory=list)
    error: str = ""                 # the fused call could not be made / raised
    notes: list[str] = field(default_factory=list)  # how the site was compared, when not plainly

    @property
    def passed(self) -> bool:
        return not self.error and all(c.passed for c in self.checks)

    def worst(self) -> TensorCheck | None:
        """The output closest to (or furthest past) its bound."""
        def score(c: TensorCheck) -> float:
            if not c.passed:
                return float("inf")
            return (c.rel_l2 or 0.0) / c.tolerance.rel_l2 if c.tolerance.rel_l2 else (c.mismatch or 0.0)
        return max(self.checks, key=score) if self.checks else None

    def as_dict(self) -> dict[str, Any]:
        s = self.site
        return {"index": self.index, "pattern": s.pattern, "op": s.op, "module": s.module,
                "fused_node": s.fused_node, "provider": s.selection.provider, "passed": self.passed,
                "error": self.error, "notes": list(self.notes), "outputs": [c.as_dict() for c in self.checks]}


@dataclass
class BisectResult:
    steps: list[tuple[int, bool]]          # (fuel, model outputs within tolerance)
    culprit: int | None                    # index of the first bad site in fuel (graph) order
    site: MatchSite | None
    failing: TensorCheck | None            # the model output it pushed past tolerance
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"steps": [{"fuel": k, "passed": ok} for k, ok in self.steps], "culprit": self.culprit,
                "site": self.site.as_dict() if self.site else None,
                "failing_output": self.failing.as_dict() if self.failing else None, "note": self.note}


@dataclass
class CompareResult:
    source: str
    target: str
    device: str
    tokens: int | None
    seed: int
    report: CompileReport
    outputs: list[TensorCheck]
    sites: list[SiteCheck]
    fp64_note: str = ""                    # why the model-level fp64 reference is missing, if it is
    timing_unfused: Timing | None = None
    timing_fused: Timing | None = None
    timing_note: str = ""
    bisect: BisectResult | None = None
    # The raw model outputs (unfused, fp64) for --bisect; not serialized.
    reference_outputs: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.outputs) and all(s.passed for s in self.sites)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "source": self.source, "model": self.report.model, "target": self.target,
            "device": self.device, "tokens": self.tokens, "seed": self.seed, "passed": self.passed,
            "fp64_note": self.fp64_note,
            "outputs": [c.as_dict() for c in self.outputs],
            "sites": [s.as_dict() for s in self.sites],
            "timing": {"unfused": self.timing_unfused.as_dict() if self.timing_unfused else None,
                       "fused": self.timing_fused.as_dict() if self.timing_fused else None,
                       "note": self.timing_note},
            "bisect": self.bisect.as_dict() if self.bisect else None,
            "tolerances": {"growth": tolerances.GROWTH},
        }


# -- running ------------------------------------------------------------------------------------------
def _flatten_outputs(value: Any) -> list[tuple[str, Any]]:
    """Model outputs as (name, leaf) pairs: 'output' for a single tensor, 'output[0]', 'output['k']'."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(value)
    return [("output" + keystr(path), leaf) for path, leaf in leaves]


class _State:
    """Buffers (KV caches) of the modules involved, restored before every run."""

    def __init__(self, *modules: torch.nn.Module):
        self.modules = [m for m in modules if m is not None]
        self.saved = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in self.modules]

    def restore(self) -> None:
        for m, saved in zip(self.modules, self.saved):
            restore_buffers(m, saved)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return list(value)
    return [value]


def _changed(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.shape != b.shape or a.dtype != b.dtype:
        return True
    return not torch.equal(a.cpu(), b.cpu())


def check_site(k: int, site: MatchSite, call: tuple[Callable[..., Any], list[str], dict], values: Any) -> SiteCheck:
    """Run the fused op of ``site`` on its recorded inputs; compare with the subgraph and fp64."""
    from fusegraph import ops

    result = SiteCheck(k, site)
    fn, arg_names, _literals = call
    missing = [a for a in arg_names if a not in values.inputs]
    if missing:
        result.error = f"inputs not recorded in the unfused run: {', '.join(missing)}"
        return result
    args = [clone_value(values.inputs[a]) for a in arg_names]
    args64 = [upcast64(values.inputs[a]) for a in arg_names]
    try:
        with torch.no_grad():
            fused = _as_list(fn(*args))
    except Exception as exc:
        result.error = f"fused call raised {type(exc).__name__}: {exc}"
        return result
    try:
        with torch.no_grad(), ops.prefer({site.op: [ops.REFERENCE]}):
            ref = _as_list(fn(*args64))
    except Exception as exc:  # an fp64 reference is not always possible (kernels-only dtypes)
        ref, ref_error = [], f"{type(exc).__name__}: {exc}"
    else:
        ref_error = ""
    names = list(site.outputs.items())
    if len(fused) > len(names) and all(v is None for v in fused[len(names):]):
        fused = fused[:len(names)]  # an op that only writes into an input returns None
    if names and all(v is None for v in fused) and ops.get(site.op).mutates_args:
        # A composed store (norm + quant + store into a cache): the first stage's outputs now live
        # only inside the fused op. What it does is the write, compared below.
        result.notes.append(f"outputs {', '.join(site.outputs)} stay inside the fused op; "
                            "compared what it writes")
        names, fused = [], []
    if len(fused) != len(names):
        result.error = f"fused call returned {len(fused)} values, the site has {len(names)} outputs"
        return result
    for i, (out_name, node_name) in enumerate(names):
        unf = values.outputs.get(node_name)
        if unf is None:
            result.error = f"output {out_name} ({node_name}) was not recorded in the unfused run"
            return result
        r = ref[i] if i < len(ref) else None
        judged = fused[i] if isinstance(fused[i], torch.Tensor) else unf  # the dtype the op returns
        tol = tolerances.for_site_output(judged.dtype if isinstance(judged, torch.Tensor) else torch.float32, site.op)
        result.checks.append(check(out_name, fused[i], unf, r, tol))
    # Inputs the op writes into (KV caches): compare their final states.
    outputs = set(site.outputs.values())
    for a, after_f, after_64 in zip(arg_names, args, args64):
        before, after_u = values.inputs.get(a), values.inputs_after.get(a)
        if a in outputs or not isinstance(after_u, torch.Tensor):
            continue
        if _changed(before, after_u) or _changed(before, after_f):
            tol = tolerances.for_site_output(after_u.dtype, site.op)
            result.checks.append(check(f"{a} (written)", after_f, after_u, after_64 if not ref_error else None, tol))
    if not result.checks:
        result.error = "nothing to compare: the fused op returned no output and wrote into no input"
    return result


def resolve_arg_names(compiled: Any, site: MatchSite, call: tuple[Callable[..., Any], list[str], dict]
                      ) -> list[str]:
    """Names of ``compiled.unfused`` nodes whose values feed ``site_call``'s ``fn``, in order.

    ``site_call`` may name a node of the *fused* graph where a site's input comes out of another
    fused call (mhc_post reading mhc_pre's ``post``); the value the unfused run recorded is then
    found through ``site.inputs`` (op parameter -> unfused node), else by following the ``getitem``
    back to the producing site's outputs.
    """
    from fusegraph import ops

    _fn, arg_names, literals = call
    unfused_names = {n.name for n in compiled.unfused.graph.nodes}
    if all(a in unfused_names for a in arg_names):
        return list(arg_names)
    params = [p for p in ops.get(site.op).signature.parameters if p not in literals]
    by_call = {s.fused_node: s for s in compiled.sites}
    fused_nodes = {n.name: n for n in compiled.fused.graph.nodes} if getattr(compiled, "fused", None) is not None else {}
    resolved = []
    for i, name in enumerate(arg_names):
        if name in unfused_names:
            resolved.append(name)
            continue
        param = params[i] if i < len(params) and len(params) == len(arg_names) else None
        if param is not None and site.inputs.get(param) in unfused_names:
            resolved.append(site.inputs[param])
            continue
        resolved.append(_through_getitem(fused_nodes.get(name), by_call) or name)
    return resolved


def _through_getitem(node: Any, by_call: dict[str, MatchSite]) -> str | None:
    """A fused-graph node that unpacks another site's fused call -> the unfused node it replaced."""
    import operator

    if node is None:
        return None
    index = 0
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        index, node = node.args[1], node.args[0]
    producer = by_call.get(getattr(node, "name", ""))
    if producer is None:
        return None
    outs = list(producer.outputs.values())
    return outs[index] if index < len(outs) else None


def compare_compiled(compiled: Any, source: model_source.ModelSource, target: str,
                     progress: Progress | None = None) -> CompareResult:
    """Steps 1-4 of the module docstring on an already compiled model."""
    inputs = source.inputs
    if not compiled.report.model or compiled.report.model == type(source.model).__name__:
        compiled.report.model = source.name
    sites: list[MatchSite] = list(compiled.sites)
    calls = []
    for s in sites:
        fn, _names, literals = compiled.site_call(s)
        calls.append((fn, resolve_arg_names(compiled, s, (fn, _names, literals)), literals))
    state = _State(compiled.unfused, compiled)
    note = progress.note if progress else (lambda _m: None)

    note(f"fusegraph: running unfused ({len(sites)} sites recorded)")
    recorder = SiteRecorder(compiled.unfused, [(s, list(c[1])) for s, c in zip(sites, calls)])
    state.restore()
    with torch.no_grad():
        out_unfused = recorder.run(*clone_value(inputs))
    note("fusegraph: running fused")
    state.restore()
    with torch.no_grad():
        out_fused = compiled(*clone_value(inputs))
    state.restore()
    fp64_note = ""
    try:
        out_64: Any = run_fp64(compiled.unfused, inputs)
    except Fp64Unsupported as exc:
        out_64, fp64_note = None, f"no fp64 model run ({exc}); model outputs are judged against the unfused run"
    state.restore()

    outputs = _check_outputs(out_fused, out_unfused, out_64)
    site_checks = []
    for k, (site, call) in enumerate(zip(sites, calls)):
        if progress:
            progress(k + 1, len(sites), f"{site.pattern} at {site.module or '(root)'}")
        site_checks.append(check_site(k, site, call, recorder.values[k]))
    state.restore()
    return CompareResult(source=source.spec, target=target, device=source.device.type, tokens=source.tokens,
                         seed=source.seed, report=compiled.report, outputs=outputs, sites=site_checks,
                         fp64_note=fp64_note, reference_outputs=(out_unfused, out_64))


def _check_outputs(out_fused: Any, out_unfused: Any, out_64: Any) -> list[TensorCheck]:
    fused = _flatten_outputs(out_fused)
    unfused = _flatten_outputs(out_unfused)
    ref = dict(_flatten_outputs(out_64)) if out_64 is not None else {}
    checks = []
    if len(fused) != len(unfused):
        tol = tolerances.MODEL_OUTPUT
        return [TensorCheck("output", "-", (), None, None, None, None, None, None, False,
                            f"fused returned {len(fused)} outputs, unfused {len(unfused)}", tol)]
    for (name, f), (_, u) in zip(fused, unfused):
        dtype = u.dtype if isinstance(u, torch.Tensor) else torch.float32
        checks.append(check(name, f, u, ref.get(name), tolerances.for_model_output(dtype)))
    return checks


def add_timings(result: CompareResult, compiled: Any, source: model_source.ModelSource, cuda_graph: bool) -> None:
    if source.device.type != "cuda":
        result.timing_note = f"timings skipped: the model runs on {source.device.type} (timings need a CUDA GPU)"
        return
    from fusegraph.cli.timing import time_forward

    result.timing_unfused = time_forward(compiled.unfused, source.inputs, cuda_graph=cuda_graph)
    result.timing_fused = time_forward(compiled, source.inputs, cuda_graph=cuda_graph)


# -- bisect ----------------------------------------------------------------------------------------------
def _site_key(site: MatchSite) -> tuple:
    return (site.pattern, site.module, site.anchor, tuple(site.replaced))


def bisect(compile_fn: CompileFn, source: model_source.ModelSource, target: str, full_sites: list[MatchSite],
           full_failing: TensorCheck | None, out_unfused: Any, out_64: Any, progress: Progress) -> BisectResult:
    """Smallest fuel k such that ``compile(fuel=k)`` pushes a model output past tolerance.

    Fuel counts the compiler's matches in graph order; a composition (post + pre into one op) may
    turn two matches into one site, so k is not a site index: the culprit is the site that
    ``fuel=k`` has and ``fuel=k-1`` has not.
    """
    cache: dict[int, tuple[bool, TensorCheck | None, list[MatchSite]]] = {}

    def trial(k: int) -> bool:
        if k not in cache:
            compiled = run_compile(compile_fn, source, target, fuel=k)
            state = _State(compiled.unfused, compiled)
            with torch.no_grad():
                out = compiled(*clone_value(source.inputs))
            state.restore()
            checks = _check_outputs(out, out_unfused, out_64)
            bad = next((c for c in checks if not c.passed), None)
            cache[k] = (bad is None, bad, list(compiled.sites))
            verdict = "within tolerance" if bad is None else f"FAILS ({bad.name}: {bad.reason})"
            progress.note(f"fusegraph: bisect: fuel={k} ({len(compiled.sites)} sites): {verdict}")
        return cache[k][0]

    def steps() -> list[tuple[int, bool]]:
        return sorted((k, v[0]) for k, v in cache.items())

    if full_failing is None:
        return BisectResult([], None, None, None, "all sites fused: every model output is within tolerance")
    if not trial(0):
        return BisectResult(steps(), None, None, cache[0][1],
                            "outputs fail with no site fused (fuel=0): the difference is not from a fusion")
    full = {_site_key(s) for s in full_sites}
    hi = max(1, len(full_sites))
    while trial(hi):  # fuel counts matches, which may outnumber sites: grow until it fails
        if {_site_key(s) for s in cache[hi][2]} == full or hi > 64 * max(1, len(full_sites)):
            return BisectResult(steps(), None, None, full_failing,
                                "every fuel-limited compile is within tolerance, the full one is not")
        hi *= 2
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(mid):
            lo = mid
        else:
            hi = mid
    before = {_site_key(s) for s in cache[lo][2]}
    new = [(i, s) for i, s in enumerate(cache[hi][2]) if _site_key(s) not in before]
    index, site = new[-1] if new else (None, None)
    if site is not None:  # report the index the full compile gives this site, when it has it
        keys = [_site_key(s) for s in full_sites]
        index = keys.index(_site_key(site)) if _site_key(site) in keys else index
    return BisectResult(steps(), index, site, cache[hi][1],
                        f"fuel={hi} fails, fuel={lo} passes")


# -- command ---------------------------------------------------------------------------------------------
def _device_for(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace, compile_fn: CompileFn | None = None) -> int:
    out_dir = check_output_dir(args.output) if args.output else None
    device = _device_for(args)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU on this machine")
    here = targets.of_device(torch.device(device))
    target = here if args.target == "auto" else parse_target(args.target)
    if target != here:
        raise UsageError(f"compare runs the model here, on {device} (target {here}); --target {target} "
                         f"plans for another machine: use `fusegraph report --target {target}` to plan")
    forced = parse_providers(args.provider)
    if args.model in model_source.PRESETS and args.model not in model_source.RUNNABLE_PRESETS:
        raise UsageError(f"preset {args.model!r} is built on the meta device (planning only) and cannot run; "
                         f"compare a runnable model ({', '.join(model_source.RUNNABLE_PRESETS)} or a factory), "
                         f"or use `fusegraph report {args.model}`")
    source = model_source.load(args.model, tokens=args.tokens, seed=args.seed, device=device)
    if source.planning_only:
        raise UsageError(f"{args.model} returned a model on the meta device: compare needs real weights")
    compile_fn = compile_fn or default_compile()
    start = time.monotonic()
    with forced_providers(forced):
        from fusegraph.cli.report import compile_source

        compiled = compile_source(source, target, compile_fn, quiet=args.quiet)
        if getattr(compiled, "unfused", None) is None:
            print(f"fusegraph: error: compare needs the captured graphs, and {source.name} was not captured by "
                  f"symbolic tracing ({(compiled.report.capture_note or '').splitlines()[0]})", file=sys.stderr)
            return EXIT_CHECK_FAILED
        progress = Progress(f"checking sites of {source.name}", enabled=not args.quiet)
        result = compare_compiled(compiled, source, target, progress)
        progress.close()
        add_timings(result, compiled, source, args.cuda_graph)
        if args.bisect:
            out_unfused, out_64 = result.reference_outputs or (None, None)
            failing = next((c for c in result.outputs if not c.passed), None)
            result.bisect = bisect(compile_fn, source, target, list(compiled.sites), failing, out_unfused, out_64,
                                   progress)
    elapsed = time.monotonic() - start

    from fusegraph.render.compare_text import render_text

    sys.stdout.write(render_text(result, limit=args.limit, elapsed_s=elapsed))
    if out_dir is not None:
        from fusegraph.render.compare_html import render_html
        from fusegraph.render.jsonout import dumps

        write_text(out_dir / "compare.html", render_html(result, compiled))
        write_text(out_dir / "compare.json", dumps(result.as_dict()))
        if not args.quiet:
            print(f"fusegraph: wrote {out_dir / 'compare.html'} and {out_dir / 'compare.json'}", file=sys.stderr)
    failed = not result.passed or (result.bisect is not None and result.bisect.culprit is not None)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a runnable preset (tiny) or package.module:factory returning (model, example_inputs)")
    p.add_argument("--target", default="auto", choices=("auto", "sm80", "sm90", "sm100", "rocm", "cpu"),
                   help="must be this machine's target (compare runs the model); default auto")
    p.add_argument("--bisect", action="store_true",
                   help="find the first site whose fusion pushes a model output past tolerance")
    p.add_argument("-o", "--output", metavar="DIR", help="write DIR/compare.html (graph diff) and DIR/compare.json")
    p.add_argument("--tokens", type=int, metavar="T", help="tokens in the example inputs")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--device", help="device to run on (default: cuda when available, else cpu)")
    p.add_argument("--provider", action="append", metavar="OP=NAME[,NAME]",
                   help="force the provider order of a fused op (repeatable; '*' for all ops)")
    p.add_argument("--cuda-graph", action="store_true", help="also time CUDA-graph replay (GPU only)")
    p.add_argument("--limit", type=int, default=40, metavar="N", help="rows per table (default 40, 0 = all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
