"""Benchmark cases of the mHC TileLang providers beside the Triton ones (``python -m benchmarks.ops``).

For mhc_pre+norm, mhc_post and mhc_post_pre+norm (the model's calls) at every requested T and
preset: ``<case>+triton`` and ``<case>+tilelang``, each provider called directly (whatever the
crossover table would pick), eager timed in every row, no torch.compile (the ``mhc`` family has
it). Only when TileLang is usable here (the family has no cases otherwise, so a machine without it
runs the other families unchanged). ``benchmarks/mhc_crossover.py`` is the lean variant that
writes the dispatcher's table.
"""
from __future__ import annotations

import functools
from typing import Sequence

from benchmarks.harness import PRESETS, BenchCase, register_family
from fusegraph import ops
from fusegraph.kernels.mhc_pre import inputs

SPECS = (
    ("mhc_pre+norm", "mhc_pre", functools.partial(inputs.mhc_pre_args, norm=True)),
    ("mhc_post", "mhc_post", inputs.mhc_post_args),
    ("mhc_post_pre+norm", "mhc_post_pre", functools.partial(inputs.mhc_post_pre_args, norm=True)),
)


def _usable() -> bool:
    from fusegraph.kernels.mhc_pre import tilelang as tl_pre

    return tl_pre.tilelang_missing() is None


@register_family("mhc_tilelang")
def mhc_tilelang_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    if not _usable():
        return []
    cases = []
    for size in sizes:
        D = PRESETS[size].hidden
        for T in tokens:
            for name, op_name, make in SPECS:
                op = ops.get(op_name)
                for provider in ("triton", "tilelang"):
                    cases.append(BenchCase(
                        name=f"{name}+{provider}", op=op_name, T=T, size=size,
                        make_inputs=lambda T_, device, _make=make, _D=D: _make(T_, _D, device=device),
                        eager=op.reference, fused=op.providers[provider].impl, compile=False))
    return cases
