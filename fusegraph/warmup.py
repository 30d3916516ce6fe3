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


def _materialize(a: ArgTemplate, shape: tuple[int, ...], device: torch.device,
                 generator: torch.Generator) -> torch.Tensor:
    if _keeps_strides(a, shape):
        t = torch.empty_strided(shape, a.stride, dtype=a.dtype, device=device)
    else:
        t = torch.empty(shape, dtype=a.dtype, device=device)
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
    return report


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
        error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    seconds = time.perf_counter() - t0
    return WarmupEntry(tpl.op, provider, T, tuple(dict.fromkeys(sites)), error is None, round(seconds, 4), error)
