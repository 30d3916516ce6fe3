"""Test helpers for the mHC providers (imported by tests only; they need pytest).

* ``rel_l2(actual, expected)``: ``||a - e|| / ||e||`` in float64 (the tests' error metric).
* ``poisoned_outputs()``: while active, every output and workspace the mHC Triton launchers
  allocate is filled with NaN first, so a test sees any element a kernel failed to write.
* ``assert_outputs_close(outs, expected, tols, names)``: shapes, every element written (finite),
  relative L2 error under each tolerance.
* ``check_mhc_pre(args, outs)``: mhc_pre's outputs against an fp64 run of the reference.
* ``run_triton(op, args, ...)`` / ``run_provider(op, args, provider)``: an op's provider on
  poisoned outputs, directly or through ``torch.ops`` (asserting what dispatch selected).
* ``assert_pdl_off_equals_on`` / ``replay_on_new_input``: the GPU launch checks (PDL switch,
  CUDA-graph capture and replay).
* Marks: ``interpreter`` (CPU Triton cases), ``gpu_test``, and the GPU case grids shared by the
  op test files (``gpu_cases``, ``gpu_other_path_cases``).
* ``assert_rejected(supports, good_args, index, value, needle)``: an argument gate's reason.
"""
from __future__ import annotations

from typing import Callable, ContextManager, Sequence

import pytest
import torch
from torch import Tensor

from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.mhc_pre.reference import mhc_pre_math

BF16_TOL = 1e-2  # bf16 outputs (one rounding, plus TF32 mixes on GPU)
FP32_TOL = 1e-3  # post / comb (TF32 GEMM on GPU)

interpreter = pytest.mark.skipif(not (tc.HAS_TRITON and tc.interpreting()),
                                 reason="CPU Triton cases need TRITON_INTERPRET=1")


