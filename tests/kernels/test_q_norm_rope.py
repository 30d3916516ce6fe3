"""q_norm_rope: the Triton provider against the torch reference and a float64 oracle.

CPU cases run the kernel under TRITON_INTERPRET=1 at small sizes (a few programs each); GPU cases
(``-m gpu``) use the DSV4 sizes (H = 64 / 128 heads of 512).
"""
import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.q_norm_rope import triton as qt
from fusegraph.kernels.q_norm_rope.reference import q_norm_rope_math

ON_GPU = torch.cuda.is_available() and not tc.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernel = pytest.mark.skipif(not (tc.interpreting() or ON_GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
EPS = 1e-6
OP = ops.get("q_norm_rope")


def make_inputs(T, H, DH, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(T, H, DH, generator=g) * 3 + 0.5).to(torch.bfloat16)
    angle = torch.rand(T, 32, generator=g) * 6.3
    return q.to(device), angle.cos().to(device), angle.sin().to(device)


def rel_l2(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def assert_bf16_close(actual, expected):
    """Equal but for rare one-ulp roundings (another fp32 summation order, a GPU rsqrt); RoPE can turn
    an ulp of its inputs into a larger relative error of a small output, hence the per-head term."""
    expected = expected.float()
    diff = (actual.float() - expected).abs()
    head_rms = expected.pow(2).mean(-1, keepdim=True).sqrt()
    assert bool((diff <= (expected.abs() + head_rms) * 2**-7).all()), f"max diff {diff.max().item()}"
    assert (diff > 0).float().mean().item() <= 1e-2


def check(q, cos, sin, out):
    expected = OP.reference(q, cos, sin, EPS)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert bool(torch.isfinite(out.float()).all()), "an output element was not written"
    assert_bf16_close(out, expected)
    assert rel_l2(out, q_norm_rope_math(q, cos, sin, EPS, torch.float64)) < 1e-2


@needs_kernel
@pytest.mark.parametrize("T,H,DH,heads", [(1, 1, 512, 1), (3, 5, 512, 1), (3, 5, 512, 4), (2, 3, 128, 2)])
def test_matches_reference(T, H, DH, heads, monkeypatch):
    monkeypatch.setattr(qt, "heads_per_program", lambda *_: heads)
    q, cos, sin = make_inputs(T, H, DH)
    out = torch.full_like(q, float("nan"))
    qt.launch(q, cos, sin, EPS, out)
    check(q, cos, sin, out)


@needs_kernel
def test_strided_heads_and_rows():
    """q as a per-head slice of a wider tensor (head stride 2*Dh), cos/sin as views with row stride 64."""
    wide, cos, sin = make_inputs(2, 3, 1024, seed=1)
    q = wide[..., :512]
    table = torch.cat([cos, sin], 1)
    out = OP.providers["triton"].impl(q, table[:, :32], table[:, 32:], EPS)
    check(q, table[:, :32], table[:, 32:], out)


@needs_kernel
def test_empty_batch():
    q, cos, sin = make_inputs(0, 4, 512)
    out = OP.providers["triton"].impl(q, cos, sin, EPS)
    assert out.shape == (0, 4, 512)


@needs_kernel
def test_dispatch_through_torch_ops():
    q, cos, sin = make_inputs(2, 2, 512, seed=2)
    assert OP.select(targets.of_device(q.device), (q, cos, sin, EPS)).provider == "triton"
    out = torch.ops.fusegraph.q_norm_rope(q, cos, sin, EPS)
    check(q, cos, sin, out)


def test_supports_args_rejections():
    q, cos, sin = make_inputs(2, 2, 512, device="cpu")
    gate = OP.providers["triton"].supports_args
    assert gate(q, cos, sin, EPS) is None
    assert "bf16" in gate(q.float(), cos, sin, EPS)
    assert "contiguous" in gate(q.transpose(1, 2).contiguous().transpose(1, 2), cos, sin, EPS)
    assert "head dim" in gate(q[..., :30], cos, sin, EPS)
    assert "cos" in gate(q, cos[:1], sin, EPS)
    assert "sin" in gate(q, cos, sin.double(), EPS)


def test_reference_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q, cos, sin = torch.empty(3, 2, 512, dtype=torch.bfloat16), torch.empty(3, 32), torch.empty(3, 32)
        out = torch.ops.fusegraph.q_norm_rope(q, cos, sin, EPS)
    assert out.shape == (3, 2, 512) and out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("T,H", [(1, 64), (33, 128), (4096, 64), (2048, 128)])
def test_gpu_real_sizes(T, H):
    q, cos, sin = make_inputs(T, H, 512, seed=T + H)
    out = torch.full_like(q, float("nan"))
    qt.launch(q, cos, sin, EPS, out)
    check(q, cos, sin, out)
    check(q, cos, sin, torch.ops.fusegraph.q_norm_rope(q, cos, sin, EPS))
