"""RoPE tables / rotation (spec 4.1) and the FP8 / FP4 quantization simulations (spec 4.3, 3.3)."""

import torch

from fusegraph.models.quant import fp4_quant_dequant, fp8_quant_dequant, hadamard_matrix, round_to_e2m1
from fusegraph.models.rope import RotaryTable, YarnScaling, apply_inverse_rope, apply_rope, rope_frequencies

YARN = YarnScaling(16.0, 65536, 32.0, 1.0)


def test_yarn_frequencies_blend_between_pairs_15_and_25():
    plain = rope_frequencies(64, 160000.0)
    yarn = rope_frequencies(64, 160000.0, YARN)
    torch.testing.assert_close(plain, 160000.0 ** (-torch.arange(0, 64, 2).double() / 64).float())
    torch.testing.assert_close(yarn[:16], plain[:16])  # i <= 15 keep f_i (lo = 15)
    torch.testing.assert_close(yarn[25:], plain[25:] / 16)  # i >= 25 use f_i / 16 (hi = 25)
    i = 20  # ramp = (20 - 15) / 10
    torch.testing.assert_close(yarn[i], plain[i] / 16 * 0.5 + plain[i] * 0.5)


def test_tables_match_complex_rotation():
    table = RotaryTable(64, 300, 10000.0)
    pos = torch.tensor([0, 1, 17, 299])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, generator=g)
    y = apply_rope(x, table.cos[pos].unsqueeze(1), table.sin[pos].unsqueeze(1))
    # Independent form: pairs (2i, 2i+1) as complex numbers times e^{i p f_i} (fp64).
    f = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    z = torch.view_as_complex(x.double().unflatten(-1, (32, 2)).contiguous())
    rot = torch.polar(torch.ones(4, 32, dtype=torch.float64), pos.double()[:, None] * f)
    ref = torch.view_as_real(z * rot[:, None]).flatten(-2)
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)


def test_inverse_rope_undoes_rope():
    table = RotaryTable(64, 1024, 160000.0, YARN)
    pos = torch.randint(0, 1024, (9,), generator=torch.Generator().manual_seed(1))
    x = torch.randn(9, 64)
    cos, sin = table.cos[pos], table.sin[pos]
    y = apply_rope(x, cos, sin)
    assert (y - x).abs().max() > 0.1
    torch.testing.assert_close(apply_inverse_rope(y, cos, sin), x, atol=1e-5, rtol=1e-5)


def test_fp8_quant_dequant_power_of_two_tiles():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(5, 448, generator=g) * torch.logspace(-3, 2, 7).repeat_interleave(64)).to(torch.bfloat16)
    y = fp8_quant_dequant(x, 1e-4)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    tiles = x.float().unflatten(-1, (7, 64))
    amax = tiles.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    scale = 2.0 ** torch.ceil(torch.log2(amax / 448))
    assert (amax / scale <= 448).all() and (amax / scale > 224).all()
    q = y.float().unflatten(-1, (7, 64)) / scale
    # every dequantized value is an e4m3 value times the tile scale
    assert torch.equal(q, q.to(torch.float8_e4m3fn).float())
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 for normal values
    big = tiles.abs() > scale * 2**-6
    assert ((y.float().unflatten(-1, (7, 64)) - tiles).abs()[big] <= tiles.abs()[big] * 2**-4).all()
    # amax clamp: a zero tile stays zero with scale 2^ceil(log2(1e-4/448))
    assert torch.equal(fp8_quant_dequant(torch.zeros(1, 64, dtype=torch.bfloat16), 1e-4), torch.zeros(1, 64, dtype=torch.bfloat16))


def test_e2m1_rounding_grid_and_ties():
    v = torch.tensor([0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.5, -2.5, 6.0])
    want = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -2.0, 6.0])
    assert torch.equal(round_to_e2m1(v), want)


def test_fp4_quant_dequant_values_on_grid():
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(3)) * 5
    y = fp4_quant_dequant(x, 32)
    tiles = x.unflatten(-1, (4, 32))
    scale = 2.0 ** torch.ceil(torch.log2(tiles.abs().amax(-1, keepdim=True) / 6))
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    q = (y.unflatten(-1, (4, 32)) / scale).abs()
    assert torch.isin(q, grid).all()
    assert ((y.unflatten(-1, (4, 32)) - tiles).abs() <= scale * 1.0 + 1e-6).all()


def test_hadamard_is_orthogonal_after_scaling():
    h = hadamard_matrix(128) * 128**-0.5
    torch.testing.assert_close(h @ h.T, torch.eye(128), atol=1e-5, rtol=0)
    assert set(hadamard_matrix(8).unique().tolist()) == {-1.0, 1.0}
