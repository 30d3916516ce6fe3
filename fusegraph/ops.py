"""Fused ops and their providers.

A fused op is declared by its plain torch function, which *is* its spec (the idea of vLLM IR)::

    @fused_op("mhc_post")
    def mhc_post(f: Tensor, residual: Tensor, post: Tensor, comb: Tensor) -> Tensor:
        ...plain torch...

The declaration registers ``torch.ops.fusegraph.mhc_post`` through ``torch.library.custom_op``
(schema inferred from the annotations, fake implementation = the reference run on fake tensors
unless one is given), so rewritten graphs stay traceable, exportable and CUDA-graph capturable,
and stay opaque inside Inductor.

Providers implement the op for some targets::

    @mhc_post.provider("triton", targets=CUDA_TARGETS, priority=20)
    def mhc_post_triton(f, residual, post, comb): ...

A provider declares *where* it runs (``targets``, plus ``available`` for what this machine lacks:
a missing package, no compiler) separately from *for which arguments* (``supports_args``: shapes,
dtypes, alignment). Neither is for enablement policy: ``priority`` orders the usable providers
and ``prefer`` overrides the order. The one policy hook is ``measured``: a provider that is fast
only for some arguments declines the others by citing a committed measurement (a crossover table
with its device), and the call goes to the next usable provider. The torch reference is always a provider, at priority 0, so a
call never lacks an implementation. Every selection keeps the reason each other provider was
passed over; the report shows them per match site.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from fusegraph import targets as _targets

NAMESPACE = "fusegraph"
REFERENCE = "torch"

Reason = str | None  # None: fine; a string: why not


@dataclass(frozen=True)
class Rejection:
    provider: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """Which provider runs an op on a target for given arguments, and why the others do not."""

    op: str
    target: str
    provider: str
    rejected: tuple[Rejection, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "target": self.target,
            "provider": self.provider,
            "rejected": [{"provider": r.provider, "reason": r.reason} for r in self.rejected],
        }


def _always(*_args: Any, **_kwargs: Any) -> Reason:
    return None


@dataclass(frozen=True)
class Provider:
    op: str
    name: str
    impl: Callable[..., Any]
    targets: frozenset[str]
    priority: int
    available: Callable[[], Reason] = _always
    supports_args: Callable[..., Reason] = _always
    measured: Callable[..., Reason] = _always   # "measured slower here" (policy, cites its data)

    def why_not(self, target: str, args: tuple, kwargs: dict) -> Reason:
        if target not in self.targets:
            return f"does not run on {target} (runs on {', '.join(sorted(self.targets))})"
        reason = self.available()
        if reason:
            return reason
        for gate in (self.supports_args, self.measured):
            try:
                reason = gate(*args, **kwargs)
            except Exception as exc:  # a broken gate must not take the call down; report it
                return f"{getattr(gate, '__name__', 'gate')} raised {type(exc).__name__}: {exc}"
            if reason:
                return reason
        return None


_local = threading.local()


def _preferences() -> list[dict[str, tuple[str, ...]]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextlib.contextmanager
def prefer(order: dict[str, Iterable[str] | str]) -> Iterator[None]:
    """Force provider order per op (key ``"*"`` for every op); inner contexts win.

    >>> with prefer({"mhc_pre": ["torch"]}): ...   # run the reference only
    """
    stack = _preferences()
    stack.append({op: (names,) if isinstance(names, str) else tuple(names) for op, names in order.items()})
    try:
        yield
    finally:
        stack.pop()


class FusedOp:
    def __init__(self, name: str, reference: Callable[..., Any], mutates_args: tuple[str, ...],
                 fake: Callable[..., Any] | None):
        self.name = name
        self.reference = reference
        self.mutates_args = mutates_args
        self.signature = inspect.signature(reference)
        self.providers: dict[str, Provider] = {}
        self.__doc__ = reference.__doc__
        self.provider(REFERENCE, targets=_targets.TARGETS, priority=0)(reference)

        def dispatch(*args: Any, **kwargs: Any) -> Any:
            return self._dispatch(*args, **kwargs)

        # custom_op infers the schema from the signature: give the wrapper the reference's.
        dispatch.__signature__ = _resolved_signature(reference)  # type: ignore[attr-defined]
        dispatch.__name__ = name
        lib_op = torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)(dispatch)
        lib_op.register_fake(fake or reference)
        self.torch_op = getattr(getattr(torch.ops, NAMESPACE), name).default

    # -- providers ---------------------------------------------------------------------------
    def provider(self, name: str, *, targets: Iterable[str], priority: int,
                 available: Callable[[], Reason] | None = None,
                 supports_args: Callable[..., Reason] | None = None,
                 measured: Callable[..., Reason] | None = None) -> Callable:
        """Decorator registering an implementation with the same signature as the reference."""

        def register(impl: Callable[..., Any]) -> Callable[..., Any]:
            params = list(inspect.signature(impl).parameters)
            expected = list(self.signature.parameters)
            if params != expected:
                raise TypeError(f"provider {name!r} of {self.name}: parameters {params} differ from the "
                                f"reference's {expected}")
            self.providers[name] = Provider(self.name, name, impl, frozenset(targets), priority,
                                            available or _always, supports_args or _always,
                                            measured or _always)
            return impl

        return register

    def select(self, target: str, args: tuple, kwargs: dict | None = None) -> Selection:
        kwargs = kwargs or {}
        order = sorted(self.providers.values(), key=lambda p: -p.priority)
        forced = None
        for layer in reversed(_preferences()):
            forced = layer.get(self.name) or layer.get("*")
            if forced:
                break
        rejected: list[Rejection] = []
        if forced:
            rank = {n: i for i, n in enumerate(forced)}
            for p in order:
                if p.name not in rank:
                    rejected.append(Rejection(p.name, "not in the forced provider list"))
            order = sorted((p for p in order if p.name in rank), key=lambda p: rank[p.name])
        for i, p in enumerate(order):
            reason = p.why_not(target, args, kwargs)
            if reason is None:
                # The ones after it lose on priority; say so, with their own reason if they have one.
                for q in order[i + 1:]:
                    why = q.why_not(target, args, kwargs)
                    rejected.append(Rejection(q.name, why or f"lower priority than {p.name} ({q.priority} < {p.priority})"))
                return Selection(self.name, target, p.name, tuple(rejected))
            rejected.append(Rejection(p.name, reason))
        if forced and REFERENCE not in forced:
            ref = self.providers[REFERENCE]
            return Selection(self.name, target, ref.name, tuple(rejected))
        raise RuntimeError(f"fusegraph::{self.name}: no provider for target {target}: "
                           + "; ".join(f"{r.provider}: {r.reason}" for r in rejected))

    # -- calling -------------------------------------------------------------------------------
    def _dispatch(self, *args: Any, **kwargs: Any) -> Any:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        selection = self.select(_targets.of_device(device), args, kwargs)
        return self.providers[selection.provider].impl(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.torch_op(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FusedOp({self.name}, providers={sorted(self.providers)})"


def _resolved_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations (``from __future__ import annotations``) resolved."""
    import typing

    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    ret = hints.get("return", sig.return_annotation)
    return sig.replace(parameters=params, return_annotation=None if ret is type(None) else ret)


_REGISTRY: dict[str, FusedOp] = {}


def fused_op(name: str, *, mutates_args: Iterable[str] = (), fake: Callable[..., Any] | None = None
             ) -> Callable[[Callable[..., Any]], FusedOp]:
    """Declare a fused op from its reference function (type-annotated: it gives the schema)."""

    def declare(reference: Callable[..., Any]) -> FusedOp:
        if name in _REGISTRY:
            raise ValueError(f"fused op {name!r} is declared twice")
        op = FusedOp(name, reference, tuple(mutates_args), fake)
        _REGISTRY[name] = op
        return op

    return declare


def get(name: str) -> FusedOp:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown fused op {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> dict[str, FusedOp]:
    load_all()
    return dict(_REGISTRY)


def op_of_target(target: Any) -> FusedOp | None:
    """The FusedOp behind an FX node target such as ``torch.ops.fusegraph.mhc_pre.default``."""
    for op in _REGISTRY.values():
        if target is op.torch_op:
            return op
    return None


def load_all() -> None:
    """Import every kernel package so that all ops and providers are registered."""
    import fusegraph.kernels  # noqa: F401  (its __init__ imports each op package)
