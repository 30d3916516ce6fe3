"""Stable JSON: keys in the order they were built, two-space indent; NaN and infinities become
null (JSON has no such numbers); dtypes, devices and paths become their text form."""
from __future__ import annotations

import json
import math
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)  # dtypes, devices, paths: their text form


def dumps(value: Any) -> str:
    return json.dumps(_clean(value), indent=2, allow_nan=False) + "\n"
