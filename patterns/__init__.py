"""fusegraph.patterns: one pattern per module.

Each module defines ``PATTERN`` (a ``fusegraph.pattern.Pattern``) or ``COMPOSITION``. A pattern is the
reference function of its fused op (``kernels/<op>/reference.py``) plus how its inputs look in a
graph, its shape constraints and the input regimes it must agree under. The registry below collects
them; priority orders matching (bigger patterns first, so ``mhc_pre_norm`` is tried before
``mhc_pre`` and claims the norm with it).
"""
from __future__ import annotations

import importlib
import pkgutil

from fusegraph.pattern import Composition, Pattern


def _modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def all_patterns() -> list[Pattern]:
    return sorted((m.PATTERN for m in _modules() if hasattr(m, "PATTERN")), key=lambda p: (-p.priority, p.name))


def all_compositions() -> list[Composition]:
    return [m.COMPOSITION for m in _modules() if hasattr(m, "COMPOSITION")]
