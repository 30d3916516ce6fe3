"""compressor_pool: the Triton provider against the torch reference and a float64 oracle.

Both kernel paths are exercised: the fused pool + norm + RoPE kernel (a whole row per program) and
the split-channel pool followed by the in-place epilogue kernel. CPU cases use small head dims and
few blocks; GPU cases use d = 512 at the DSV4 ratios.
"""
import pytest
import torch

from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.compressor_pool import triton as ct
from fusegraph.kernels.compressor_pool.reference import compressor_pool_math

ON_GPU = torch.cuda.is_available() and not tc.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernel = pytest.mark.skipif(not (tc.interpreting() or ON_GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
EPS = 1e-6
OP = ops.get("compressor_pool")


def make_inputs(T, d, ratio, device=DEVICE, seed=0, fused_projection=False):
    """kv/score/ape/norm/cos/sin; ``fused_projection``: kv and score are column halves of one GEMM output."""
    g = torch.Generator().manual_seed(seed)
    co = 2 if ratio == 4 else 1
    both = torch.randn(T, 2 * co * d, generator=g)
    both[:, co * d:] *= 3  # gate scores: a wide spread, so that softmax weights vary
    if fused_projection:
        kv, score = both[:, :co * d], both[:, co * d:]
    else:
        kv, score = both[:, :co * d].contiguous(), both[:, co * d:].contiguous()
    ape = torch.randn(ratio, co * d, generator=g)
    norm = torch.rand(d, generator=g) + 0.5
    angle = torch.rand(T // ratio, 32, generator=g) * 6.3
    return [t.to(device) for t in (kv, score, ape, norm, angle.cos(), angle.sin())]


def rel_l2(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def check(args, ratio, out):
    expected = OP.reference(*args, ratio, EPS)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert bool(torch.isfinite(out.float()).all()), "an output element was not written (or is NaN)"
    # the online softmax sums in another order: rarely a bf16 ulp apart, which RMSNorm and RoPE
    # may carry a little further (relative to the row for RoPE outputs near zero)
    ref = expected.float()
    diff = (out.float() - ref).abs()
    row_rms = ref.pow(2).mean(-1, keepdim=True).sqrt()
    assert bool((diff <= (ref.abs() + row_rms) * 2**-6).all()), f"max diff {diff.max().item()}"
    assert (diff > 0).float().mean().item() <= 2e-2
    if out.numel():
        assert rel_l2(out, compressor_pool_math(*args, ratio, EPS, torch.float64)) < 1e-2


def run_launch(args, ratio, block_d):
    kv, d = args[0], args[3].shape[0]
    out = torch.full((kv.shape[0] // ratio, d), float("nan"), dtype=torch.bfloat16, device=kv.device)
    ct.launch(*args, ratio, EPS, out, block_d)
    return out


@needs_kernel
@pytest.mark.parametrize("ratio,T,d", [(4, 4, 128), (4, 14, 512), (128, 261, 64), (8, 19, 128)])
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_matches_reference(ratio, T, d, split):
    args = make_inputs(T, d, ratio, seed=T)
    block_d = 64 if split else tc.next_pow2(d)
    check(args, ratio, run_launch(args, ratio, block_d))


@needs_kernel
def test_fused_projection_views_and_non_pow2_dim():
    """kv/score as strided column slices of one [T, 2*co*d] tensor; d = 96 is not a power of two;
    the norm weight is bf16 (the model's RMSNorm parameter)."""
    args = make_inputs(12, 96, 4, seed=7, fused_projection=True)
    args[3] = args[3].bfloat16()
    assert args[0].stride(0) == 2 * 2 * 96
    check(args, 4, run_launch(args, 4, 128))
    check(args, 4, run_launch(args, 4, 64))


@needs_kernel
def test_masked_scores_give_no_nan():
    """-inf scores on whole windows of some channels pool to 0 instead of NaN; partial -inf just mask."""
    args = make_inputs(8, 128, 4, seed=3)
    score = args[1]
    score[:, 5] = float("-inf")          # block 0: every entry of channel 5 (previous half is masked anyway)
    score[4:8, 128 + 5] = float("-inf")  # block 1: current half of channel 5; previous half stays finite
    score[0:4, 128 + 9] = float("-inf")  # block 0, channel 9: all entries -inf
    from fusegraph.kernels.compressor_pool.reference import pool_windows
    pooled = pool_windows(args[0], score, args[2], 4, torch.float32)
    assert pooled[0, 9] == 0 and bool(torch.isfinite(pooled).all())
    check(args, 4, run_launch(args, 4, 128))
    check(args, 4, run_launch(args, 4, 64))


@needs_kernel
@pytest.mark.parametrize("T,ratio", [(0, 4), (3, 4), (100, 128)])
def test_no_complete_block(T, ratio):
    args = make_inputs(T, 128, ratio)
    out = OP.providers["triton"].impl(*args, ratio, EPS)
    assert out.shape == (0, 128) and out.dtype == torch.bfloat16


@needs_kernel
def test_dispatch_through_torch_ops():
    args = make_inputs(9, 128, 4, seed=2)
    assert OP.select(targets.of_device(args[0].device), (*args, 4, EPS)).provider == "triton"
    check(args, 4, torch.ops.fusegraph.compressor_pool(*args, 4, EPS))


def test_channel_block_policy():
    cpu = torch.device("cpu")  # the interpreter counts 4 SMs: 8 blocks fill it
    assert ct.channel_block(blocks=8, window=256, d=512, device=cpu) == 512
    assert ct.channel_block(blocks=1, window=8, d=512, device=cpu) == 512      # small work: one launch
    assert ct.channel_block(blocks=2, window=1024, d=512, device=cpu) == 128   # 2 blocks x 4 tiles
    assert ct.channel_block(blocks=1, window=1024, d=512, device=cpu) == 64


def test_supports_args_rejections():
    kv, score, ape, norm, cos, sin = make_inputs(8, 128, 4, device="cpu")
    gate = OP.providers["triton"].supports_args
    assert gate(kv, score, ape, norm, cos, sin, 4, EPS) is None
    assert "kv must be fp32" in gate(kv.bfloat16(), score, ape, norm, cos, sin, 4, EPS)
    assert "disagree" in gate(kv, score, ape[:2], norm, cos, sin, 4, EPS)
    assert "disagree" in gate(kv, score, ape, norm, cos, sin, 8, EPS)  # ape has 4 rows, not 8
    assert "norm_weight" in gate(kv, score, ape, norm[:64], cos, sin, 4, EPS)
    assert "cos" in gate(kv, score, ape, norm, cos[:1], sin, 4, EPS)
    assert "ratio" in gate(kv, score, ape, norm, cos, sin, 0, EPS)
    kv2, score2, ape2, norm2, cos2, sin2 = make_inputs(8, 32, 4, device="cpu")
    assert "head dim" in gate(kv2, score2, ape2, norm2, cos2, sin2, 4, EPS)


def test_reference_overlap_semantics():
    """Ratio 4 block j pools tokens of block j-1 on channels [0, d) and of block j on [d, 2d)."""
    d, r = 64, 4
    kv, score, ape, norm, cos, sin = make_inputs(8, d, r, device="cpu", seed=9)
    from fusegraph.kernels.compressor_pool.reference import pool_windows
    pooled = pool_windows(kv, score, ape, r, torch.float64)
    zb = (score.double().view(2, r, 2 * d) + ape.double())
    window = torch.cat([zb[0, :, :d], zb[1, :, d:]], 0)           # block 1's 2r entries
    values = torch.cat([kv.double()[0:4, :d], kv.double()[4:8, d:]], 0)
    assert torch.allclose(pooled[1], (window.softmax(0) * values).sum(0))
    assert torch.allclose(pooled[0], (zb[0, :, d:].softmax(0) * kv.double()[0:4, d:]).sum(0))  # no previous


def test_reference_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        args = [torch.empty(10, 256), torch.empty(10, 256), torch.empty(4, 256), torch.empty(128),
                torch.empty(2, 32), torch.empty(2, 32)]
        out = torch.ops.fusegraph.compressor_pool(*args, 4, EPS)
    assert out.shape == (2, 128) and out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("ratio", [4, 128])
@pytest.mark.parametrize("T", [128, 4096, 16384 + 5])
def test_gpu_real_sizes(ratio, T):
    args = make_inputs(T, 512, ratio, seed=T + ratio, fused_projection=True)
    out = torch.ops.fusegraph.compressor_pool(*args, ratio, EPS)
    check(args, ratio, out)
    for block_d in (64, 512):  # both kernel paths regardless of the heuristic
        check(args, ratio, run_launch(args, ratio, block_d))
