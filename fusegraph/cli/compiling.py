"""How the console script calls the compiler: target parsing, forced providers, progress.

Commands take a ``compile_fn`` with the signature of ``fusegraph.compile`` so that tests (and
other tools) can drive the same code with another compiler; the default is the real one.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from fusegraph import targets
from fusegraph.cli.errors import UsageError

CompileFn = Callable[..., Any]


def default_compile() -> CompileFn:
    import fusegraph

    fn = getattr(fusegraph, "compile", None)
    if fn is None:
        try:
            from fusegraph.compiler import compile as fn  # type: ignore[no-redef]
        except ImportError as exc:
            raise UsageError(f"the fusegraph compiler is not available in this installation ({exc})") from None
    return fn


def parse_target(target: str) -> str:
    try:
        return targets.parse(target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_providers(items: list[str] | None) -> dict[str, list[str]]:
    """``--provider mhc_pre=torch --provider mhc_post=triton,torch`` -> ``{op: [providers]}``."""
    from fusegraph import ops

    forced: dict[str, list[str]] = {}
    for item in items or []:
        op_name, sep, names = item.partition("=")
        if not sep or not op_name or not names:
            raise UsageError(f"--provider takes OP=NAME[,NAME...], got {item!r}")
        if op_name != "*":
            try:
                op = ops.get(op_name)
            except KeyError as exc:
                raise UsageError(str(exc.args[0])) from None
            unknown = [n for n in names.split(",") if n not in op.providers]
            if unknown:
                raise UsageError(f"op {op_name!r} has no provider {', '.join(map(repr, unknown))}; "
                                 f"it has {', '.join(sorted(op.providers))}")
        forced[op_name] = names.split(",")
    return forced


@contextlib.contextmanager
def forced_providers(forced: dict[str, list[str]]) -> Iterator[None]:
    """Apply ``--provider`` choices to compilation and to every run inside the block."""
    if not forced:
        yield
        return
    from fusegraph import ops

    with ops.prefer(forced):
        yield


def run_compile(compile_fn: CompileFn, source: Any, target: str, *, progress: Any = None,
                fuel: int | None = None, patterns: list[str] | None = None) -> Any:
    kwargs: dict[str, Any] = dict(target=target, example_inputs=source.inputs)
    if progress is not None:
        kwargs["progress"] = progress
    if fuel is not None:
        kwargs["fuel"] = fuel
    if patterns:
        kwargs["patterns"] = patterns
    return compile_fn(source.model, **kwargs)
