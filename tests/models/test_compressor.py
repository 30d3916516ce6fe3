"""Compressor (spec section 3): pooling semantics vs an fp64 loop restatement, and
prefill-of-S-tokens + token-by-token decode == pooling the whole sequence."""
import pytest
import torch

from fusegraph.models.compressor import Compressor, compressor_pool
from fusegraph.models.model import init_parameters
from fusegraph.models.rope import RotaryTable, YarnScaling, apply_rope

D = 32
ROPE = RotaryTable(64, 512, 160000.0, YarnScaling(16.0, 65536, 32.0, 1.0))


def make(ratio: int, head_dim: int = 128, seed: int = 0) -> Compressor:
    c = Compressor(D, head_dim, ratio, 64, 1e-6)
    init_parameters(c, seed)
    return c


def pool_fp64(kv: torch.Tensor, score: torch.Tensor, ape: torch.Tensor, ratio: int, d: int) -> torch.Tensor:
    """Spec 3.1 / 3.2 written per block with explicit window lists (fp64)."""
    kv, score, ape = kv.double(), score.double(), ape.double()
    n = kv.size(0) // ratio
    out = torch.zeros(n, d, dtype=torch.float64)
    for j in range(n):
        entries = []  # (kv row [d], biased score [d])
        if ratio == 4:
            if j > 0:
                for i in range(ratio):
                    t = (j - 1) * ratio + i
                    entries.append((kv[t, :d], score[t, :d] + ape[i, :d]))
            for i in range(ratio):
                t = j * ratio + i
                entries.append((kv[t, d:], score[t, d:] + ape[i, d:]))
        else:
            for i in range(ratio):
                t = j * ratio + i
                entries.append((kv[t], score[t] + ape[i]))
        s = torch.stack([e[1] for e in entries])
        w = torch.softmax(s, 0)
        out[j] = (w * torch.stack([e[0] for e in entries])).sum(0)
    return out


@pytest.mark.parametrize("ratio,T", [(4, 0), (4, 3), (4, 13), (128, 127), (128, 300)])
def test_pool_matches_fp64_window_restatement(ratio, T):
    c = make(ratio, seed=ratio + T)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)).to(torch.bfloat16)
    blocks, ids = c(x, ROPE.cos, ROPE.sin, 0)
    n = T // ratio
    assert blocks.dtype == torch.bfloat16 and blocks.shape == (n, 128)
    assert torch.equal(ids, torch.arange(n))
    kv = x.double() @ c.wkv.weight.double().T
    score = x.double() @ c.wgate.weight.double().T
    pooled = pool_fp64(kv, score, c.ape, ratio, 128)
    # 3.3: bf16, weighted RMSNorm, RoPE on the last 64 at position j * ratio
    v = pooled.to(torch.bfloat16).double()
    v = v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-6) * c.norm.weight.double()
    pos = torch.arange(n) * ratio
    rope = apply_rope(v[:, -64:], ROPE.cos[pos].double(), ROPE.sin[pos].double())
    ref = torch.cat([v[:, :-64], rope], -1)
    torch.testing.assert_close(blocks.double(), ref, atol=4e-2, rtol=2e-2)
    if n:
        assert ((blocks.double() - ref).norm() / ref.norm()) < 5e-3


def test_overlap_window_uses_previous_block():
    """Ratio 4: block j depends on tokens of block j-1 through channels [0, d)."""
    c = make(4, seed=5)
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    base, _ = c(x, ROPE.cos, ROPE.sin, 0)
    x2 = x.clone()
    x2[5] = -x2[5]  # a token of block 1
    changed, _ = c(x2, ROPE.cos, ROPE.sin, 0)
    assert torch.equal(changed[0], base[0])
    assert not torch.equal(changed[1], base[1]) and not torch.equal(changed[2], base[2])


def run_split(c: Compressor, x: torch.Tensor, split: int, chunk: int = 1):
    a, ia = c(x[:split], ROPE.cos, ROPE.sin, 0)
    outs, ids = [a], [ia]
    for s in range(split, x.size(0), chunk):
        b, ib = c(x[s : s + chunk], ROPE.cos, ROPE.sin, s)
        outs.append(b)
        ids.append(ib)
    return torch.cat(outs), torch.cat(ids)


def test_prefill_then_decode_equals_full_pooling_ratio4_all_splits():
    S = 18
    c = make(4, seed=1)
    x = torch.randn(S, D, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    full, full_ids = c(x, ROPE.cos, ROPE.sin, 0)
    for split in range(1, S):
        got, ids = run_split(c, x, split)
        assert torch.equal(ids, full_ids), split
        assert torch.equal(got, full), split
    got, ids = run_split(c, x, 5, chunk=3)  # multi-token decode calls
    assert torch.equal(got, full)


@pytest.mark.parametrize("split", [1, 127, 128, 129, 200])
def test_prefill_then_decode_equals_full_pooling_ratio128(split):
    S = 260
    c = make(128, seed=2)
    x = torch.randn(S, D, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    full, full_ids = c(x, ROPE.cos, ROPE.sin, 0)
    assert full.shape[0] == 2
    got, ids = run_split(c, x, split, chunk=7)
    assert torch.equal(ids, full_ids)
    assert torch.equal(got, full)


def test_compressor_pool_function_equals_module():
    c = make(4, seed=3)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    blocks, _ = c(x, ROPE.cos, ROPE.sin, 0)
    kv, score = c.project(x)
    pos = torch.arange(4) * 4
    got = compressor_pool(kv, score, c.ape, c.norm.weight, ROPE.cos[pos], ROPE.sin[pos], 4, 1e-6, 128, 64)
    assert torch.equal(got, blocks)
