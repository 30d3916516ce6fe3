"""kv_norm_rope_quant and the FP8 device helpers shared by the KV kernels.

The e4m3 / ue8m0 helpers are checked bit for bit against torch's float8_e4m3fn conversion and the
reference's exponent rule; the op's provider against the reference (FP8 values exact, or within
one e4m3 step on a GPU where the norm may round differently) and against a float64 oracle.
"""
import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _fp8
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.kv_norm_rope_quant import triton as kt
from fusegraph.kernels.kv_norm_rope_quant.reference import kv_norm_rope_math

ON_GPU = torch.cuda.is_available() and not tc.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernel = pytest.mark.skipif(not (tc.interpreting() or ON_GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
EPS, QUANT_EPS = 1e-6, 1e-4
OP = ops.get("kv_norm_rope_quant")
triton, tl = tc.triton, tc.tl


def make_inputs(T, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a spread of magnitudes per channel, so that tiles get different scales
    kv = (torch.randn(T, 512, generator=g) * torch.logspace(-2, 1, 512)[torch.randperm(512, generator=g)])
    weight = torch.rand(512, generator=g) + 0.5
    angle = torch.rand(T, 32, generator=g) * 6.3
    return kv.to(torch.bfloat16).to(device), weight.to(device), angle.cos().to(device), angle.sin().to(device)


def rel_l2(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def assert_fp8_values_close(actual, expected):
    """Quant-dequant values: exact under the interpreter; on a GPU within one e4m3 step on a few."""
    if tc.interpreting():  # bit for bit, signs of zeros included
        assert torch.equal(actual.view(torch.int16), expected.view(torch.int16))
        return
    assert_close(actual, expected, 2**-3)


def assert_close(actual, expected, rel):
    """Equal but for rare roundings one step apart (``rel``: a step relative to the value); RoPE can
    make an ulp of its inputs a larger relative error of a small output, hence the per-row term."""
    expected = expected.float()
    diff = (actual.float() - expected).abs()
    row_rms = expected.pow(2).mean(-1, keepdim=True).sqrt()
    assert bool((diff <= (expected.abs() + row_rms) * rel).all()), f"max diff {diff.max().item()}"
    assert (diff > 0).float().mean().item() <= 1e-2


# -- device helpers -----------------------------------------------------------------------------------
if tc.HAS_TRITON:
    @triton.jit
    def _e4m3_probe(x_ptr, value_ptr, byte_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        value, byte = kt.e4m3_round(tl.load(x_ptr + offs, mask=mask, other=0.0))
        tl.store(value_ptr + offs, value, mask=mask)
        tl.store(byte_ptr + offs, byte.to(tl.uint8), mask=mask)

    @triton.jit
    def _exponent_probe(amax_ptr, exp_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(exp_ptr + offs, kt.ue8m0_exponent(tl.load(amax_ptr + offs, mask=mask, other=1.0)), mask=mask)


def e4m3_probe_inputs():
    """Every e4m3 value, the midpoints between neighbours (ties) and one fp32 ulp around them, randoms."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    near = torch.cat([mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)])
    g = torch.Generator().manual_seed(5)
    rand = torch.exp2(torch.rand(4000, generator=g) * 20 - 12) * torch.sign(torch.randn(4000, generator=g))
    values = torch.cat([grid, -grid, near, -near, rand.clamp(-448, 448), torch.tensor([0.0, -0.0, 448.0, -448.0])])
    return values.float()


@needs_kernel
def test_e4m3_round_is_torch_rne():
    x = e4m3_probe_inputs().to(DEVICE)
    value, byte = torch.empty_like(x), torch.empty(x.shape, dtype=torch.uint8, device=DEVICE)
    _e4m3_probe[(tc.cdiv(x.numel(), 1024),)](x, value, byte, x.numel(), BLOCK=1024)
    expected = x.to(torch.float8_e4m3fn)
    assert torch.equal(byte, expected.view(torch.uint8)), "e4m3 bytes differ from torch's RNE conversion"
    assert torch.equal(value.view(torch.int32), expected.float().view(torch.int32)), "values differ (or a zero's sign)"


@needs_kernel
def test_ue8m0_exponent_at_powers_of_two():
    """amax = 448 * 2^k exactly gives k; one fp32 ulp above gives k + 1 (a float log2 gets this wrong)."""
    k = torch.arange(-20, 20, dtype=torch.float32)
    exact = 448.0 * torch.exp2(k)
    g = torch.Generator().manual_seed(6)
    rand = torch.exp2(torch.rand(1000, generator=g) * 40 - 20)
    amax = torch.cat([exact, torch.nextafter(exact, exact * 2), torch.nextafter(exact, exact / 2), rand])
    expected = _fp8.ue8m0_exponent(amax)
    ki = k.to(torch.int32)
    assert torch.equal(expected[:3 * len(k)], torch.cat([ki, ki + 1, ki]))
    exp = torch.empty(amax.shape, dtype=torch.int32, device=DEVICE)
    _exponent_probe[(tc.cdiv(amax.numel(), 1024),)](amax.to(DEVICE), exp, amax.numel(), BLOCK=1024)
    assert torch.equal(exp.cpu(), expected)


# -- the op ---------------------------------------------------------------------------------------------
def check(kv, weight, cos, sin, k_nope, k_rope):
    ref_nope, ref_rope = OP.reference(kv, weight, cos, sin, EPS, QUANT_EPS)
    assert k_nope.dtype == k_rope.dtype == torch.bfloat16
    assert bool(torch.isfinite(k_nope.float()).all() and torch.isfinite(k_rope.float()).all()), "unwritten output"
    assert_fp8_values_close(k_nope, ref_nope)
    assert_close(k_rope, ref_rope, 2**-7)
    oracle_nope, oracle_rope = kv_norm_rope_math(kv, weight, cos, sin, EPS, torch.float64)
    assert rel_l2(k_rope, oracle_rope) < 1e-2
    assert rel_l2(k_nope, oracle_nope) < 6e-2  # FP8: 3 mantissa bits


@needs_kernel
@pytest.mark.parametrize("T,rows", [(1, 1), (5, 1), (6, 4)])
def test_matches_reference(T, rows, monkeypatch):
    monkeypatch.setattr(kt, "rows_per_program", lambda _: rows)
    kv, weight, cos, sin = make_inputs(T, seed=T)
    k_nope = torch.full((T, 448), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    k_rope = torch.full((T, 64), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    kt.launch(nope=kv, rope=kv[:, 448:], weight=weight, cos=cos, sin=sin, out_nope=k_nope, out_rope=k_rope,
              eps=EPS, quant_eps=QUANT_EPS)
    check(kv, weight, cos, sin, k_nope, k_rope)


@needs_kernel
def test_tiny_tiles_use_quant_eps_and_bf16_weight():
    """A tile of zeros quantizes with amax = quant_eps; a bf16 weight is read as such."""
    kv, weight, cos, sin = make_inputs(2, seed=3)
    kv[0, 64:128] = 0
    kv[1, :64] = 1e-30
    k_nope, k_rope = OP.providers["triton"].impl(kv, weight.bfloat16(), cos, sin, EPS, QUANT_EPS)
    check(kv, weight.bfloat16(), cos, sin, k_nope, k_rope)
    assert bool((k_nope[0, 64:128] == 0).all())


@needs_kernel
def test_empty_batch_and_dispatch():
    kv, weight, cos, sin = make_inputs(0)
    k_nope, k_rope = OP.providers["triton"].impl(kv, weight, cos, sin, EPS, QUANT_EPS)
    assert k_nope.shape == (0, 448) and k_rope.shape == (0, 64)
    kv, weight, cos, sin = make_inputs(2, seed=4)
    assert OP.select(targets.of_device(kv.device), (kv, weight, cos, sin, EPS, QUANT_EPS)).provider == "triton"
    check(kv, weight, cos, sin, *torch.ops.fusegraph.kv_norm_rope_quant(kv, weight, cos, sin, EPS, QUANT_EPS))


def test_supports_args_rejections():
    kv, weight, cos, sin = make_inputs(2, device="cpu")
    gate = OP.providers["triton"].supports_args
    assert gate(kv, weight, cos, sin, EPS, QUANT_EPS) is None
    assert "kv must be bf16" in gate(kv.float(), weight, cos, sin, EPS, QUANT_EPS)
    assert "kv must be bf16" in gate(kv[:, :448], weight, cos, sin, EPS, QUANT_EPS)
    assert "weight" in gate(kv, weight[:256], cos, sin, EPS, QUANT_EPS)
    assert "cos" in gate(kv, weight, cos.t().contiguous().t(), sin, EPS, QUANT_EPS)
    assert "quant_eps" in gate(kv, weight, cos, sin, EPS, 0.0)


def test_reference_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        kv, weight = torch.empty(3, 512, dtype=torch.bfloat16), torch.empty(512)
        k_nope, k_rope = torch.ops.fusegraph.kv_norm_rope_quant(kv, weight, torch.empty(3, 32), torch.empty(3, 32),
                                                                EPS, QUANT_EPS)
    assert k_nope.shape == (3, 448) and k_rope.shape == (3, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("T", [1, 32, 4097, 16384])
def test_gpu_real_sizes(T):
    kv, weight, cos, sin = make_inputs(T, seed=T)
    check(kv, weight, cos, sin, *OP.providers["triton"].impl(kv, weight, cos, sin, EPS, QUANT_EPS))
