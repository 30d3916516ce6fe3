"""Benchmark cases of the mHC family: mhc_pre (with and without the fused RMSNorm), mhc_post,
mhc_post_pre (+norm, as the model calls it) and hc_head (+final norm).

Inputs at realistic scales (``fusegraph.kernels.mhc_pre.inputs``). Goals (from the issue, stated
for an H200 under CUDA-graph replay):

* every mHC op at T <= 32: at most 8 us per call;
* mhc_pre and hc_head: at least 5x faster than torch.compile of the reference, at every T;
* T >= 4096: at least 80 % of the copy bandwidth for mhc_pre, mhc_post_pre and hc_head, each
  under a two-pass bytes model (``target_bytes``): mhc_pre / hc_head read the residual twice,
  write their output and read fn once; mhc_post_pre reads f and the residual, writes the new
  residual, reads it again, writes layer_input and reads fn once.
"""
from __future__ import annotations

import functools
from typing import Sequence

from benchmarks.harness import PRESETS, BenchCase, Goal, register_family
from fusegraph.kernels.hc_head.reference import hc_head
from fusegraph.kernels.mhc_post.reference import mhc_post
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.gates import HC_MULT, NUM_MIX
from fusegraph.kernels.mhc_pre.reference import mhc_pre

SMALL_T = 32
SMALL_T_MAX_US = 8.0
MIN_SPEEDUP_COMPILE = 5.0
PRE_NORM_MIN_PCT_COPY = 80.0


LARGE_T = 4096


def _pre_target_bytes(T: int, D: int, n_mix: int = NUM_MIX) -> int:
    """Two-pass mhc_pre / hc_head bytes: residual read twice, output written, fn read once."""
    return 2 * T * HC_MULT * D * 2 + T * D * 2 + n_mix * HC_MULT * D * 4


def _post_pre_target_bytes(T: int, D: int) -> int:
    """mhc_post_pre: f + residual read, new residual written and read again, layer_input written, fn read."""
    return T * D * 2 + 3 * T * HC_MULT * D * 2 + T * D * 2 + NUM_MIX * HC_MULT * D * 4


def _goals(name: str, T: int, size: str) -> tuple[Goal, ...]:
    goals = []
    if T <= SMALL_T:
        goals.append(Goal("max_us", SMALL_T_MAX_US))
    if name.startswith(("mhc_pre", "hc_head")):
        goals.append(Goal("min_speedup_compile", MIN_SPEEDUP_COMPILE))
    if T >= LARGE_T and name.startswith(("mhc_pre", "mhc_post_pre", "hc_head")):
        goals.append(Goal("min_pct_copy", PRE_NORM_MIN_PCT_COPY))
    return tuple(goals)


@register_family("mhc")
def mhc_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    cases = []
    for size in sizes:
        D = PRESETS[size].hidden
        for T in tokens:
            specs = [
                ("mhc_pre+norm", "mhc_pre", functools.partial(inputs.mhc_pre_args, D=D, norm=True),
                 mhc_pre.reference, _pre_target_bytes(T, D)),
                ("mhc_pre", "mhc_pre", functools.partial(inputs.mhc_pre_args, D=D, norm=False),
                 mhc_pre.reference, _pre_target_bytes(T, D)),
                ("mhc_post", "mhc_post", functools.partial(inputs.mhc_post_args, D=D), mhc_post.reference, None),
                ("mhc_post_pre+norm", "mhc_post_pre", functools.partial(inputs.mhc_post_pre_args, D=D, norm=True),
                 mhc_post_pre.reference, _post_pre_target_bytes(T, D)),
                ("hc_head+norm", "hc_head", functools.partial(inputs.hc_head_args, D=D, norm=True),
                 hc_head.reference, _pre_target_bytes(T, D, HC_MULT)),
            ]
            for name, op, make, eager, target in specs:
                cases.append(BenchCase(
                    name=name, op=op, T=T, size=size,
                    make_inputs=lambda T_, device, _make=make: _make(T_, device=device),
                    eager=eager, target_bytes=target, goals=_goals(name, T, size)))
    return cases
