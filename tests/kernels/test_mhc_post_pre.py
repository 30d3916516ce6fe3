"""mhc_post_pre: the fused Triton provider against fp64 runs of mhc_post then mhc_pre, gates, dispatch.

The pre half is checked on the provider's OWN new residual: a 1-ulp bf16 difference in the new
residual is legitimate, and the mixes are a function of the residual actually produced.
"""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels.mhc_post.reference import mhc_post_math
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_post_pre.triton import supports
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.reference import mhc_pre_math
from fusegraph.kernels.mhc_pre.testing import (assert_outputs_close, gpu_cases, gpu_other_path_cases, interpreter,
                                               rel_l2, run_provider, run_triton)

TOLS = (1e-2, 1e-2, 1e-3, 1e-3)  # new_residual, layer_input (bf16); post, comb (fp32, TF32 GEMM on GPU)


def check(args: tuple, outs: tuple) -> None:
    new_residual = outs[0]
    expected = (mhc_post_math(*args[:4], acc_dtype=torch.float64),) + mhc_pre_math(
        new_residual, *args[4:], acc_dtype=torch.float64)
    assert_outputs_close(outs, expected, TOLS, ("new_residual", "layer_input", "post", "comb"))
    assert new_residual.dtype == outs[1].dtype == torch.bfloat16


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
@pytest.mark.parametrize("T,D,norm", [(1, 48, True), (5, 80, False), (19, 256, True)])
def test_triton_matches_fp64_reference(T, D, norm, path):
    args = inputs.mhc_post_pre_args(T, D, norm=norm, seed=T)
    check(args, run_triton(mhc_post_pre, args, path=path))


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
def test_split_remainder_and_chunked_rows(path):
    # token: 5 column blocks of 32 over 3 splits; stream: 10 k-blocks of the next pre over 3 splits
    args = inputs.mhc_post_pre_args(3, 160, norm=True, seed=2)
    check(args, run_triton(mhc_post_pre, args, n_splits=3, max_block_d=64, path=path))


@interpreter
@pytest.mark.parametrize("path", ["token", "stream"])
def test_equals_composition_of_the_two_references(path):
    args = inputs.mhc_post_pre_args(4, 64, norm=True, seed=6)
    outs = run_triton(mhc_post_pre, args, path=path)
    ref = mhc_post_pre.reference(*args)
    assert rel_l2(outs[0], ref[0]) < 1e-3 and rel_l2(outs[1], ref[1]) < 1e-3
    assert rel_l2(outs[2], ref[2]) < 1e-5 and rel_l2(outs[3], ref[3]) < 1e-5


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.mhc_post_pre_args(2, 48, norm=True, seed=2)
    for a, b in zip(run_triton(mhc_post_pre, args, dispatch=True), run_triton(mhc_post_pre, args)):
        assert torch.equal(a, b)


@interpreter
def test_zero_tokens():
    outs = mhc_post_pre.providers["triton"].impl(*inputs.mhc_post_pre_args(0, 48, norm=True))
    assert [tuple(o.shape) for o in outs] == [(0, 4, 48), (0, 48), (0, 4), (0, 4, 4)]


def test_supports_rejects_with_reason():
    good = inputs.mhc_post_pre_args(2, 48, norm=True)
    assert supports(*good) is None
    bad_fn = good[:4] + (torch.zeros(24, 10),) + good[5:]
    assert "fn has shape" in supports(*bad_fn)
    bad_post = good[:2] + (torch.zeros(3, 4),) + good[3:]
    assert "post has shape" in supports(*bad_post)


def test_torch_op_on_cpu_equals_reference():
    args = inputs.mhc_post_pre_args(5, 48, norm=False, seed=3)
    with ops.prefer({"mhc_post_pre": ["torch"]}):
        got = torch.ops.fusegraph.mhc_post_pre(*args)
    for g, e in zip(got, mhc_post_pre.reference(*args)):
        assert torch.equal(g, e)
    check(args, got)


@gpu_cases([1, 7, 32, 333, 4096], norm=True, providers=True)
def test_gpu_matches_fp64_reference(T, D, norm, provider):
    args = inputs.mhc_post_pre_args(T, D, device="cuda", norm=norm, seed=T)
    check(args, run_provider(mhc_post_pre, args, provider))


@gpu_other_path_cases
def test_gpu_other_path_matches_fp64_reference(T, path):
    args = inputs.mhc_post_pre_args(T, 4096, device="cuda", norm=True, seed=T + 1)
    check(args, run_triton(mhc_post_pre, args, path=path))
