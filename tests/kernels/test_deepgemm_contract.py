"""The DeepGEMM provider of mhc_pre / hc_head, on CPU against a stand-in ``deep_gemm`` module.

The stand-in implements ``tf32_hc_prenorm_gemm`` as spec 2.6 states it, in torch: it checks every
argument of the calling contract (dtypes, shapes, contiguity, N <= 32, N % 8 == 0, K % 64 == 0,
the split layout ``d [S, T, N]`` / ``sqr_sum [S, T]``), writes each split's partial over its own
contiguous k-block range (first ``nKB % S`` splits one block longer) and records the call. The
provider's finisher (a Triton kernel) runs under TRITON_INTERPRET=1; its outputs are compared with
an fp64 run of the reference, on NaN-poisoned buffers. When the real ``deep_gemm`` is absent the
provider must say so.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.hc_head.reference import hc_head_math
from fusegraph.kernels.mhc_pre import deepgemm, inputs
from fusegraph.kernels.mhc_pre.reference import mhc_pre_math
from fusegraph.kernels.mhc_pre.testing import poisoned_outputs, rel_l2

interpreter = pytest.mark.skipif(not (tc.HAS_TRITON and tc.interpreting()),
                                 reason="the finisher runs on CPU only under TRITON_INTERPRET=1")
MHC_PRE, HC_HEAD = ops.get("mhc_pre"), ops.get("hc_head")
BF16_TOL, FP32_TOL = 1e-2, 1e-4


class StandIn(types.ModuleType):
    """``deep_gemm`` as the spec describes it (torch, fp64 partials rounded to fp32), recording calls."""

    def __init__(self) -> None:
        super().__init__("deep_gemm")
        self.calls: list[dict] = []

    def tf32_hc_prenorm_gemm(self, a, b, d, sqr_sum, num_splits=None):
        m, k = a.shape
        n = b.shape[0]
        assert a.dtype == torch.bfloat16 and a.dim() == 2 and a.is_contiguous(), "a: bf16 [m, k], K-major"
        assert b.dtype == torch.float32 and b.shape == (n, k) and b.is_contiguous(), "b: fp32 [n, k], K-major"
        assert n <= 32 and n % 8 == 0 and k % 64 == 0, (n, k)
        S = num_splits or 1
        want_d, want_s = ((S, m, n), (S, m)) if num_splits is not None else ((m, n), (m,))
        assert tuple(d.shape) == want_d and d.dtype == torch.float32 and d.is_contiguous(), tuple(d.shape)
        assert tuple(sqr_sum.shape) == want_s and sqr_sum.dtype == torch.float32 and sqr_sum.is_contiguous()
        self.calls.append({"m": m, "n": n, "k": k, "num_splits": num_splits, "d": tuple(d.shape)})
        n_kb = k // 64
        q, rem = divmod(n_kb, S)
        x = a.double()
        begin = 0
        for s in range(S):
            end = begin + (q + (s < rem)) * 64
            part = x[:, begin:end]
            d.view(S, m, n)[s] = (part @ b[:, begin:end].double().T).float()
            sqr_sum.view(S, m)[s] = part.square().sum(-1).float()
            begin = end
        assert begin == k


@pytest.fixture
def stand_in(monkeypatch):
    module = StandIn()
    monkeypatch.setitem(sys.modules, "deep_gemm", module)
    return module


def run(forward, args, **kw):
    with poisoned_outputs() as made:
        outs = forward(*args, **kw)
    assert made, "nothing was allocated through the poisoning seam"
    return outs


def check_pre(args, outs):
    expected = mhc_pre_math(*args, acc_dtype=torch.float64)
    for name, out, exp, tol in zip(("layer_input", "post", "comb"), outs, expected, (BF16_TOL, FP32_TOL, FP32_TOL)):
        assert out.shape == exp.shape, name
        assert torch.isfinite(out).all(), f"{name}: unwritten (NaN) elements"
        assert rel_l2(out, exp) < tol, (name, rel_l2(out, exp))


# -- contract --------------------------------------------------------------------------------------
def test_split_rule_follows_the_engines():
    cpu = torch.device("cpu")  # tc.num_sms: 4 "SMs" off-GPU
    assert deepgemm.split_count(1, 16384, cpu) == 4
    assert deepgemm.split_count(300, 16384, cpu) == 1          # ceil(300/64) = 5 blocks > 4 SMs
    assert deepgemm.split_count(1, 512, cpu) == 2               # nKB // 4 = 2 caps it
    assert deepgemm.padded_rows(24) == 24 and deepgemm.padded_rows(4) == 8


@interpreter
@pytest.mark.parametrize("T,D,norm", [(1, 128, True), (5, 128, False), (9, 16, True)])
def test_mhc_pre_matches_reference(stand_in, T, D, norm):
    args = inputs.mhc_pre_args(T, D, norm=norm, seed=T)
    outs = run(MHC_PRE.providers["deepgemm"].impl, args)
    check_pre(args, outs)
    assert len(stand_in.calls) == 1
    call = stand_in.calls[0]
    S = deepgemm.split_count(T, 4 * D, torch.device("cpu"))
    assert call == {"m": T, "n": 24, "k": 4 * D, "num_splits": S, "d": (S, T, 24)}
    # fp32 reference (same roundings but summation order): close to it as well
    ref = MHC_PRE.reference(*args)
    assert rel_l2(outs[0], ref[0]) < 1e-2 and rel_l2(outs[2], ref[2]) < 1e-4


@interpreter
def test_forced_splits_with_remainder(stand_in):
    # K = 512 -> 8 k-blocks over 3 splits (3, 3, 2): the finisher must sum all three partial rows
    args = inputs.mhc_pre_args(3, 128, norm=True, seed=11)
    check_pre(args, run(deepgemm.mhc_pre_forward, args, n_splits=3))
    assert stand_in.calls[-1]["num_splits"] == 3 and stand_in.calls[-1]["d"] == (3, 3, 24)
    check_pre(args, run(deepgemm.mhc_pre_forward, args, n_splits=99))  # capped at nKB = 8
    assert stand_in.calls[-1]["num_splits"] == 8


@interpreter
@pytest.mark.parametrize("T,norm", [(1, True), (6, False)])
def test_hc_head_pads_fn_to_eight_rows(stand_in, T, norm):
    args = inputs.hc_head_args(T, 128, norm=norm, seed=T)
    out = run(HC_HEAD.providers["deepgemm"].impl, args)
    expected = hc_head_math(*args, acc_dtype=torch.float64)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, expected) < BF16_TOL
    assert stand_in.calls[-1]["n"] == 8


def test_zero_tokens_call_nothing(stand_in):
    args = inputs.mhc_pre_args(0, 64, norm=True)
    out, post, comb = MHC_PRE.providers["deepgemm"].impl(*args)
    assert out.shape == (0, 64) and post.shape == (0, 4) and comb.shape == (0, 4, 4)
    head = HC_HEAD.providers["deepgemm"].impl(*inputs.hc_head_args(0, 64))
    assert head.shape == (0, 64) and head.dtype == torch.bfloat16
    assert stand_in.calls == []


# -- availability and gates ---------------------------------------------------------------------------
def test_available_with_stand_in_and_dispatch_plan(stand_in):
    assert deepgemm.deep_gemm_missing() is None
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in inputs.mhc_pre_args(4, 64))
    provider = MHC_PRE.providers["deepgemm"]
    assert provider.why_not("sm90", meta, {}) is None
    assert "does not run on sm80" in provider.why_not("sm80", meta, {})
    # below Triton until measured faster
    assert provider.priority < MHC_PRE.providers["triton"].priority or deepgemm.MEASURED_FASTER
    if not deepgemm.MEASURED_FASTER:
        assert MHC_PRE.select("sm90", meta).provider != "deepgemm"


def test_stand_in_without_the_function_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", types.ModuleType("deep_gemm"))
    assert "no tf32_hc_prenorm_gemm" in deepgemm.deep_gemm_missing()


def test_absent_deep_gemm_is_reported(monkeypatch):
    monkeypatch.delitem(sys.modules, "deep_gemm", raising=False)
    monkeypatch.setattr(deepgemm, "_import_error", None)
    monkeypatch.setattr(sys, "path", [])  # nothing importable: as on a machine without deep_gemm
    reason = deepgemm.deep_gemm_missing()
    assert reason is not None and reason.startswith("deep_gemm not installed")
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in inputs.mhc_pre_args(2, 64))
    assert MHC_PRE.providers["deepgemm"].why_not("sm90", meta, {}).startswith("deep_gemm not installed")


def test_gates():
    args = list(inputs.mhc_pre_args(2, 64))
    assert deepgemm.supports_pre(*args) is None
    head = list(inputs.hc_head_args(2, 64))
    assert deepgemm.supports_head(*head) is None
    wide = inputs.mhc_pre_args(1, deepgemm.MAX_D + 16)
    assert "finisher" in deepgemm.supports_pre(*wide)
    bad = list(args)
    bad[0] = bad[0].float()
    assert "bfloat16" in deepgemm.supports_pre(*bad)


# -- GPU: the finisher compiled for the device (stand-in GEMM), and the real deep_gemm if installed ---------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or tc.interpreting(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("T,D", [(1, 4096), (37, 4096), (300, 7168)])
def test_finisher_on_gpu_with_stand_in(stand_in, T, D):
    args = inputs.mhc_pre_args(T, D, device="cuda", norm=True, seed=T)
    check_pre(args, run(deepgemm.mhc_pre_forward, args))
    head = inputs.hc_head_args(T, D, device="cuda", norm=True, seed=T)
    out = run(deepgemm.hc_head_forward, head)
    assert torch.isfinite(out).all() and rel_l2(out, hc_head_math(*head, acc_dtype=torch.float64)) < BF16_TOL


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("T,S", [(13, 1), (137, 16)])
def test_real_deep_gemm_keeps_the_contract(T, S):
    """When deep_gemm imports on the GPU machine: its partials sum like the stand-in's (TF32 tolerance)."""
    if deepgemm.deep_gemm_missing():
        pytest.skip(deepgemm.deep_gemm_missing())
    real = deepgemm.deep_gemm_module()
    g = torch.Generator(device="cuda").manual_seed(T)
    a = torch.randn(T, 7168, generator=g, device="cuda").bfloat16()
    b = torch.randn(24, 7168, generator=g, device="cuda") / 7168 ** 0.5
    d, sq = torch.full((S, T, 24), float("nan"), device="cuda"), torch.full((S, T), float("nan"), device="cuda")
    real.tf32_hc_prenorm_gemm(a, b, d, sq, num_splits=S)
    d_ref, sq_ref = torch.empty_like(d), torch.empty_like(sq)
    StandIn().tf32_hc_prenorm_gemm(a, b, d_ref, sq_ref, num_splits=S)
    assert torch.isfinite(d).all() and torch.isfinite(sq).all()
    assert rel_l2(d.sum(0), d_ref.sum(0)) < 1e-3 and rel_l2(sq.sum(0), sq_ref.sum(0)) < 1e-5
