"""The documented JSON shapes of ``fusegraph report --format json`` and ``compare -o DIR``
(``compare.json``), as data, with a small validator.

docs/report-json.md describes the same shapes for people; the tests validate real command output
against these definitions, so the two cannot drift apart silently. The validator is deliberately
strict: a key the shape does not list is an error, so adding a field means documenting it.

Notation: a Python type (``str``, ``int``, ``bool``); ``NUM`` (int or float); ``Opt(x)`` (x or null);
``[x]`` (list of x); ``MapOf(x)`` (object with any string keys, values x); a dict (object with exactly
these keys).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Opt:
    inner: Any


@dataclass(frozen=True)
class MapOf:
    inner: Any


NUM = (int, float)

SELECTION = {"op": str, "target": str, "provider": str, "rejected": [{"provider": str, "reason": str}]}
SITE = {
    "pattern": str, "op": str, "module": str, "anchor": str, "fused_node": str, "replaced": [str],
    "inputs": MapOf(str), "outputs": MapOf(str), "selection": SELECTION,
    "bytes_unfused": int, "bytes_fused": int, "launches_unfused": int, "launches_fused": int,
    "max_error": Opt(NUM),
}
NEAR_MISS = {
    "pattern": str, "module": str, "anchor": str, "stage": str, "kind": str, "reason": str,
    "divergent_node": Opt(str), "source": Opt(str), "matched_fraction": NUM,
}
GRAPH_STATS = {"nodes": int, "op_census": MapOf(int), "est_bytes": int, "est_launches": int}
COVERAGE_ROW = {
    "scope": str, "sites": int, "ops": int, "ops_fused": int, "bytes": int, "bytes_fused": int,
    "launches": int, "launches_fused": int, "bytes_saved": int, "launches_saved": int,
    "ops_share": NUM, "bytes_share": NUM, "launches_share": NUM,
}
WARM_VARIANT = {"op": str, "provider": str, "tokens": [int], "sites": int, "seconds": Opt(NUM)}
WARM = {
    "device": str, "target": str, "max_tokens": int, "buckets": [int], "calls": int, "seconds": NUM, "ok": bool,
    "variants": [WARM_VARIANT],
    "failures": [{"op": str, "provider": str, "tokens": int, "sites": int, "error": str}],
}
WARMUP_PLAN = {
    "target": str, "max_tokens": int, "buckets": [int], "planned_on": str, "note": str,
    "variants": [WARM_VARIANT],
    "steps": [{"op": str, "tokens": int, "provider": str, "sites": int,
               "passed_over": [{"provider": str, "reason": str}], "error": Opt(str)}],
    "unavailable_here": [{"provider": str, "op": str, "reason": str, "gates_accept": [int], "gates_refuse": str}],
    "tables": [{"device": str, "table": str, "status": str, "provider": str, "variants": [WARM_VARIANT],
                "notes": [str]}],
}
REPORT = {
    "schema": str, "model": str, "target": str, "capture": str, "capture_note": str,
    "counts": MapOf(int), "expected": MapOf(int),
    "shortfall": MapOf({"expected": int, "matched": int}),
    "sites": [SITE], "near_misses": [NEAR_MISS], "before": Opt(GRAPH_STATS), "after": Opt(GRAPH_STATS),
    "timings": MapOf(NUM), "warmup_plan": Opt(WARMUP_PLAN), "warm": Opt(WARM),
    "source": str, "device": str, "tokens": Opt(int),
    "coverage": Opt({"total": COVERAGE_ROW, "layers": [COVERAGE_ROW]}),
    "warnings": [str], "elapsed_s": NUM,
}

TOLERANCE = {"rel_l2": NUM, "max_ulps": Opt(NUM), "mismatch": NUM, "why": str}
TENSOR_CHECK = {
    "name": str, "dtype": str, "shape": [int], "max_abs": Opt(NUM), "rel_l2": Opt(NUM),
    "rel_l2_unfused": Opt(NUM), "ulps": Opt(NUM), "ulps_unfused": Opt(NUM), "mismatch": Opt(NUM),
    "passed": bool, "reason": str, "tolerance": TOLERANCE, "note": str,
}
TIMING = {"median_ms": NUM, "min_ms": NUM, "iters": int, "launches": Opt(int),
          "graph_median_ms": Opt(NUM), "graph_note": str}
COMPARE = {
    "schema": str, "source": str, "model": str, "target": str, "device": str, "tokens": Opt(int), "seed": int,
    "passed": bool, "fp64_note": str, "outputs": [TENSOR_CHECK],
    "sites": [{"index": int, "pattern": str, "op": str, "module": str, "fused_node": str, "provider": str,
               "passed": bool, "error": str, "notes": [str], "outputs": [TENSOR_CHECK]}],
    "timing": {"unfused": Opt(TIMING), "fused": Opt(TIMING), "note": str},
    "bisect": Opt({"steps": [{"fuel": int, "passed": bool}], "culprit": Opt(int), "site": Opt(SITE),
                   "failing_output": Opt(TENSOR_CHECK), "note": str}),
    "tolerances": {"growth": NUM},
}


def validate(value: Any, shape: Any, path: str = "$") -> list[str]:
    """Differences between ``value`` (parsed JSON) and ``shape``; empty when it conforms."""
    if isinstance(shape, Opt):
        return [] if value is None else validate(value, shape.inner, path)
    if isinstance(shape, MapOf):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        return [e for k, v in value.items() for e in validate(v, shape.inner, f"{path}.{k}")]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in validate(v, shape[0], f"{path}[{i}]")]
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        errors = [f"{path}: missing key {k!r}" for k in shape if k not in value]
        errors += [f"{path}: undocumented key {k!r}" for k in value if k not in shape]
        for k, sub in shape.items():
            if k in value:
                errors += validate(value[k], sub, f"{path}.{k}")
        return errors
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
        return [f"{path}: expected {_names(types)}, got bool"]
    if not isinstance(value, types):
        return [f"{path}: expected {_names(types)}, got {type(value).__name__}"]
    return []


def _names(types: tuple) -> str:
    return " or ".join(t.__name__ for t in types)
