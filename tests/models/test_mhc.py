"""mHC semantics (spec section 2): Sinkhorn, hc_pre vs a straight-line fp64 computation,
hc_post's transposed comb, hc_head."""
import math

import pytest
import torch

from fusegraph.models.mhc import hc_expand, hc_head, hc_post, hc_pre, sinkhorn

C = 4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make_inputs(T: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, D, generator=g).to(torch.bfloat16)
    fn = torch.randn(C * (2 + C), C * D, generator=g) / math.sqrt(C * D)
    scale = 0.2 + torch.rand(3, generator=g)
    base = torch.randn(C * (2 + C), generator=g)
    return x, fn, scale, base


def test_sinkhorn_columns_sum_to_one_rows_approximately():
    logits = torch.randn(64, C, C, generator=torch.Generator().manual_seed(1))
    m = sinkhorn(logits, 20, 1e-6)
    assert (m > 0).all()
    # The last pass is a column normalization: columns exact (up to eps), rows approximate.
    torch.testing.assert_close(m.sum(-2), torch.ones(64, C), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.sum(-1), torch.ones(64, C), atol=1e-3, rtol=0)
    sharp = sinkhorn(logits * 3, 20, 1e-6)
    torch.testing.assert_close(sharp.sum(-2), torch.ones(64, C), atol=1e-5, rtol=0)
    assert (sharp.sum(-1) - 1).abs().max() > 1e-3  # 20 iterations do not fully converge rows
    # The first row normalization is the softmax: one iteration = softmax + one column pass.
    one = sinkhorn(logits, 1, 0.0)
    s = logits.softmax(-1)
    torch.testing.assert_close(one, s / s.sum(-2, keepdim=True))


def hc_pre_fp64(x, fn, scale, base, rms_eps=1e-6, hc_eps=1e-6, iters=20, post_mult=2.0):
    """Straight-line fp64 restatement of spec 2.1 (loops, no shared code with the model)."""
    T, _, D = x.shape
    K = C * D
    xs = x.double().reshape(T, K)
    fn, scale, base = fn.double(), scale.double(), base.double()
    layer_input = torch.zeros(T, D, dtype=torch.float64)
    post = torch.zeros(T, C, dtype=torch.float64)
    comb = torch.zeros(T, C, C, dtype=torch.float64)
    for t in range(T):
        rinv = 1.0 / math.sqrt(float((xs[t] ** 2).sum()) / K + rms_eps)
        mixes = [float((xs[t] * fn[n]).sum()) * rinv for n in range(C * (2 + C))]
        pre = [1 / (1 + math.exp(-(mixes[c] * scale[0] + base[c]))) + hc_eps for c in range(C)]
        for c in range(C):
            post[t, c] = post_mult / (1 + math.exp(-(mixes[C + c] * scale[1] + base[C + c])))
        L = [[mixes[2 * C + j * C + k] * scale[2] + base[2 * C + j * C + k] for k in range(C)] for j in range(C)]
        M = []
        for j in range(C):
            mx = max(L[j])
            e = [math.exp(v - mx) for v in L[j]]
            M.append([v / sum(e) + hc_eps for v in e])
        for it in range(iters):
            if it > 0:
                for j in range(C):
                    rs = sum(M[j])
                    M[j] = [v / (rs + hc_eps) for v in M[j]]
            for k in range(C):
                cs = sum(M[j][k] for j in range(C))
                for j in range(C):
                    M[j][k] = M[j][k] / (cs + hc_eps)
        comb[t] = torch.tensor(M, dtype=torch.float64)
        for c in range(C):
            layer_input[t] += pre[c] * xs[t, c * D : (c + 1) * D]
    return layer_input, post, comb


@pytest.mark.parametrize("T", [0, 1, 7])
def test_hc_pre_matches_fp64_straight_line(T):
    D = 48
    x, fn, scale, base = make_inputs(T, D, seed=T)
    layer_input, post, comb = hc_pre(x, fn, scale, base, C, 1e-6, 1e-6, 20, 2.0)
    assert layer_input.dtype == torch.bfloat16 and layer_input.shape == (T, D)
    assert post.dtype == torch.float32 and post.shape == (T, C)
    assert comb.dtype == torch.float32 and comb.shape == (T, C, C)
    if T == 0:
        return
    ref_in, ref_post, ref_comb = hc_pre_fp64(x, fn, scale, base)
    assert rel_err(post, ref_post) < 1e-5
    assert rel_err(comb, ref_comb) < 1e-5
    # layer_input is rounded to bf16 once: within 1 bf16 rounding of the fp64 value.
    torch.testing.assert_close(layer_input.double(), ref_in, rtol=2**-8, atol=1e-6)


def test_hc_post_uses_comb_transposed():
    T, D = 3, 16
    g = torch.Generator().manual_seed(2)
    f = torch.randn(T, D, generator=g).to(torch.bfloat16)
    x = torch.randn(T, C, D, generator=g).to(torch.bfloat16)
    post = torch.rand(T, C, generator=g) * 2
    comb = torch.rand(T, C, C, generator=g)  # far from symmetric
    assert (comb - comb.transpose(-1, -2)).abs().max() > 0.3
    out = hc_post(f, x, post, comb)
    assert out.dtype == torch.bfloat16
    ref = torch.zeros(T, C, D, dtype=torch.float64)
    wrong = torch.zeros(T, C, D, dtype=torch.float64)
    for t in range(T):
        for k in range(C):
            ref[t, k] = post[t, k].double() * f[t].double()
            wrong[t, k] = post[t, k].double() * f[t].double()
            for j in range(C):
                ref[t, k] += comb[t, j, k].double() * x[t, j].double()  # output k reads column k
                wrong[t, k] += comb[t, k, j].double() * x[t, j].double()
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=1e-5)
    assert rel_err(out, wrong) > 0.05


def test_hc_head_matches_fp64():
    T, D = 5, 32
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, C, D, generator=g).to(torch.bfloat16)
    fn = torch.randn(C, C * D, generator=g) / math.sqrt(C * D)
    scale, base = torch.rand(1, generator=g), torch.randn(C, generator=g)
    out = hc_head(x, fn, scale, base, 1e-6, 1e-6)
    xs = x.double().reshape(T, C * D)
    rinv = torch.rsqrt((xs**2).mean(-1, keepdim=True) + 1e-6)
    p = torch.sigmoid((xs @ fn.double().T) * rinv * scale.double() + base.double()) + 1e-6
    ref = (p.unsqueeze(-1) * x.double()).sum(1)
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=1e-5)


def test_hc_expand_replicates_streams():
    e = torch.randn(4, 8).to(torch.bfloat16)
    x = hc_expand(e, C)
    assert x.shape == (4, C, 8)
    for c in range(C):
        assert torch.equal(x[:, c], e)
