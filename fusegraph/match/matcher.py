"""Matching by evaluation.

For each pattern and each seed in the graph:

1. **bind** the pattern's inputs to graph values (``bind``);
2. check the pattern's **constraints** on the bound shape symbols;
3. **evaluate** the closure of the bound values on random inputs, and the reference on the same
   inputs; each reference output is **aligned** with the earliest graph value equal to it (same
   dtype; the op's own shape preferred among views of one value);
4. cut the **region** (backward slice from those values) and run the structural checks (``region``);
5. **verify**: every output must agree under every regime of the pattern (fresh inputs, stress
   distributions that make eps and constants visible); regimes after the first are only run for
   candidates that already agree under the first.

Any spelling that computes the pattern's values matches — loops, einsum, ``x*x``, ``1/sqrt``,
another dtype path within tolerance — and no subgraph with other semantics can, because step 5 would
see it. Failures become ``NearMiss`` records with a stage, a classified kind, the first divergent node
and the deepest partial match (``diagnose``).

Layers repeat: a result is cached under a signature of the closure's structure (ops, wiring, literal
arguments, shapes), so the 61 layers of a large model cost one evaluation per distinct layer shape.

Cost: a large candidate of a row-wise pattern is verified on ``rows.EVAL_ROWS`` tokens when that is
exact (``rows``; a match there is the result, anything else is decided at full size), so planning
time does not grow with the example's token count; evaluation runs on one intra-op thread with a
heap that keeps freed pages (``workspace``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fusegraph.canonicalize import mutated_input, op_label
from fusegraph.capture import module_path, source_of
from fusegraph.match.bind import Binding, bindings, seeds
from fusegraph.match.diagnose import align
from fusegraph.match.evaluate import draw_inputs, reference_shapes, run_graph, run_reference
from fusegraph.match import rows
from fusegraph.match.graph_facts import GraphFacts, downstream, reachable
from fusegraph.match.region import Region, backward_slice, check
from fusegraph.match.rows import NotScalable, RowCut
from fusegraph.match.values import violation
from fusegraph.match.workspace import evaluation_workspace
from fusegraph.pattern import Pattern
from fusegraph.records import NearMiss

REPORT_FRACTION = 0.25   # near misses below this share of pattern values found are not reported
MAX_CLOSURE = 3000       # nodes computable from one binding; beyond this it is not one site
BINDINGS_PER_SEED = 8    # complete bindings verified per seed before giving up
_DTYPE_LOOSE = {torch.float32: torch.bfloat16}


@dataclass
class Match:
    pattern: Pattern
    binding: Binding
    region: Region
    error: float           # worst verification violation (<= 1)
    ref_shapes: dict[int, tuple[int, ...]]  # reference output shapes (the fused op's)


@dataclass
class _Cached:
    kind: str                              # "match" or "miss"
    outputs: dict[int, int] | None = None  # output index -> closure position
    mutations: list[int] | None = None
    miss: dict[str, Any] | None = None
    divergent: int | None = None
    error: float = 0.0
    ref_shapes: dict[int, tuple[int, ...]] | None = None


class Matcher:
    def __init__(self, gm: torch.fx.GraphModule, seed: int = 0):
        self.gm = gm
        self.facts = GraphFacts(gm)
        self.seed = seed
        self.cache: dict[tuple[str, str], _Cached] = {}
        self.claimed: set[torch.fx.Node] = set()    # nodes of accepted regions (outputs included)
        self.internal: set[torch.fx.Node] = set()   # the same minus outputs: later patterns may read outputs
        # op -> seeds a pattern of that op matched at: a smaller pattern of the same op (mhc_pre after
        # mhc_pre_norm) has nothing left to find there, and its failed attempts would only cost time.
        self.sealed: dict[str, set[torch.fx.Node]] = {}
        self.rowwise: dict[tuple, bool] = {}   # (pattern, cut dims) -> reference is row-wise in T

    # -- public ------------------------------------------------------------------------------
    def run(self, pattern: Pattern) -> tuple[list[Match], list[NearMiss]]:
        with evaluation_workspace():
            return self._run(pattern)

    def _run(self, pattern: Pattern) -> tuple[list[Match], list[NearMiss]]:
        matches, misses = [], []
        used: set[torch.fx.Node] = set()   # inputs of this pattern's matches: not seeds again (cos/sin)
        sealed = self.sealed.setdefault(pattern.op, set())
        for seed in seeds(self.facts, pattern):
            if seed in self.internal or seed in used or seed in sealed:
                continue
            result = self.try_seed(pattern, seed)
            if isinstance(result, Match):
                used.update(result.binding.nodes.values())
                sealed.add(seed)
                matches.append(result)
                self.claimed.update(result.region.nodes)
                outs = set(result.region.outputs.values()) | set(result.region.mutations)
                self.internal.update(n for n in result.region.nodes if n not in outs)
            elif result is not None:
                misses.append(result)
        return matches, misses

    def try_seed(self, pattern: Pattern, seed: torch.fx.Node) -> Match | NearMiss | None:
        """Try the seed's plausible bindings in order; the first that verifies wins. The reported
        near miss is the attempt that got furthest (largest share of pattern values found)."""
        best: NearMiss | None = None
        tried = 0
        for binding in bindings(self.facts, pattern, seed):
            for variant in _swaps(binding):   # same-spec inputs (cos/sin) either way round
                if tried >= BINDINGS_PER_SEED:
                    return best
                tried += 1
                result = self._try_binding(pattern, variant)
                if isinstance(result, Match):
                    return result
                if result is None and variant.complete:
                    return None
                if result is not None and (best is None or result.matched_fraction > best.matched_fraction):
                    best = result
                if not variant.complete:
                    break
        return best

    def _try_binding(self, pattern: Pattern, binding: Binding) -> Match | NearMiss | None:
        seed = binding.seed
        if not binding.complete:
            return self._miss(pattern, seed, "bind", "missing input",
                              f"no value fits input(s) {', '.join(binding.missing)} "
                              f"({', '.join(_spec_str(pattern, m) for m in binding.missing)}) near `{seed.name}`")
        bound = set(binding.nodes.values())
        self.facts.bound_to(bound)
        closure = self.facts.topo(_near_seed(self.facts.closure(bound) - bound, seed))
        if not closure or all(n in self.claimed for n in closure):
            return None
        if len(closure) > MAX_CLOSURE:
            return self._miss(pattern, seed, "bind", "missing input",
                              f"the values bound near `{seed.name}` feed {len(closure)} nodes: not one site")
        reason = pattern.constraints(binding.dims)
        if reason:
            # Report it only if the subgraph otherwise is this pattern (the reference runs on any size).
            key = (pattern.name, _signature(closure, binding, self.facts))
            cached = self.cache.get(key) or self._evaluate(pattern, binding, closure)
            self.cache[key] = cached
            fraction = 1.0 if cached.kind == "match" else (cached.miss or {}).get("fraction", 0.0)
            return self._miss(pattern, seed, "constraints", "shape constraint", reason, fraction=fraction)
        key = (pattern.name, _signature(closure, binding, self.facts))
        cached = self.cache.get(key)
        if cached is None:
            cached = self._evaluate(pattern, binding, closure)
            self.cache[key] = cached
        return self._realize(pattern, binding, closure, cached)

    # -- evaluation (uncached path) --------------------------------------------------------------
    def _evaluate(self, pattern: Pattern, binding: Binding, closure: list[torch.fx.Node]) -> _Cached:
        """Run closure and reference under every regime; an output is the earliest graph value equal
        to the reference's in all of them (one draw could make a Sinkhorn iterate look final).

        Large candidates are first evaluated on ``rows.EVAL_ROWS`` tokens where that is exact
        (``rows``); a match found there is the result, anything else is evaluated again at full
        size. Runs inside ``evaluation_workspace`` (one thread, retained heap: ``workspace``)."""
        cut = self._row_cut(pattern, binding, closure)
        if cut is not None:
            try:
                rows.check_row_sources(cut, closure)
                cached = self._evaluate_runs(pattern, binding, closure, cut)
                if cached.kind == "match":
                    return cached
            except NotScalable:
                pass
        return self._evaluate_runs(pattern, binding, closure, None)

    def _row_cut(self, pattern: Pattern, binding: Binding, closure: list[torch.fx.Node]) -> RowCut | None:
        vals = [n.meta.get("val") for n in list(binding.nodes.values()) + closure]
        largest = max((v.numel() for v in vals if isinstance(v, torch.Tensor)), default=0)
        cut = rows.plan(pattern, binding.dims, largest)
        if cut is None:
            return None
        dims = cut.dims(binding.dims)
        key = (pattern.name, tuple(sorted(dims.items())))
        if key not in self.rowwise:
            self.rowwise[key] = rows.reference_rowwise(
                pattern, dims, lambda k: draw_inputs(binding, pattern.regimes[0], self.seed + k, cut),
                lambda inputs: run_reference(binding, inputs, cut=cut)[0])
        return cut if self.rowwise[key] else None

    def _evaluate_runs(self, pattern: Pattern, binding: Binding, closure: list[torch.fx.Node],
                       cut: RowCut | None) -> _Cached:
        positions = {n: i for i, n in enumerate(closure)}
        bound = set(binding.nodes.values())
        runs = []

        def run(k: int, nodes: list[torch.fx.Node]) -> str | None:
            regime = pattern.regimes[k]
            inputs = draw_inputs(binding, regime, self.seed + k, cut)
            try:
                env = run_graph(self.facts, nodes, binding, inputs, cut)
                ref_out, ref_mut, ref_vals = run_reference(binding, inputs, record=(k == 0 and cut is None), cut=cut)
            except NotScalable:
                raise
            except Exception as exc:  # the candidate cannot even run on its own inputs
                if cut is not None:  # ... on cut inputs: maybe a literal row count; full size decides
                    raise NotScalable(f"{type(exc).__name__}: {exc}") from exc
                return f"evaluating the candidate failed: {type(exc).__name__}: {exc}"
            runs.append((regime, env, ref_out, ref_mut, ref_vals))
            return None

        failed = run(0, closure)
        if failed:
            return _Cached("miss", miss=dict(stage="evaluate", kind="semantics", reason=failed))
        if cut is not None:
            rows.check_shapes(cut, {n: n.meta.get("val") for n in closure}, runs[0][1])
        # Other regimes only for values that could still be outputs (most candidates stop here).
        _, env_first, ref_first, _, _ = runs[0]
        # Violations under the first regime are asked for again below: compute each pair once
        # (a full comparison of a [T, K, 512] gather costs tens of milliseconds).
        seen: dict[tuple[torch.fx.Node, int], float] = {}

        def first(n: torch.fx.Node, i: int) -> float:
            if (n, i) not in seen:
                seen[(n, i)] = violation(env_first[n], ref_first[i])
            return seen[(n, i)]

        hopeful = [n for n in closure if any(_same_dtype(env_first[n], r) and first(n, i) <= 1.0
                                             for i, r in enumerate(ref_first))]
        if len(pattern.regimes) > 1 and (hopeful or pattern.mutates):
            keep = backward_slice(self.facts, hopeful + [n for n in closure if mutated_input(n) is not None],
                                  set(closure), bound)
            for k in range(1, len(pattern.regimes)):
                failed = run(k, keep)
                if failed:
                    return _Cached("miss", miss=dict(stage="evaluate", kind="semantics", reason=failed))
        regime0, env0, ref0, mut0, vals0 = runs[0]
        outputs: dict[int, int] = {}
        worst = 0.0
        for i, ref in enumerate(ref0):
            agree = [n for n in closure if n not in self.claimed and _same_dtype(env0[n], ref)
                     and first(n, i) <= 1.0]
            found = None
            # The same value often exists under several views ([T, 7, 64] tiles, then [T, 448]):
            # prefer one with the op's own shape, so consumers read the fused result directly.
            agree.sort(key=lambda n: tuple(env0[n].shape) != tuple(ref.shape))
            for n in agree:
                scores = [violation(env.get(n), r_out[i]) for _, env, r_out, _, _ in runs[1:]]
                if all(v <= 1.0 for v in scores):
                    found = n
                    worst = max([worst, first(n, i)] + scores)
                    break
            if found is None and agree:
                bad = next(k for k, (_, env, r_out, _, _) in enumerate(runs[1:], 1)
                           if violation(env.get(agree[-1]), r_out[i]) > 1.0)
                div = align(self.facts, closure, runs[bad][1], runs[bad][4] or vals0, bound)
                return _Cached("miss", miss=dict(
                    stage="verify", kind="literal", fraction=max(div.matched_fraction, 0.5),
                    reason=(f"output {i} of {pattern.op} agrees on ordinary inputs but not under the "
                            f"'{runs[bad][0].name}' regime: a constant (eps, multiplier, iteration count) "
                            f"differs from the pattern's")), divergent=positions.get(agree[-1]))
            if found is None:
                miss = self._explain_missing_output(pattern, binding, closure, env0, vals0, i, ref)
                # Other outputs found: this is the site, whatever share of intermediates aligned.
                found_outputs = sum(1 for j, r in enumerate(ref0) if any(_same_dtype(env0[n], r) and first(n, j) <= 1.0
                                                           for n in closure))
                if miss.miss is not None and found_outputs:
                    miss.miss["fraction"] = max(miss.miss.get("fraction", 0.0), found_outputs / len(ref0))
                return miss
            outputs[i] = positions[found]
        mutations: list[int] = []
        for name in pattern.mutates:
            node = binding.nodes[name]
            bad = [r for r, env, _, mut, _ in runs if violation(env[node], mut[name]) > 1.0]
            if bad:
                div = align(self.facts, closure, env0, vals0, bound)
                kind = "literal" if bad[0] is not regime0 else "semantics"
                return _Cached("miss", miss=dict(stage="align", kind=kind, fraction=div.matched_fraction,
                                                 reason=f"the final state of `{name}` differs from the reference's "
                                                        f"under the '{bad[0].name}' regime"),
                               divergent=positions.get(div.node))
            mutations += [positions[n] for n in closure if _writes_into(n, node, closure)]
        ref_shapes = {i: tuple(r.shape) for i, r in enumerate(ref0)}
        if cut is not None:
            ref_shapes = self._full_size_shapes(binding, closure, outputs)
        return _Cached("match", outputs=outputs, mutations=mutations, error=worst, ref_shapes=ref_shapes)

    def _full_size_shapes(self, binding: Binding, closure: list[torch.fx.Node],
                          outputs: dict[int, int]) -> dict[int, tuple[int, ...]]:
        """The fused op's output shapes at full size (its fake implementation); each matched value must
        have as many elements there too, as a full evaluation requires (``x[:13]`` of a longer
        ``T`` is 13 rows at either size and is no output)."""
        try:
            shapes = reference_shapes(binding)
        except Exception as exc:  # noqa: BLE001 - a reference that needs data: evaluate at full size
            raise NotScalable(f"the reference cannot run on meta tensors: {exc}") from exc
        for i, p in outputs.items():
            if closure[p].meta["val"].numel() != math.prod(shapes[i]):
                raise NotScalable(f"`{closure[p].name}` has another size than output {i} at full size")
        return dict(enumerate(shapes))

    def _explain_missing_output(self, pattern, binding, closure, env, ref_vals, i, ref) -> _Cached:
        positions = {n: k for k, n in enumerate(closure)}
        div = align(self.facts, closure, env, ref_vals, set(binding.nodes.values()))
        loose = _DTYPE_LOOSE.get(ref.dtype)
        if loose is not None:
            near = next((n for n in closure if isinstance(env[n], torch.Tensor)
                         and violation(env[n], ref.to(loose)) <= 1.0), None)
            if near is not None:
                return _Cached("miss", miss=dict(
                    stage="align", kind="dtype form", fraction=div.matched_fraction,
                    reason=(f"output {i} of {pattern.op} appears as `{near.name}` only up to {loose} rounding: "
                            f"the model computes it in {env[near].dtype} where the pattern keeps {ref.dtype}")),
                    divergent=positions[near])
        same_numel = [n for n in closure if isinstance(env[n], torch.Tensor) and env[n].numel() == ref.numel()]
        if not same_numel:
            reason = f"no value of shape {tuple(ref.shape)} (output {i} of {pattern.op}) is computed from the bound inputs"
            kind = "view form" if div.matched_fraction > 0.9 else "semantics"
        else:
            reason = f"output {i} of {pattern.op} ({tuple(ref.shape)}, {ref.dtype}) is not computed: " + (div.detail or "values differ")
            kind = "semantics"
        return _Cached("miss", miss=dict(stage="align", kind=kind, reason=reason, fraction=div.matched_fraction),
                       divergent=positions.get(div.node))

    # -- turning a (cached) result into records --------------------------------------------------
    def _region(self, binding, closure, outputs, mutations) -> Region:
        roots = [closure[p] for p in outputs.values()] + [closure[p] for p in mutations]
        nodes = backward_slice(self.facts, roots, set(closure), set(binding.nodes.values()))
        return Region(nodes, {i: closure[p] for i, p in outputs.items()}, [closure[p] for p in mutations])

    def _realize(self, pattern, binding, closure, cached: _Cached) -> Match | NearMiss | None:
        if cached.kind == "miss":
            m = cached.miss or {}
            node = closure[cached.divergent] if cached.divergent is not None else None
            return self._miss(pattern, binding.seed, m["stage"], m["kind"], m["reason"],
                              divergent=node, fraction=m.get("fraction", 0.0))
        region = self._region(binding, closure, cached.outputs, cached.mutations)
        if any(n in self.claimed for n in region.nodes):
            return None
        problem = check(self.facts, binding, region)
        if problem:
            return self._miss(pattern, binding.seed, "region", problem[0], problem[1], fraction=1.0)
        return Match(pattern, binding, region, cached.error, cached.ref_shapes or {})

    def _miss(self, pattern, anchor, stage, kind, reason, divergent=None, fraction=0.0) -> NearMiss:
        return NearMiss(pattern=pattern.name, module=module_path(divergent or anchor), anchor=anchor.name,
                        stage=stage, kind=kind, reason=reason,
                        divergent_node=divergent.name if divergent is not None else None,
                        source=source_of(divergent) if divergent is not None else None,
                        matched_fraction=round(fraction, 3))


def _near_seed(closure: set[torch.fx.Node], seed: torch.fx.Node) -> set[torch.fx.Node]:
    """The part of a closure that can belong to the site: nodes that depend on the seed and what
    they read. A shared input (positions feed every layer's index math) otherwise pulls the whole
    model's uses of it into every layer's closure, which makes each layer's closure, and so its
    cache signature, different. Every pattern output depends on the seed (``Pattern.seed``)."""
    down = downstream(seed, closure) - {seed}
    return reachable(down, closure, lambda n: n.all_input_nodes)


def _swaps(binding: Binding) -> list[Binding]:
    out = [binding]
    if not binding.complete:
        return out
    for a, b in binding.pattern.interchangeable:
        out += [Binding(x.pattern, x.seed, {**x.nodes, a: x.nodes[b], b: x.nodes[a]}, dict(x.dims))
                for x in list(out)]
    return out


def _same_dtype(value: Any, ref: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == ref.dtype


def _writes_into(node: torch.fx.Node, target: torch.fx.Node, closure: list[torch.fx.Node]) -> bool:
    written = mutated_input(node)
    while written is not None:
        if written is target:
            return True
        if op_label(written) in ("view", "permute", "getitem") and written.all_input_nodes:
            written = written.all_input_nodes[0]
        else:
            return False
    return False


def _spec_str(pattern: Pattern, name: str) -> str:
    spec = pattern.inputs[name]
    dt = "/".join(str(d).replace("torch.", "") for d in spec.dtypes) if spec.dtypes else "float"
    return f"{name}: {dt}[{', '.join(map(str, spec.shape))}]"


def _signature(closure: list[torch.fx.Node], binding: Binding, facts: GraphFacts) -> str:
    """Structure of the closure, independent of node names: equal for repeated layers. Traced-in
    tensor constants enter with their contents: two layers that bake different tables differ."""
    index = {n: i for i, n in enumerate(closure)}
    role = {n: name for name, n in binding.nodes.items()}

    def ref(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a in role:
                return f"in:{role[a]}"
            if a in index:
                return f"n{index[a]}"
            if a.op == "get_attr" and facts.is_constant(a):
                return f"const:{_fingerprint(facts, a)}"
            val = a.meta.get("val")
            if isinstance(val, torch.Tensor):
                return f"t:{op_label(a)}:{tuple(val.shape)}:{val.dtype}"
            return f"s:{val!r}"
        if isinstance(a, (list, tuple)):
            return tuple(ref(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, ref(v)) for k, v in a.items()))
        if isinstance(a, slice):
            return ("slice", ref(a.start), ref(a.stop), ref(a.step))
        return repr(a)

    parts = [f"{name}:{tuple(n.meta['val'].shape)}:{n.meta['val'].dtype}" for name, n in binding.nodes.items()]
    for n in closure:
        val = n.meta.get("val")
        shape = (tuple(val.shape), str(val.dtype)) if isinstance(val, torch.Tensor) else type(val).__name__
        parts.append(f"{n.op}|{getattr(n.target, '__name__', n.target)}|{ref(n.args)}|{ref(n.kwargs)}|{shape}")
    return "\n".join(parts)


def _fingerprint(facts: GraphFacts, node: torch.fx.Node) -> str:
    try:
        t = facts.constant_tensor(node)
    except ValueError as exc:  # no data: evaluation will fail and say so
        return f"unreadable:{exc}"
    data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return f"{tuple(t.shape)}:{t.dtype}:{hashlib.sha1(data).hexdigest()}"
