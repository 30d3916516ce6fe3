"""mhc_pre: the Triton provider against an fp64 run of the reference, argument gates, dispatch.

CPU cases run the kernels through the Triton interpreter (``TRITON_INTERPRET=1``, as ``make test``
sets it) at tiny sizes; GPU cases (``-m gpu``) run the DSV4 flash/pro sizes, the shared correctness
case for every GPU provider (Triton, TileLang: ``-k tilelang`` selects the latter).
"""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre.reference import mhc_pre
from fusegraph.kernels.mhc_pre.testing import (assert_pdl_off_equals_on, check_mhc_pre, gpu_cases,
                                               gpu_other_path_cases, gpu_test, interpreter, rel_l2,
                                               replay_on_new_input, run_provider, run_triton)
from fusegraph.kernels.mhc_pre.triton import supports


# -- CPU (interpreter) ------------------------------------------------------------------------
PATHS = ["token", "stream"]  # triton_kernels.default_path: token for 2..64 tokens, stream otherwise


@interpreter
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,D,norm", [(1, 48, True), (5, 80, False), (19, 256, True), (33, 48, False)])
def test_triton_matches_fp64_reference(T, D, norm, path):
    args = inputs.mhc_pre_args(T, D, norm=norm, seed=T)
    check_mhc_pre(args, run_triton(mhc_pre, args, path=path))


@interpreter
@pytest.mark.parametrize("path", PATHS)
def test_split_remainder_and_chunked_rows(path):
    # K = 320 -> 5 k-blocks over 3 splits (2, 2, 1); rows walked in 32-wide chunks (two-pass norm)
    args = inputs.mhc_pre_args(3, 80, norm=True, seed=7)
    check_mhc_pre(args, run_triton(mhc_pre, args, n_splits=3, path=path))
    check_mhc_pre(args, run_triton(mhc_pre, args, max_block_d=32, path=path))
    args = inputs.mhc_pre_args(2, 80, norm=False, seed=8)
    check_mhc_pre(args, run_triton(mhc_pre, args, n_splits=5, max_block_d=16, path=path))


@interpreter
def test_stream_path_token_blocks_and_split_chunks():
    """Several token blocks, each finished by its last split; the finishing program reduces the
    splits in several chunks (``gemm_cfg`` with 32-token blocks and 6 splits of 1..2 k-blocks)."""
    from fusegraph.kernels.mhc_pre import triton_kernels as tk

    args = inputs.mhc_pre_args(40, 64, norm=True, seed=12)  # 2 token blocks of 32, the second partial
    cfg = tk.GemmConfig(block_m=32, n_splits=3, mma="ieee")
    assert tk.finish_plan(40, 32, 3, 32, cfg.num_warps).n_chunks == 1
    check_mhc_pre(args, run_triton(mhc_pre, args, gemm_cfg=cfg, path="stream"))
    tk.FINISH_REGS, saved = 1, tk.FINISH_REGS  # force one split per chunk: 3 chunks
    try:
        assert tk.finish_plan(40, 32, 3, 32, cfg.num_warps).n_chunks == 3
        check_mhc_pre(args, run_triton(mhc_pre, args, gemm_cfg=cfg, path="stream"))
    finally:
        tk.FINISH_REGS = saved


@interpreter
def test_split_tickets_are_reset():
    from fusegraph.kernels.mhc_pre import triton_kernels as tk

    args = inputs.mhc_pre_args(20, 48, norm=True, seed=13)
    first = run_triton(mhc_pre, args, n_splits=3, path="stream")
    assert int(tk.split_tickets(args[0].device, 1).abs().sum()) == 0, "a ticket was left non-zero"
    second = run_triton(mhc_pre, args, n_splits=3, path="stream")
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # deterministic: the splits are summed in a fixed order


@interpreter
@pytest.mark.parametrize("path", PATHS)
def test_triton_close_to_fp32_reference(path):
    args = inputs.mhc_pre_args(4, 64, norm=True, seed=3)
    outs = run_triton(mhc_pre, args, path=path)
    ref = mhc_pre.reference(*args)
    # same roundings as the reference (RNE bf16 in the interpreter, fp32 GEMM): near bitwise
    assert rel_l2(outs[0], ref[0]) < 1e-3
    assert rel_l2(outs[1], ref[1]) < 1e-5 and rel_l2(outs[2], ref[2]) < 1e-5


@interpreter
def test_zero_tokens_launch_nothing(monkeypatch):
    from fusegraph.kernels.mhc_pre import triton_kernels

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched for T = 0")

    for module in (triton_kernels, triton_kernels.tt):
        for name in ("_prenorm_gemm_kernel", "_collapse_kernel", "_split_fn_kernel", "_mix_finish_kernel"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, NoLaunch())
    args = inputs.mhc_pre_args(0, 48, norm=True)
    out, post, comb = mhc_pre.providers["triton"].impl(*args)
    assert out.shape == (0, 48) and out.dtype == torch.bfloat16
    assert post.shape == (0, 4) and comb.shape == (0, 4, 4)


# -- gates and dispatch -------------------------------------------------------------------------
def _bad(**changes) -> tuple:
    args = list(inputs.mhc_pre_args(2, 48, norm=True))
    names = ["residual", "fn", "scale", "base", "norm_weight"]
    for k, v in changes.items():
        args[names.index(k)] = v
    return tuple(args)


