"""hc_head: the Triton provider against an fp64 run of the reference, gates, dispatch."""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.hc_head.reference import hc_head, hc_head_math
from fusegraph.kernels.hc_head.triton import supports
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.testing import poisoned_outputs, rel_l2

interpreter = pytest.mark.skipif(not (tc.HAS_TRITON and tc.interpreting()),
                                 reason="CPU Triton cases need TRITON_INTERPRET=1")
BF16_TOL = 1e-2


def run_triton(args: tuple, dispatch: bool = False, **overrides):
    """The Triton provider on NaN-poisoned outputs; ``dispatch``: through torch.ops (asserting it selects triton)."""
    from fusegraph.kernels.mhc_pre import triton_kernels

    with poisoned_outputs() as made:
        if overrides:
            out = triton_kernels.hc_head_forward(*args, **overrides)
        elif dispatch:
            assert hc_head.select(targets.of_device(args[0].device), args).provider == "triton"
            out = torch.ops.fusegraph.hc_head(*args)
        else:
            out = hc_head.providers["triton"].impl(*args)
    assert made
    return out


def check(args: tuple, out: torch.Tensor) -> None:
    expected = hc_head_math(*args, acc_dtype=torch.float64)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all(), "unwritten (NaN) elements"
    err = rel_l2(out, expected)
    assert err < BF16_TOL, err


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
@pytest.mark.parametrize("T,D,norm", [(1, 48, True), (5, 80, False), (19, 256, True), (33, 48, False)])
def test_triton_matches_fp64_reference(T, D, norm, path):
    args = inputs.hc_head_args(T, D, norm=norm, seed=T)
    out = run_triton(args, path=path)
    check(args, out)
    assert rel_l2(out, hc_head.reference(*args)) < 1e-3


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
def test_split_remainder_and_chunked_rows(path):
    args = inputs.hc_head_args(3, 80, norm=True, seed=4)
    check(args, run_triton(args, n_splits=3, max_block_d=32, path=path))


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.hc_head_args(3, 48, norm=True, seed=2)
    assert torch.equal(run_triton(args, dispatch=True), run_triton(args))


@interpreter
def test_zero_tokens():
    out = hc_head.providers["triton"].impl(*inputs.hc_head_args(0, 48))
    assert out.shape == (0, 48) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("index,value,needle", [
    (0, torch.zeros(2, 4, 24, dtype=torch.bfloat16), "multiple of 16"),
    (1, torch.zeros(24, 192), "fn has shape"),
    (2, torch.zeros(0), "scale"),
    (3, torch.zeros(24), "base has shape"),
    (4, torch.ones(3), "norm_weight"),
])
def test_supports_rejects_with_reason(index, value, needle):
    args = list(inputs.hc_head_args(2, 48))
    args[index] = value
    reason = supports(*args)
    assert isinstance(reason, str) and needle in reason, reason
    assert supports(*inputs.hc_head_args(2, 48)) is None


def test_torch_op_on_cpu_equals_reference():
    args = inputs.hc_head_args(6, 48, norm=True, seed=11)
    with ops.prefer({"hc_head": ["torch"]}):
        got = torch.ops.fusegraph.hc_head(*args)
    assert torch.equal(got, hc_head.reference(*args))
    check(args, got)


@pytest.mark.parametrize("D", [4096, 7168], ids=["flash", "pro"])
@pytest.mark.parametrize("T", [1, 7, 32, 333, 4096])
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "nonorm"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_fp64_reference(T, D, norm):
    args = inputs.hc_head_args(T, D, device="cuda", norm=norm, seed=T)
    check(args, run_triton(args, dispatch=True))


@pytest.mark.parametrize("T,path", [(1, "token"), (7, "stream"), (32, "stream"), (333, "token")])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_other_path_matches_fp64_reference(T, path):
    """Each implementation at sizes the dispatch gives to the other one."""
    args = inputs.hc_head_args(T, 4096, device="cuda", norm=True, seed=T + 1)
    check(args, run_triton(args, path=path))
