"""Warm-up: compile every kernel variant a fused model will meet before it serves a request.

Triton, CUDA and DeepGEMM providers compile on first use, and a new token count can need a new
variant (Triton specializes on T == 1 and T % 16; launch sizing picks block sizes and split counts
from T). :func:`warmup` calls each fused call site's op at every token-count bucket up to
``max_tokens``, on fresh random inputs of the site's shapes with T replaced, on the model's device,
so that every variant compiles now instead of stalling a request later::

    report = warmup(compiled, max_tokens=4096)      # progress bar on stderr
    print(report.table())                           # which (op, provider, T) variants are warm

How a site is rebuilt at another T: the fused call's arguments carry their meta tensors (shapes,
strides, dtypes); parameters whose first dimension is the token count (``TOKEN_ROWS``, from
``docs/op-contracts.md``; ``compressor_pool``'s cos/sin have ``T // ratio`` rows) get the bucket's
T, checked against the site's own token count so that a coincidence never resizes a weight. Cache
arguments (the op's mutated ones) keep their shape, and every tensor is new: the model's caches
and weights are never touched. Float tensors are ``0.1 * randn``; integer tensors (slots, indices) are
zeros, a valid slot of any cache. Sites with the same op and argument layout share one call.

Buckets (:func:`token_buckets`): the powers of two and their 1.5x midpoints (1, 2, 3, 4, 6, 8, 12,
...) up to ``max_tokens``, plus ``max_tokens``. The midpoints are there because launch plans change
between powers of two (split counts are ``SMs // ceil(T / 64)``-style rules, whose power-of-two
rounding moves at T that are no power of two); a provider whose variants depend on T in finer
steps still compiles those at first use. ``tokens=`` replaces the list.

Planning (:func:`plan`) answers the same question without running or compiling anything, on any
machine: each site is rebuilt at every bucket as *meta* tensors (the same templates) and the op's
dispatcher is asked which provider it picks on the plan target, with the providers ranked above it
and why they were passed over::

    p = plan(compiled, max_tokens=4096, target="sm90")   # a laptop will do
    p.variants          # (op, provider) -> T buckets: what warmup() would compile there

Two things a plan made off the target cannot see, and says so. Providers this machine lacks (a
package, a compiler, the GPU): the dispatcher passes them over here, so the plan lists them
(``WarmupPlan.unavailable_here``) with the buckets whose arguments their own gates accept (e.g. the
CUDA writer of store_fp8_paged from its minimum row count); gates that ask the GPU itself refuse
meta tensors. And choices taken from a committed per-GPU measurement: the mHC TileLang providers
follow such a table (``kernels/mhc_pre/crossover.py``), so for each committed table the plan also
lists what that GPU picks per bucket (``WarmupPlan.tables``): e.g. on the H200, mhc_pre at
D = 7168 goes to TileLang only for 64 < T <= 128.

Both results land in the compile report: :func:`warmup` stores a ``WarmState`` as
``compiled.report.warm``, :func:`plan` a ``WarmupPlan`` as ``compiled.report.warmup_plan``
(``fusegraph/records.py``), which ``fusegraph report --warmup MAX_TOKENS`` prints.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
import torch.fx

from fusegraph import ops
from fusegraph import targets as _targets
from fusegraph.records import (PlanStep, TablePlan, Unavailable, WarmFailure, WarmState, WarmupPlan,
                               WarmVariant)

# op -> parameters whose dim 0 is the token count T (docs/op-contracts.md); the first one names
# the site's own T. Ops not listed: the first tensor argument names T, and every argument (other
# than a mutated cache) whose dim 0 equals it is resized.
TOKEN_ROWS: dict[str, tuple[str, ...]] = {
    "mhc_pre": ("residual",),
    "mhc_post": ("f", "residual", "post", "comb"),
    "mhc_post_pre": ("f", "residual", "post", "comb"),
    "hc_head": ("residual",),
    "compressor_pool": ("kv", "score"),
    "q_norm_rope": ("q", "cos", "sin"),
    "kv_norm_rope_quant": ("kv", "cos", "sin"),
    "set_mla_kv_buffer": ("loc", "k_nope", "k_rope"),
    "store_fp8_paged": ("loc", "k_nope", "k_rope"),
    "kv_norm_rope_quant_store": ("kv", "cos", "sin", "loc"),
    "gather_dequant": ("slots",),
    "sparse_attn_sink": ("q", "swa_idx", "cmp_idx", "cos", "sin"),
}
# op -> (parameters with T // ratio rows, the parameter holding ratio)
BLOCK_ROWS: dict[str, tuple[tuple[str, ...], str]] = {"compressor_pool": (("cos", "sin"), "ratio")}

Progress = Callable[[int, int, str], None]


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarmupEntry:
    """One op call at one token count: the variant it compiled (or why it failed)."""

    op: str
    provider: str                 # the provider dispatch selected for these arguments
    tokens: int
    sites: tuple[str, ...]        # fused call sites ("module:fused_node") that share this variant
    compiled: bool                # the call ran, so its kernels are compiled and cached
    seconds: float                # wall time of the call (compilation included)
    error: Optional[str] = None


@dataclass
class WarmupReport:
    device: str
    target: str
    max_tokens: int
    buckets: tuple[int, ...]
    entries: list[WarmupEntry] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(e.compiled for e in self.entries)

    def failed(self) -> list[WarmupEntry]:
        return [e for e in self.entries if not e.compiled]

    def warm(self) -> dict[tuple[str, str], tuple[int, ...]]:
        """(op, provider) -> the token buckets whose variant is warm."""
        out: dict[tuple[str, str], list[int]] = {}
        for e in self.entries:
            if e.compiled:
                out.setdefault((e.op, e.provider), []).append(e.tokens)
        return {k: tuple(sorted(set(v))) for k, v in out.items()}

    def table(self) -> str:
        """Text report: per (op, provider) the warm buckets and the time spent, then the failures."""
        lines = [f"warm-up on {self.device} ({self.target}), T buckets {_ranges(self.buckets)}, "
                 f"{len(self.entries)} calls in {self.seconds:.1f} s"]
        rows = [("op", "provider", "warm T", "seconds")]
        seconds: dict[tuple[str, str], float] = {}
        for e in self.entries:
            seconds[(e.op, e.provider)] = seconds.get((e.op, e.provider), 0.0) + e.seconds
        for (op, provider), tokens in sorted(self.warm().items()):
            rows.append((op, provider, _ranges(tokens), f"{seconds[(op, provider)]:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for e in self.failed():
            lines.append(f"FAILED {e.op} ({e.provider}) T={e.tokens}: {e.error}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "target": self.target, "max_tokens": self.max_tokens,
                "buckets": list(self.buckets), "seconds": self.seconds, "ok": self.ok,
                "entries": [asdict(e) | {"sites": list(e.sites)} for e in self.entries]}

    def record(self) -> WarmState:
        """The compile-report record (``compiled.report.warm``): warm variants and failures."""
        sites: dict[tuple[str, str], set[str]] = {}
        seconds: dict[tuple[str, str], float] = {}
        for e in self.entries:
            if e.compiled:
                sites.setdefault((e.op, e.provider), set()).update(e.sites)
                seconds[(e.op, e.provider)] = seconds.get((e.op, e.provider), 0.0) + e.seconds
        variants = tuple(WarmVariant(op, provider, tokens, len(sites[(op, provider)]),
                                     round(seconds[(op, provider)], 4))
                         for (op, provider), tokens in sorted(self.warm().items()))
        failures = tuple(WarmFailure(e.op, e.provider, e.tokens, len(e.sites), e.error or "")
                         for e in self.failed())
        return WarmState(self.device, self.target, self.max_tokens, self.buckets, len(self.entries),
                         round(self.seconds, 3), variants, failures)


def _ranges(tokens: tuple[int, ...]) -> str:
    return ",".join(str(t) for t in tokens) if tokens else "-"


# -- buckets -----------------------------------------------------------------------------------------
def token_buckets(max_tokens: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5x midpoints) up to and with ``max_tokens``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    out = {max_tokens}
    p = 1
    while p <= max_tokens:
        out.add(p)
        if p >= 2 and p + p // 2 <= max_tokens:
            out.add(p + p // 2)
        p *= 2
    return tuple(sorted(out))


# -- site templates ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArgTemplate:
    """How to rebuild one argument of a fused call at another token count."""

    name: str
    literal: Any = None               # non-tensor arguments: the value itself
    shape: Optional[tuple[int, ...]] = None  # tensors: the site's shape ...
    stride: Optional[tuple[int, ...]] = None
    dtype: Optional[torch.dtype] = None
    rows: Optional[str] = None        # None (fixed), "tokens" (dim 0 = T) or "blocks" (dim 0 = T // ratio)

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None


@dataclass(frozen=True)
class SiteTemplate:
    op: str
    site: str                         # "module.path:fused_node" of the call site
    tokens: int                       # the site's own token count
    args: tuple[ArgTemplate, ...]

    def shapes_at(self, T: int) -> list[Optional[tuple[int, ...]]]:
        """Each argument's shape at token count T (None for non-tensors)."""
        ratio = self._ratio()
        out = []
        for a in self.args:
            if not a.is_tensor:
                out.append(None)
                continue
            shape = list(a.shape)
            if a.rows == "tokens":
                shape[0] = T
            elif a.rows == "blocks":
                shape[0] = T // ratio
            out.append(tuple(shape))
        return out

    def key_at(self, T: int) -> tuple:
        """Identity of the call at T: sites with equal keys compile the same variants."""
        parts: list[Any] = [self.op]
        for a, shape in zip(self.args, self.shapes_at(T)):
            if a.is_tensor:
                parts.append((shape, a.dtype, _keeps_strides(a, shape) and a.stride))
            else:
                parts.append(("literal", repr(a.literal)))
        return tuple(parts)

    def args_at(self, T: int, device: torch.device, generator: torch.Generator) -> tuple:
        return tuple(_materialize(a, shape, device, generator) if a.is_tensor else a.literal
                     for a, shape in zip(self.args, self.shapes_at(T)))

    def empty_args_at(self, T: int, device: torch.device) -> tuple:
        """The arguments at T, uninitialized: enough for dispatch to choose (meta: no memory)."""
        return tuple(_allocate(a, shape, device) if a.is_tensor else a.literal
                     for a, shape in zip(self.args, self.shapes_at(T)))

    def _ratio(self) -> int:
        ratio_param = BLOCK_ROWS.get(self.op, ((), ""))[1]
        for a in self.args:
            if a.name == ratio_param and isinstance(a.literal, int):
                return max(1, a.literal)
        return 1


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _keeps_strides(a: ArgTemplate, shape: tuple[int, ...]) -> bool:
    """Rebuild with the site's strides: a non-contiguous layout whose row stride does not depend on
    T (a column slice of a wider tensor, like k_rope = kv[:, 448:]); else a contiguous tensor."""
    if a.stride is None or a.stride == _contiguous_strides(a.shape) or not shape:
        return False
    return a.rows is None or a.stride[0] == max(a.stride)


