"""hc_head: the Triton provider against an fp64 run of the reference, gates, dispatch."""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels.hc_head.reference import hc_head, hc_head_math
from fusegraph.kernels.hc_head.triton import supports
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.testing import (BF16_TOL, assert_outputs_close, assert_rejected, gpu_cases,
                                               gpu_other_path_cases, interpreter, rel_l2, run_triton)


def check(args: tuple, out: torch.Tensor) -> None:
    assert_outputs_close((out,), (hc_head_math(*args, acc_dtype=torch.float64),), (BF16_TOL,), ("out",))
    assert out.dtype == torch.bfloat16


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
@pytest.mark.parametrize("T,D,norm", [(1, 48, True), (5, 80, False), (19, 256, True), (33, 48, False)])
def test_triton_matches_fp64_reference(T, D, norm, path):
    args = inputs.hc_head_args(T, D, norm=norm, seed=T)
    out = run_triton(hc_head, args, path=path)
    check(args, out)
    assert rel_l2(out, hc_head.reference(*args)) < 1e-3


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
def test_split_remainder_and_chunked_rows(path):
    args = inputs.hc_head_args(3, 80, norm=True, seed=4)
    check(args, run_triton(hc_head, args, n_splits=3, max_block_d=32, path=path))


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.hc_head_args(3, 48, norm=True, seed=2)
    assert torch.equal(run_triton(hc_head, args, dispatch=True), run_triton(hc_head, args))


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
    assert_rejected(supports, inputs.hc_head_args(2, 48), index, value, needle)


def test_torch_op_on_cpu_equals_reference():
    args = inputs.hc_head_args(6, 48, norm=True, seed=11)
    with ops.prefer({"hc_head": ["torch"]}):
        got = torch.ops.fusegraph.hc_head(*args)
    assert torch.equal(got, hc_head.reference(*args))
    check(args, got)


@gpu_cases([1, 7, 32, 333, 4096], norm=True)
def test_gpu_matches_fp64_reference(T, D, norm):
    args = inputs.hc_head_args(T, D, device="cuda", norm=norm, seed=T)
    check(args, run_triton(hc_head, args, dispatch=True))


@gpu_other_path_cases
def test_gpu_other_path_matches_fp64_reference(T, path):
    args = inputs.hc_head_args(T, 4096, device="cuda", norm=True, seed=T + 1)
    check(args, run_triton(hc_head, args, path=path))
