"""kernels/_triton_common.py: PDL switch, provider targets, interpreter guards and fixes."""
from __future__ import annotations

import pytest
import torch

from fusegraph.kernels import _triton_common as tc

interpreter = pytest.mark.skipif(not (tc.HAS_TRITON and tc.interpreting()),
                                 reason="needs TRITON_INTERPRET=1")


def test_no_pdl_off_gpu():
    assert tc.pdl_enabled(torch.device("cpu")) is False
    assert tc.launch_kwargs(torch.device("cpu")) == {}


@pytest.mark.skipif(not tc.HAS_TRITON, reason="needs triton")
def test_pdl_by_target(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda0 = torch.device("cuda", 0)
    for target, expected in (("sm90", True), ("sm100", True), ("sm80", False), ("rocm", False)):
        monkeypatch.setattr(tc._targets, "of_device", lambda d, t=target: t)
        assert tc.pdl_enabled(cuda0) is expected, target
        assert tc.launch_kwargs(cuda0) == ({"launch_pdl": True} if expected else {})
    monkeypatch.setattr(tc._targets, "of_device", lambda d: "sm90")
    monkeypatch.setenv("FUSEGRAPH_PDL", "0")
    assert tc.pdl_enabled(cuda0) is False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FUSEGRAPH_PDL")
    assert tc.pdl_enabled(cuda0) is False


@pytest.mark.skipif(not tc.HAS_TRITON, reason="needs triton")
def test_triton_36_has_gdc():
    assert tc._has_gdc()


def test_provider_targets_follow_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "cpu" in tc.provider_targets() and "sm90" in tc.provider_targets()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert tc.provider_targets() == frozenset({"sm80", "sm90", "sm100", "rocm"})


def test_interpreter_size_gate():
    small = torch.zeros(100)
    assert tc.interpreter_too_large(small, None) is None
    big = torch.zeros(tc.INTERPRETER_MAX_ELEMENTS + 1)
    assert "interpreter" in tc.interpreter_too_large(big)
    assert tc.interpreter_too_large(torch.empty(big.shape, device="meta")) is None  # only CPU tensors count


def test_helpers():
    assert [tc.next_pow2(n) for n in (0, 1, 2, 3, 48, 4096, 7168)] == [1, 1, 2, 4, 64, 4096, 8192]
    assert tc.cdiv(7, 2) == 4 and tc.cdiv(0, 3) == 0
    assert tc.num_sms(torch.device("cpu")) >= 1
    assert tc.dot_precision(torch.device("cpu")) == "ieee"


@interpreter
def test_interpreter_runtime_loop_and_bf16_rounding():
    triton, tl = tc.triton, tc.tl

    @triton.jit
    def kernel(x_ptr, out_ptr, n):
        acc = tl.zeros((4,), dtype=tl.float32)
        for i in range(n):  # runtime trip count (numpy >= 2.4 broke this in the 3.6 interpreter)
            acc += tl.load(x_ptr + i * 4 + tl.arange(0, 4))
        tl.store(out_ptr + tl.arange(0, 4), acc.to(tl.bfloat16))

    x = torch.tensor([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -9, -(1.0 + 2 ** -7 + 2 ** -9)] * 3)
    out = torch.empty(4, dtype=torch.bfloat16)
    kernel[(1,)](x, out, 3)
    # round to nearest even, like the GPU and torch (the stock interpreter truncated)
    assert torch.equal(out, (x.view(3, 4).sum(0)).to(torch.bfloat16))
