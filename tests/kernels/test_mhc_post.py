"""mhc_post: the Triton provider against an fp64 run of the reference, gates, dispatch; the GPU
correctness case runs for every GPU provider (Triton, TileLang: ``-k tilelang`` selects the latter)."""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels.mhc_post.reference import mhc_post, mhc_post_math
from fusegraph.kernels.mhc_post.triton import supports
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.testing import (BF16_TOL, assert_outputs_close, assert_rejected, gpu_cases,
                                               interpreter, rel_l2, run_provider, run_triton)


def check(args: tuple, out: torch.Tensor) -> None:
    assert_outputs_close((out,), (mhc_post_math(*args, acc_dtype=torch.float64),), (BF16_TOL,), ("new_residual",))
    assert out.dtype == torch.bfloat16
    # fp32 math + one RNE rounding, like the fp32 reference: at most rare 1-ulp differences
    assert rel_l2(out, mhc_post.reference(*args)) < 1e-3


@interpreter
@pytest.mark.parametrize("T,D", [(1, 48), (5, 80), (65, 48)])
def test_triton_matches_fp64_reference(T, D):
    args = inputs.mhc_post_args(T, D, seed=T)
    check(args, run_triton(mhc_post, args))


@interpreter
def test_split_remainder():
    args = inputs.mhc_post_args(3, 80, seed=4)  # 80 columns in 256-wide blocks: one masked block
    check(args, run_triton(mhc_post, args, n_splits=1))
    args = inputs.mhc_post_args(2, 1536 // 4, seed=5)  # 384 columns: 2 blocks of 256 (last one partial)
    check(args, run_triton(mhc_post, args, n_splits=2))


@interpreter
def test_comb_is_transposed():
    # comb[j, k] routes source stream j into output stream k: a permutation makes it visible
    T, D = 2, 48
    f, residual, post, _ = inputs.mhc_post_args(T, D)
    perm = torch.zeros(T, 4, 4)
    perm[:, 0, 1] = perm[:, 1, 2] = perm[:, 2, 3] = perm[:, 3, 0] = 1.0  # j -> k = j + 1
    out = run_triton(mhc_post, (f, residual, torch.zeros_like(post), perm))
    assert torch.equal(out[:, 1], residual[:, 0]) and torch.equal(out[:, 0], residual[:, 3])


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.mhc_post_args(3, 48, seed=2)
    assert torch.equal(run_triton(mhc_post, args, dispatch=True), run_triton(mhc_post, args))


@interpreter
def test_zero_tokens():
    out = mhc_post.providers["triton"].impl(*inputs.mhc_post_args(0, 48))
    assert out.shape == (0, 4, 48) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("index,value,needle", [
    (0, torch.zeros(2, 40, dtype=torch.bfloat16), "f has shape"),
    (1, torch.zeros(2, 4, 40, dtype=torch.bfloat16), "multiple of 16"),
    (1, torch.zeros(2, 2, 48, dtype=torch.bfloat16), "C = 2"),
    (2, torch.zeros(2, 4, dtype=torch.float16), "post is torch.float16"),
    (3, torch.zeros(2, 16), "comb has shape"),
])
def test_supports_rejects_with_reason(index, value, needle):
    assert_rejected(supports, inputs.mhc_post_args(2, 48), index, value, needle)


def test_torch_op_on_cpu_equals_reference():
    args = inputs.mhc_post_args(6, 48, seed=11)
    with ops.prefer({"mhc_post": ["torch"]}):
        got = torch.ops.fusegraph.mhc_post(*args)
    assert torch.equal(got, mhc_post.reference(*args))
    check(args, got)


@gpu_cases([1, 7, 63, 64, 333, 4096], providers=True)
def test_gpu_matches_fp64_reference(T, D, provider):
    args = inputs.mhc_post_args(T, D, device="cuda", seed=T)
    check(args, run_provider(mhc_post, args, provider))