def _allocate(a: ArgTemplate, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if _keeps_strides(a, shape):
        return torch.empty_strided(shape, a.stride, dtype=a.dtype, device=device)
    return torch.empty(shape, dtype=a.dtype, device=device)


def _materialize(a: ArgTemplate, shape: tuple[int, ...], device: torch.device,
                 generator: torch.Generator) -> torch.Tensor:
    t = _allocate(a, shape, device)
    if a.dtype.is_floating_point:  # small values: no overflow in exp/sigmoid chains (mHC, softmax)
        t.copy_(0.1 * torch.randn(shape, generator=generator, device=device))
    else:  # slots and indices: 0 is a valid slot of any cache; caches and flags start zeroed
        t.zero_()
    return t


def _value(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def site_template(op: ops.FusedOp, call: torch.fx.Node, site: str) -> SiteTemplate:
    """Read a fused call's arguments (meta tensors) and mark the ones sized by the token count."""
    params = list(op.signature.parameters)
    values = dict(zip(params, (_value(a) for a in call.args)))
    tensors = {p: v for p, v in values.items() if isinstance(v, torch.Tensor)}
    token_params = TOKEN_ROWS.get(op.name)
    block_params, ratio_param = BLOCK_ROWS.get(op.name, ((), ""))
    first = next((p for p in (token_params or params) if p in tensors and p not in op.mutates_args
                  and tensors[p].dim() >= 1), None)
    T0 = tensors[first].shape[0] if first is not None else None
    ratio = values.get(ratio_param) if ratio_param else None
    args = []
    for p in params:
        v = values.get(p)
        if not isinstance(v, torch.Tensor):
            args.append(ArgTemplate(p, literal=v))
            continue
        rows = None
        if T0 is not None and v.dim() >= 1 and p not in op.mutates_args:
            if p in block_params and isinstance(ratio, int) and ratio > 0 and v.shape[0] == T0 // ratio:
                rows = "blocks"
            elif (token_params is None or p in token_params) and v.shape[0] == T0:
                rows = "tokens"
        args.append(ArgTemplate(p, shape=tuple(v.shape), stride=tuple(v.stride()), dtype=v.dtype, rows=rows))
    return SiteTemplate(op.name, site, int(T0) if T0 is not None else 0, tuple(args))


def site_templates(compiled: torch.nn.Module) -> list[SiteTemplate]:
    """One template per fused call site of a ``fusegraph.compile`` result."""
    site_nodes = getattr(compiled, "_site_nodes", None)
    if site_nodes is None or not hasattr(compiled, "sites"):
        raise TypeError("warmup needs a module returned by fusegraph.compile with a captured graph "
                        "(the Dynamo fallback fuses graphs only when it first runs them)")
    templates = []
    for site in compiled.sites:
        call = site_nodes[site.fused_node]
        op = ops.op_of_target(call.target)
        if op is None:  # pragma: no cover - sites are fused calls by construction
            continue
        templates.append(site_template(op, call, f"{site.module}:{site.fused_node}" if site.module
                                       else site.fused_node))
    return templates


# -- running ------------------------------------------------------------------------------------------
def _device_of(module: torch.nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stderr_bar(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\rwarm-up [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:60]:<60}{end}")
    sys.stderr.flush()


def warmup(compiled: torch.nn.Module, max_tokens: int, progress: Union[bool, Progress] = True,
           tokens: Optional[tuple[int, ...]] = None, device: Optional[torch.device] = None,
           seed: int = 0) -> WarmupReport:
    """Compile every kernel variant ``compiled`` meets up to ``max_tokens`` tokens; report each.

    ``tokens`` replaces the bucket list; ``device`` the model's device; ``progress`` is a bar on
    stderr (True), nothing (False) or ``fn(done, total, label)``. A failing call is recorded (with
    its error) and the warm-up goes on.
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else _device_of(compiled)
    buckets = tuple(sorted(set(tokens))) if tokens else token_buckets(max_tokens)
    target = _targets.of_device(device)
    report = WarmupReport(str(device), target, max_tokens, buckets)
    templates = site_templates(compiled)

    # one call per distinct (op, argument layout) and bucket, in bucket order
    calls: list[tuple[int, SiteTemplate, list[str]]] = []
    index: dict[tuple, int] = {}
    for T in buckets:
        for tpl in templates:
            key = (T, tpl.key_at(T))
            if key in index:
                calls[index[key]][2].append(tpl.site)
            else:
                index[key] = len(calls)
                calls.append((T, tpl, [tpl.site]))

    show: Optional[Progress] = _stderr_bar if progress is True else (progress or None)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    for i, (T, tpl, sites) in enumerate(calls):
        if show:
            show(i, len(calls), f"{tpl.op} T={T}")
        report.entries.append(_run_one(tpl, T, sites, device, target, generator))
    if show:
        show(len(calls), len(calls), "done")
    report.seconds = time.perf_counter() - start
    _store(compiled, "warm", report.record())
    return report


def _store(compiled: torch.nn.Module, field_name: str, record: Any) -> None:
    """Keep ``record`` in the compile report (``compiled.report.warm`` / ``.warmup_plan``)."""
    report = getattr(compiled, "report", None)
    if report is not None and hasattr(report, field_name):
        setattr(report, field_name, record)


def _run_one(tpl: SiteTemplate, T: int, sites: list[str], device: torch.device, target: str,
             generator: torch.Generator) -> WarmupEntry:
    op = ops.get(tpl.op)
    provider, error = "?", None
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            args = tpl.args_at(T, device, generator)
            provider = op.select(target, args).provider
            _synchronize(device)
            t0 = time.perf_counter()
            op(*args)
            _synchronize(device)
    except Exception as exc:  # record it and go on: one broken variant must not stop the warm-up
        error = _one_line(exc)
    seconds = time.perf_counter() - t0
    return WarmupEntry(tpl.op, provider, T, tuple(dict.fromkeys(sites)), error is None, round(seconds, 4), error)


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".strip().splitlines() or [""])[0][:300]


# -- planning -------------------------------------------------------------------------------------------
def plan(compiled: torch.nn.Module, max_tokens: int, *, target: Optional[str] = None,
         tokens: Optional[tuple[int, ...]] = None, device: Union[str, torch.device] = "meta",
         note: str = "") -> WarmupPlan:
    """Which (op, provider, T) variants ``warmup(compiled, max_tokens)`` would compile on ``target``
    (default: the compile report's), without running or compiling anything.

    The arguments are built on ``device``: meta tensors (default) need no memory and no GPU; on the
    target's GPU, uninitialized tensors there let gates that look at the device (its name, pointer
    alignment) answer as at run time. ``note`` is kept in the plan (e.g. why nothing was compiled).
    """
    report = getattr(compiled, "report", None)
    target = _targets.parse(target) if target else (getattr(report, "target", None) or _targets.detect())
    device = torch.device(device)
    buckets = tuple(sorted(set(tokens))) if tokens else token_buckets(max_tokens)
    templates = site_templates(compiled)

    steps: list[PlanStep] = []
    gates: list[tuple[str, str, str, int, Optional[str]]] = []   # (op, provider, why not here, T, gate answer)
    for T in buckets:
        layouts: dict[tuple, list[SiteTemplate]] = {}
        for tpl in templates:
            layouts.setdefault(tpl.key_at(T), []).append(tpl)
        for members in layouts.values():
            step, answers = _plan_step(members[0], T, len(members), device, target)
            steps.append(step)
            gates += answers

    result = WarmupPlan(target=target, max_tokens=max_tokens, buckets=buckets, planned_on=str(device),
                        variants=_plan_variants(steps), steps=tuple(steps),
                        unavailable_here=_unavailable_here(gates),
                        tables=_table_plans(templates, buckets, target), note=note)
    _store(compiled, "warmup_plan", result)
    return result


def _plan_step(tpl: SiteTemplate, T: int, sites: int, device: torch.device, target: str
               ) -> tuple[PlanStep, list[tuple[str, str, str, int, Optional[str]]]]:
    """The dispatcher's choice at T, and for each provider ranked above it that this machine lacks,
    what its argument gates say about these arguments (None: they accept them)."""
    op = ops.get(tpl.op)
    try:
        args = tpl.empty_args_at(T, device)
        selection = op.select(target, args)
    except Exception as exc:  # no provider at all (a forced list that cannot run): say so, go on
        return PlanStep(tpl.op, T, "", sites, (), _one_line(exc)), []
    rank = op.providers[selection.provider].priority
    above = tuple(r for r in selection.rejected
                  if r.provider in op.providers and op.providers[r.provider].priority > rank)
    answers = []
    for r in above:
        provider = op.providers[r.provider]
        if target in provider.targets and provider.available() == r.reason:
            answers.append((tpl.op, r.provider, r.reason, T, _gate_answer(provider, args)))
    return PlanStep(tpl.op, T, selection.provider, sites, above), answers


def _gate_answer(provider: ops.Provider, args: tuple) -> Optional[str]:
    for gate in (provider.supports_args, provider.measured):
        try:
            reason = gate(*args)
        except Exception as exc:  # a gate that needs the real device may raise on meta tensors
            reason = f"{getattr(gate, '__name__', 'gate')} raised {_one_line(exc)}"
        if reason:
            return reason
    return None


def _plan_variants(steps: list[PlanStep]) -> tuple[WarmVariant, ...]:
    """(op, provider) -> buckets; sites: the most sites it serves at one bucket."""
    sites: dict[tuple[str, str], dict[int, int]] = {}
    for s in steps:
        if s.provider:
            per_T = sites.setdefault((s.op, s.provider), {})
            per_T[s.tokens] = per_T.get(s.tokens, 0) + s.sites
    return _variants(sites)


def _variants(sites: dict[tuple[str, str], dict[int, int]]) -> tuple[WarmVariant, ...]:
    rows = [WarmVariant(op, provider, tuple(sorted(per_T)), max(per_T.values()))
            for (op, provider), per_T in sites.items()]
    return tuple(sorted(rows, key=lambda v: (v.op, v.tokens[0], v.provider)))


def _unavailable_here(gates: list[tuple[str, str, str, int, Optional[str]]]) -> tuple[Unavailable, ...]:
    """Per (provider, op) this machine lacks: why, and the buckets its argument gates accept."""
    found: dict[tuple[str, str], tuple[str, set[int], list[str]]] = {}
    for op, provider, reason, T, answer in gates:
        _, accept, refuse = found.setdefault((provider, op), (reason, set(), []))
        if answer is None:
            accept.add(T)
        elif not refuse:
            refuse.append(answer)
    return tuple(Unavailable(provider, op, reason, tuple(sorted(accept)), refuse[0] if refuse else "")
                 for (provider, op), (reason, accept, refuse) in sorted(found.items()))


# The mHC TileLang providers take a call only where a committed crossover table, measured on the
# call's GPU, names TileLang the winner at the call's (op, hidden size D, T bucket); anything else
# stays with the other provider the table compares it with (kernels/mhc_pre/crossover.py).
TABLE_PROVIDER = "tilelang"
TABLE_SIZE_ARG = ("residual", 2)   # D = residual.shape[2] in every op a table decides


def _table_plans(templates: list[SiteTemplate], buckets: tuple[int, ...], target: str) -> tuple[TablePlan, ...]:
    try:
        from fusegraph.kernels.mhc_pre import crossover
    except ImportError:  # pragma: no cover - the kernels ship with fusegraph
        return ()
    fallback = next(p for p in crossover.PROVIDERS if p != TABLE_PROVIDER)
    by_size: dict[tuple[str, int], int] = {}   # (op, D) -> sites
    for tpl in templates:
        provider = ops.get(tpl.op).providers.get(TABLE_PROVIDER)
        if tpl.op not in crossover.OPS or provider is None or target not in provider.targets:
            continue
        arg = next((a for a in tpl.args if a.name == TABLE_SIZE_ARG[0] and a.is_tensor), None)
        if arg is not None and len(arg.shape) > TABLE_SIZE_ARG[1]:
            key = (tpl.op, arg.shape[TABLE_SIZE_ARG[1]])
            by_size[key] = by_size.get(key, 0) + 1
    if not by_size:
        return ()
    plans = []
    for table in crossover.load_tables():
        sites: dict[tuple[str, str], dict[int, int]] = {}
        notes: list[str] = []
        for (op, D), n in sorted(by_size.items()):
            if _forced(op):
                notes.append(f"{op}: the provider order is forced (--provider / ops.prefer); the table is not asked")
                continue
            measured = table.status == crossover.MEASURED
            if not measured:
                notes.append(f"{op} at D = {D}: the table is unmeasured; {fallback} at every T")
            elif table.lookup(op, D, 1) is None:
                notes.append(f"{op} at D = {D}: not measured in this table; {fallback} at every T")
            for T in buckets:
                entry = table.lookup(op, D, T) if measured else None
                winner = entry.winner if entry is not None else fallback
                per_T = sites.setdefault((op, winner), {})
                per_T[T] = per_T.get(T, 0) + n
        plans.append(TablePlan(table.device, table.name, table.status, TABLE_PROVIDER, _variants(sites),
                               tuple(notes)))
    return tuple(plans)


def _forced(op: str) -> bool:
    """True when an ``ops.prefer`` context (``--provider``) fixes the op's provider order."""
    return any(layer.get(op) or layer.get("*") for layer in ops._preferences())
