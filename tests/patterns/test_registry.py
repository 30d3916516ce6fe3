"""Every pattern is consistent with its fused op: the replacement consumes every parameter."""
from __future__ import annotations

import inspect
import typing

import pytest
import torch

from fusegraph import ops
from fusegraph.patterns import all_compositions, all_patterns

PATTERNS = all_patterns()


def test_pattern_names_are_unique_and_ops_exist():
    names = [p.name for p in PATTERNS] + [c.name for c in all_compositions()]
    assert len(names) == len(set(names))
    for p in PATTERNS:
        assert p.op in ops.all_ops(), p.name
    for c in all_compositions():
        assert {c.first, c.second, c.op} <= set(ops.all_ops()), c.name


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_every_op_parameter_is_bound_or_optional(pattern):
    """A parameter the pattern neither binds nor sets must be Optional (passed as None), so no
    pattern argument is silently dropped by the replacement."""
    op = ops.get(pattern.op)
    hints = typing.get_type_hints(op.reference)
    for name in op.signature.parameters:
        if name in pattern.inputs or name in pattern.literals:
            continue
        assert type(None) in typing.get_args(hints[name]), f"{pattern.name}: {name} is neither bound nor Optional"
    unknown = (set(pattern.inputs) | set(pattern.literals)) - set(op.signature.parameters)
    assert not unknown, f"{pattern.name} binds parameters {unknown} the op does not take"
    assert pattern.seed in pattern.inputs
    for m in pattern.mutates:
        assert m in op.mutates_args, f"{pattern.name} declares {m} mutated but the op does not"


@pytest.mark.parametrize("composition", all_compositions(), ids=lambda c: c.name)
def test_composition_parameters_are_the_union(composition):
    first, second, op = (ops.get(n) for n in (composition.first, composition.second, composition.op))
    union = [p for p in first.signature.parameters] + [p for p in second.signature.parameters
                                                       if p not in composition.link]
    assert set(op.signature.parameters) == set(union)


def test_plain_variants_leave_the_norm_out():
    by_name = {p.name: p for p in PATTERNS}
    assert "norm_weight" in by_name["mhc_pre_norm"].inputs and "norm_weight" not in by_name["mhc_pre"].inputs
    assert by_name["mhc_pre_norm"].priority > by_name["mhc_pre"].priority
    # literals are the released DSV4 constants
    assert by_name["mhc_pre_norm"].literals["sinkhorn_iters"] == 20
    assert by_name["mhc_pre_norm"].literals["post_mult"] == 2.0
    assert all(v == 1e-6 for k, v in by_name["mhc_pre_norm"].literals.items() if k.endswith("eps"))
