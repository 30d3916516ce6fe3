"""mhc_post: the Triton provider against an fp64 run of the reference, gates, dispatch; the GPU
correctness case runs for every GPU provider (Triton, TileLang: ``-k tilelang`` selects the latter)."""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_post.reference import mhc_post, mhc_post_math
from fusegraph.kernels.mhc_post.triton import supports
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.testing import poisoned_outputs, rel_l2

interpreter = pytest.mark.skipif(not (tc.HAS_TRITON and tc.interpreting()),
                                 reason="CPU Triton cases need TRITON_INTERPRET=1")
BF16_TOL = 1e-2


def run_provider(args: tuple, provider: str):
    """``provider`` through torch.ops (forced with ``ops.prefer``, asserting the selection), outputs poisoned."""
    if provider == "triton":
        with ops.prefer({"mhc_post": ["triton"]}):  # whatever the crossover table says
            return run_triton(args, dispatch=True)
    from fusegraph.kernels.mhc_pre import tilelang as tl_pre

    if tl_pre.tilelang_missing():
        pytest.skip(tl_pre.tilelang_missing())
    with tl_pre.kernels().poisoned_outputs() as made, ops.prefer({"mhc_post": [provider]}):
        assert mhc_post.select(targets.of_device(args[1].device), args).provider == provider
        out = torch.ops.fusegraph.mhc_post(*args)
    assert made
    return out


def run_triton(args: tuple, dispatch: bool = False, **overrides):
    """The Triton provider on NaN-poisoned outputs; ``dispatch``: through torch.ops (asserting it selects triton)."""
    from fusegraph.kernels.mhc_pre import triton_kernels

    with poisoned_outputs() as made:
        if overrides:
            out = triton_kernels.mhc_post_forward(*args, **overrides)
        elif dispatch:
            assert mhc_post.select(targets.of_device(args[1].device), args).provider == "triton"
            out = torch.ops.fusegraph.mhc_post(*args)
        else:
            out = mhc_post.providers["triton"].impl(*args)
    assert made
    return out


def check(args: tuple, out: torch.Tensor) -> None:
    expected = mhc_post_math(*args, acc_dtype=torch.float64)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all(), "unwritten (NaN) elements"
    err = rel_l2(out, expected)
    assert err < BF16_TOL, err
    # fp32 math + one RNE rounding, like the fp32 reference: at most rare 1-ulp differences
    assert rel_l2(out, mhc_post.reference(*args)) < 1e-3


@interpreter
@pytest.mark.parametrize("T,D", [(1, 48), (5, 80), (65, 48)])
def test_triton_matches_fp64_reference(T, D):
    args = inputs.mhc_post_args(T, D, seed=T)
    check(args, run_triton(args))


@interpreter
def test_split_remainder():
    args = inputs.mhc_post_args(3, 80, seed=4)  # 80 columns in 256-wide blocks: one masked block
    check(args, run_triton(args, n_splits=1))
    args = inputs.mhc_post_args(2, 1536 // 4, seed=5)  # 384 columns: 2 blocks of 256 (last one partial)
    check(args, run_triton(args, n_splits=2))


@interpreter
def test_comb_is_transposed():
    # comb[j, k] routes source stream j into output stream k: a permutation makes it visible
    T, D = 2, 48
    f, residual, post, _ = inputs.mhc_post_args(T, D)
    perm = torch.zeros(T, 4, 4)
    perm[:, 0, 1] = perm[:, 1, 2] = perm[:, 2, 3] = perm[:, 3, 0] = 1.0  # j -> k = j + 1
    out = run_triton((f, residual, torch.zeros_like(post), perm))
    assert torch.equal(out[:, 1], residual[:, 0]) and torch.equal(out[:, 0], residual[:, 3])


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.mhc_post_args(3, 48, seed=2)
    assert torch.equal(run_triton(args, dispatch=True), run_triton(args))


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
    args = list(inputs.mhc_post_args(2, 48))
    args[index] = value
    reason = supports(*args)
    assert isinstance(reason, str) and needle in reason, reason
    assert supports(*inputs.mhc_post_args(2, 48)) is None


def test_torch_op_on_cpu_equals_reference():
    args = inputs.mhc_post_args(6, 48, seed=11)
    with ops.prefer({"mhc_post": ["torch"]}):
        got = torch.ops.fusegraph.mhc_post(*args)
    assert torch.equal(got, mhc_post.reference(*args))
    check(args, got)


@pytest.mark.parametrize("D", [4096, 7168], ids=["flash", "pro"])
@pytest.mark.parametrize("T", [1, 7, 63, 64, 333, 4096])
@pytest.mark.parametrize("provider", ["triton", "tilelang"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_fp64_reference(T, D, provider):
    args = inputs.mhc_post_args(T, D, device="cuda", seed=T)
    check(args, run_provider(args, provider))
