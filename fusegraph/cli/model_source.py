"""Resolve the MODEL argument of the console script into a model and its example inputs.

MODEL is either

* a built-in preset: ``tiny`` (built on the CPU with real weights: it runs), ``flash`` or ``pro``
  (the released DSV4 sizes, built on the meta device: planning and reports only, nothing runs);
* ``package.module:factory``: a callable returning ``(model, example_inputs)``, where
  ``example_inputs`` is a tuple of forward arguments (a single tensor is accepted too). The
  current directory is importable, as with ``python -m``, so a factory next to the user's
  script works without installing anything. A factory that takes a ``tokens`` (or ``T``) or
  ``device`` or ``seed`` keyword receives ``--tokens`` / the device / ``--seed``.

Everything that can go wrong here is the user's input, so it raises ``UsageError`` with a message
that says what to fix (``main`` prints it on one line and exits with 2).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fusegraph.cli.errors import UsageError

PRESETS = ("tiny", "flash", "pro")
RUNNABLE_PRESETS = ("tiny",)        # the others are built on the meta device (planning only)
DEFAULT_TOKENS = 128   # as fusegraph.compile's default: the fewest tokens with which a ratio-128 compressor emits a block


@dataclass
class ModelSource:
    """A model ready to compile, and the inputs it is run (or planned) with."""

    spec: str                     # what the user typed
    name: str                     # display name
    model: torch.nn.Module
    inputs: tuple[Any, ...]
    device: torch.device          # where the inputs live ("meta": planning only)
    tokens: int | None
    seed: int

    @property
    def planning_only(self) -> bool:
        return self.device.type == "meta"


def _first_tensor_device(inputs: tuple[Any, ...], model: torch.nn.Module) -> torch.device:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    for p in list(model.parameters()) + list(model.buffers()):
        return p.device
    return torch.device("cpu")


def _call_with_supported(fn: Callable[..., Any], args: tuple, options: dict[str, Any]) -> Any:
    """Call ``fn(*args, **options)`` passing only the keyword options ``fn`` accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(*args, **options)
    return fn(*args, **{k: v for k, v in options.items() if k in params})


def load_preset(name: str, *, tokens: int | None, seed: int, device: str | None) -> ModelSource:
    try:
        presets = importlib.import_module("fusegraph.models.presets")
    except ImportError as exc:
        raise UsageError(f"the built-in presets are not available ({exc})") from None
    if name in RUNNABLE_PRESETS:
        where = device or "cpu"
    else:
        if device not in (None, "meta"):
            raise UsageError(f"preset {name!r} is built on the meta device (planning only); "
                             f"it cannot be placed on {device!r}")
        where = "meta"
    torch.manual_seed(seed)
    model = presets.build_model(name, device=where, seed=seed)
    torch.manual_seed(seed)
    example = presets.example_inputs
    t = tokens if tokens is not None else _default_tokens(example)
    inputs = _call_with_supported(example, (model, t) if t is not None else (model,), {"seed": seed})
    inputs = _as_tuple(inputs, f"preset {name}")
    return ModelSource(name, name, model, inputs, torch.device(where), t, seed)


def _default_tokens(example: Callable[..., Any]) -> int | None:
    """The preset's own default token count when ``example_inputs`` has one, else DEFAULT_TOKENS."""
    try:
        params = list(inspect.signature(example).parameters.values())
    except (TypeError, ValueError):
        return DEFAULT_TOKENS
    if len(params) >= 2 and params[1].default is not inspect.Parameter.empty:
        return None
    return DEFAULT_TOKENS


def _as_tuple(inputs: Any, who: str) -> tuple[Any, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, tuple):
        raise UsageError(f"{who} returned example inputs of type {type(inputs).__name__}; "
                         "expected a tuple of forward arguments")
    return inputs


def load_factory(spec: str, *, tokens: int | None, seed: int, device: str | None) -> ModelSource:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"MODEL {spec!r} is neither a preset ({', '.join(PRESETS)}) nor "
                         "'package.module:factory'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: factories next to the user's files import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for MODEL {spec!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise UsageError(f"{spec} is a {type(factory).__name__}, not a callable factory")
    torch.manual_seed(seed)
    options: dict[str, Any] = {"seed": seed}
    if tokens is not None:
        options.update(tokens=tokens, T=tokens)
    if device is not None:
        options["device"] = device
    try:
        result = _call_with_supported(factory, (), options)
    except Exception as exc:
        raise UsageError(f"factory {spec} raised {type(exc).__name__}: {exc}") from None
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UsageError(f"factory {spec} returned {_describe(result)}; expected (model, example_inputs)")
    model, inputs = result
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"factory {spec} returned a {type(model).__name__} as the model; "
                         "expected a torch.nn.Module")
    inputs = _as_tuple(inputs, f"factory {spec}")
    dev = _first_tensor_device(inputs, model)
    return ModelSource(spec, spec, model, inputs, dev, tokens, seed)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def load(spec: str, *, tokens: int | None = None, seed: int = 0, device: str | None = None) -> ModelSource:
    """Build the model named by ``spec`` (a preset or ``package.module:factory``)."""
    if tokens is not None and tokens < 0:
        raise UsageError(f"--tokens must be >= 0, got {tokens}")
    if spec in PRESETS:
        return load_preset(spec, tokens=tokens, seed=seed, device=device)
    if ":" not in spec:
        raise UsageError(f"unknown preset {spec!r}: expected one of {', '.join(PRESETS)} or "
                         "'package.module:factory'")
    return load_factory(spec, tokens=tokens, seed=seed, device=device)
