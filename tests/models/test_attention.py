"""Attention pieces (spec 4.2, 4.3, 4.5): q/kv paths and sparse attention with sink vs fp64."""
import math

import torch

from fusegraph.models.attention import (
    causal_block_indices, kv_norm_rope_quant, q_norm_rope, sparse_attn_sink, window_indices,
)
from fusegraph.models.quant import fp8_quant_dequant
from fusegraph.models.rope import RotaryTable, apply_rope

ROPE = RotaryTable(64, 256, 10000.0)


def test_sparse_attn_sink_matches_fp64():
    g = torch.Generator().manual_seed(0)
    T, H, N, K = 5, 3, 20, 9
    q = torch.randn(T, H, 512, generator=g).to(torch.bfloat16)
    kv = torch.randn(N, 512, generator=g).to(torch.bfloat16)
    idx = torch.randint(0, N, (T, K), generator=g)
    idx[:, 5:] = -1
    idx[0, 1:] = -1
    sink = torch.randn(H, generator=g)
    out = sparse_attn_sink(q, kv[idx.clamp_min(0)], idx, sink, 512**-0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (T, H, 512)
    ref = torch.zeros(T, H, 512, dtype=torch.float64)
    for t in range(T):
        sel = [i for i in idx[t].tolist() if i >= 0]
        rows = kv[sel].double()
        for h in range(H):
            s = rows @ q[t, h].double() / math.sqrt(512)
            m = s.max()
            e = torch.exp(s - m)
            den = e.sum() + math.exp(sink[h].item() - m.item())
            ref[t, h] = (e / den) @ rows
    torch.testing.assert_close(out.double(), ref, rtol=2**-7, atol=1e-3)
    # the sink only adds to the denominator: weights sum to < 1
    assert (out.double().norm(dim=-1) < kv.double().norm(dim=-1).max()).all()


def test_window_and_block_indices():
    pos = torch.tensor([0, 3, 130])
    w = window_indices(pos, 128)
    assert w.shape == (3, 128)
    assert w[0].tolist() == [-1] * 127 + [0]
    assert w[1].tolist() == [-1] * 124 + [0, 1, 2, 3]
    assert w[2].tolist() == list(range(3, 131))
    b = causal_block_indices(torch.tensor([2, 3, 8, 11]), 3, 4)
    assert b.tolist() == [[-1, -1, -1], [0, -1, -1], [0, 1, -1], [0, 1, 2]]


def test_q_norm_rope_matches_fp64():
    g = torch.Generator().manual_seed(1)
    q = (torch.randn(4, 2, 512, generator=g) * 3).to(torch.bfloat16)
    pos = torch.tensor([0, 5, 77, 255])
    out = q_norm_rope(q, ROPE.cos[pos], ROPE.sin[pos], 1e-6)
    v = q.double()
    v = v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-6)
    rope = apply_rope(v[..., 448:], ROPE.cos[pos].double()[:, None], ROPE.sin[pos].double()[:, None])
    ref = torch.cat([v[..., :448], rope], -1)
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=1e-5)


def test_kv_norm_rope_quant_matches_spec_chain():
    g = torch.Generator().manual_seed(2)
    kv = (torch.randn(6, 512, generator=g) * 2).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(512, generator=g)).to(torch.bfloat16)
    pos = torch.arange(6) * 40
    k_nope, k_rope = kv_norm_rope_quant(kv, w, ROPE.cos[pos], ROPE.sin[pos], 1e-6, 1e-4)
    assert k_nope.shape == (6, 448) and k_rope.shape == (6, 64)
    v = kv.float()
    normed = (v * torch.rsqrt(v.square().mean(-1, keepdim=True) + 1e-6) * w.float()).to(torch.bfloat16)
    assert torch.equal(k_nope, fp8_quant_dequant(normed[:, :448], 1e-4))
    ref_rope = apply_rope(normed[:, 448:].double(), ROPE.cos[pos].double(), ROPE.sin[pos].double())
    torch.testing.assert_close(k_rope.double(), ref_rope, rtol=2**-8, atol=1e-5)