def gpu_test(fn: Callable) -> Callable:
    """A GPU case: ``-m gpu`` selects it; skipped without a CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(fn))


def gpu_cases(tokens: Sequence[int], norm: bool = False, providers: bool = False) -> Callable[[Callable], Callable]:
    """A GPU correctness test over the DSV4 hidden sizes (``D``: flash, pro) and ``tokens`` (``T``);
    with ``norm`` also with and without the fused RMSNorm, with ``providers`` for Triton and TileLang."""
    def mark(fn: Callable) -> Callable:
        fn = gpu_test(fn)
        if providers:
            fn = pytest.mark.parametrize("provider", ["triton", "tilelang"])(fn)
        if norm:
            fn = pytest.mark.parametrize("norm", [True, False], ids=["norm", "nonorm"])(fn)
        fn = pytest.mark.parametrize("T", list(tokens))(fn)
        return pytest.mark.parametrize("D", [4096, 7168], ids=["flash", "pro"])(fn)
    return mark


def gpu_other_path_cases(fn: Callable) -> Callable:
    """A GPU test of each Triton implementation (``path``) at token counts the dispatch gives to the other."""
    return pytest.mark.parametrize("T,path", [(1, "token"), (7, "stream"), (32, "stream"), (333, "token")])(
        gpu_test(fn))


def rel_l2(actual: Tensor, expected: Tensor) -> float:
    e = expected.detach().to(torch.float64)
    a = actual.detach().to(device=e.device, dtype=torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(e.shape)}")
    if e.numel() == 0:
        return 0.0
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_outputs_close(outs: Sequence[Tensor], expected: Sequence[Tensor], tols: Sequence[float],
                         names: Sequence[str]) -> None:
    for name, out, exp, tol in zip(names, outs, expected, tols, strict=True):
        assert out.shape == exp.shape, name
        assert torch.isfinite(out).all(), f"{name}: unwritten (NaN) elements"
        err = rel_l2(out, exp)
        assert err < tol, f"{name}: rel L2 {err:.3g} >= {tol}"


def assert_rejected(supports: Callable, good_args: tuple, index: int, value, needle: str) -> None:
    """``supports`` accepts ``good_args`` and, with argument ``index`` replaced by ``value``, gives a
    reason containing ``needle``."""
    args = list(good_args)
    args[index] = value
    reason = supports(*args)
    assert isinstance(reason, str) and needle in reason, reason
    assert supports(*good_args) is None


def check_mhc_pre(args: tuple, outs: tuple) -> None:
    assert_outputs_close(outs, mhc_pre_math(*args, acc_dtype=torch.float64), (BF16_TOL, FP32_TOL, FP32_TOL),
                         ("layer_input", "post", "comb"))
    assert outs[0].dtype == torch.bfloat16 and outs[1].dtype == outs[2].dtype == torch.float32


def poisoned_outputs() -> ContextManager[list[Tensor]]:
    """Make ``triton_kernels.empty`` return NaN-filled tensors; yields the list of them."""
    from fusegraph.kernels.mhc_pre import host, triton_kernels

    return host.poisoned_empty(triton_kernels)


def _call_op(op: ops.FusedOp, args: tuple, provider: str):
    """``op`` through ``torch.ops.fusegraph``, asserting that dispatch selects ``provider``."""
    sel = op.select(targets.of_device(args[0].device), args)
    assert sel.provider == provider, sel
    return getattr(torch.ops.fusegraph, op.name)(*args)


def run_triton(op: ops.FusedOp, args: tuple, dispatch: bool = False, **overrides):
    """``op``'s Triton provider on NaN-poisoned outputs: with ``overrides``,
    ``triton_kernels.<op>_forward(*args, **overrides)``; with ``dispatch``, through torch.ops
    (asserting it selects triton); else the provider's function."""
    from fusegraph.kernels.mhc_pre import triton_kernels

    with poisoned_outputs() as made:
        if overrides:
            out = getattr(triton_kernels, f"{op.name}_forward")(*args, **overrides)
        elif dispatch:
            out = _call_op(op, args, "triton")
        else:
            out = op.providers["triton"].impl(*args)
    assert made, "the launcher allocated nothing: poisoning did not apply"
    return out


def run_provider(op: ops.FusedOp, args: tuple, provider: str):
    """``provider`` through torch.ops (forced with ``ops.prefer``, asserting the selection), outputs
    poisoned; skips when TileLang is missing."""
    if provider == "triton":
        with ops.prefer({op.name: ["triton"]}):  # whatever the crossover table says
            return run_triton(op, args, dispatch=True)
    from fusegraph.kernels.mhc_pre import tilelang as tl_pre

    if tl_pre.tilelang_missing():
        pytest.skip(tl_pre.tilelang_missing())
    with tl_pre.kernels().poisoned_outputs() as made, ops.prefer({op.name: [provider]}):
        out = _call_op(op, args, provider)
    assert made, "the launcher allocated nothing: poisoning did not apply"
    return out


def assert_pdl_off_equals_on(forward: Callable, args: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """``forward(*args)`` gives the same bits with PDL on and with ``FUSEGRAPH_PDL=0``."""
    on = forward(*args)
    monkeypatch.setenv("FUSEGRAPH_PDL", "0")
    off = forward(*args)
    monkeypatch.delenv("FUSEGRAPH_PDL")
    for a, b in zip(on, off, strict=True):
        assert torch.equal(a, b)


def replay_on_new_input(forward: Callable, args: tuple, index: int, fresh: Tensor):
    """Capture ``forward(*args)`` in a CUDA graph, with ``args[index]`` in a buffer of its own;
    then write ``fresh`` into that buffer and replay. Returns the captured outputs (holding the
    replay's results)."""
    captured_input = args[index].clone()
    call_args = args[:index] + (captured_input,) + args[index + 1:]
    forward(*call_args)  # warm-up outside the capture (compilation, workspaces)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward(*call_args)
    captured_input.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    return captured