@pytest.mark.parametrize("changes,needle", [
    (dict(residual=torch.zeros(2, 3, 48, dtype=torch.bfloat16)), "C = 3"),
    (dict(residual=torch.zeros(2, 4, 48, dtype=torch.float16)), "bfloat16"),
    (dict(residual=torch.zeros(2, 4, 40, dtype=torch.bfloat16)), "multiple of 16"),
    (dict(residual=torch.zeros(2, 192, dtype=torch.bfloat16)), "[T, C, D]"),
    (dict(fn=torch.zeros(24, 100)), "fn has shape"),
    (dict(fn=torch.zeros(24, 192, dtype=torch.bfloat16)), "expected torch.float32"),
    (dict(scale=torch.zeros(2)), "scale"),
    (dict(norm_weight=torch.ones(47)), "norm_weight"),
])
def test_supports_rejects_with_reason(changes, needle):
    reason = supports(*_bad(**changes))
    assert isinstance(reason, str) and needle in reason, reason


def test_supports_accepts_contract_shapes():
    assert supports(*inputs.mhc_pre_args(3, 48, norm=True)) is None
    assert supports(*inputs.mhc_pre_args(3, 48, norm=False)) is None


def test_interpreter_rejects_large_cpu_calls():
    args = inputs.mhc_pre_args(64, 256, norm=False)
    assert "interpreter" in (supports(*args) or "")


@interpreter
def test_dispatch_selects_triton_for_small_cpu_calls():
    args = inputs.mhc_pre_args(3, 48, norm=True, seed=4)
    via_op = run_triton(mhc_pre, args, dispatch=True)
    direct = run_triton(mhc_pre, args)
    for a, b in zip(via_op, direct):
        assert torch.equal(a, b)


def test_rejected_call_falls_back_to_reference():
    args = _bad(residual=torch.randn(2, 4, 40).bfloat16(), fn=torch.randn(24, 160), norm_weight=torch.ones(40))
    sel = mhc_pre.select("sm90", args)
    assert sel.provider == "torch"
    assert any(r.provider == "triton" and "multiple of 16" in r.reason for r in sel.rejected)


def test_torch_op_on_cpu_equals_reference():
    args = inputs.mhc_pre_args(6, 48, norm=True, seed=11)
    expected = mhc_pre.reference(*args)
    with ops.prefer({"mhc_pre": ["torch"]}):
        got = torch.ops.fusegraph.mhc_pre(*args)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_reference_matches_fp64_and_is_fresh():
    args = inputs.mhc_pre_args(5, 64, norm=True, seed=5)
    outs = mhc_pre.reference(*args)
    check_mhc_pre(args, outs)
    assert all(o.data_ptr() != args[0].data_ptr() for o in outs)
    # comb is doubly stochastic up to eps (column sums 1 after the final column normalization)
    assert torch.allclose(outs[2].sum(-2), torch.ones(5, 4), atol=1e-4)


def test_norm_rounding_is_the_unfused_chain():
    args = inputs.mhc_pre_args(3, 64, norm=True, seed=9)
    plain = mhc_pre.reference(*args[:4], None, *args[5:])[0]
    w = args[4].float()
    v = plain.float()
    expected = (v * torch.rsqrt(v.square().mean(-1, keepdim=True) + args[7]) * w).to(torch.bfloat16)
    assert torch.equal(mhc_pre.reference(*args)[0], expected)


# -- GPU ------------------------------------------------------------------------------------------
@gpu_cases([1, 7, 32, 333, 4096], norm=True, providers=True)
def test_gpu_matches_fp64_reference(T, D, norm, provider):
    args = inputs.mhc_pre_args(T, D, device="cuda", norm=norm, seed=T)
    check_mhc_pre(args, run_provider(mhc_pre, args, provider))


@gpu_other_path_cases
def test_gpu_other_path_matches_fp64_reference(T, path):
    args = inputs.mhc_pre_args(T, 4096, device="cuda", norm=True, seed=T + 1)
    check_mhc_pre(args, run_triton(mhc_pre, args, path=path))


@gpu_test
def test_gpu_stream_path_is_deterministic():
    args = inputs.mhc_pre_args(4096, 4096, device="cuda", norm=True, seed=21)
    first = run_triton(mhc_pre, args, dispatch=True)
    for _ in range(2):
        for a, b in zip(first, run_triton(mhc_pre, args, dispatch=True)):
            assert torch.equal(a, b)


@gpu_test
@pytest.mark.parametrize("T", [1, 64, 300])  # stream (decode), token, stream (prepass + several blocks)
def test_gpu_pdl_off_equals_on_and_graph_replay(monkeypatch, T):
    from fusegraph.kernels.mhc_pre import triton_kernels

    args = inputs.mhc_pre_args(T, 4096, device="cuda", norm=True, seed=1)
    assert_pdl_off_equals_on(triton_kernels.mhc_pre_forward, args, monkeypatch)
    # capturable: replay on new residual values written into the captured input
    fresh = inputs.mhc_pre_args(T, 4096, device="cuda", norm=True, seed=2)[0]
    captured = replay_on_new_input(triton_kernels.mhc_pre_forward, args, 0, fresh)
    check_mhc_pre((fresh,) + args[1:], captured)
