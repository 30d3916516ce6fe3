"""Whole-model behaviour: tiny forward, symbolic_trace, decode == prefill, cache layouts, presets."""
import time

import pytest
import torch
import torch.fx as fx

from fusegraph.models import PRESETS, build_model, example_inputs
from fusegraph.models.mhc import hc_pre

T = 256  # the ratio-128 compressor emits 2 blocks, ratio 4 emits 64 (> index_topk = 16)


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny")


@pytest.fixture(scope="module")
def ids(tiny):
    return example_inputs(tiny, T)[0]


@pytest.fixture(scope="module")
def logits(tiny, ids):
    with torch.no_grad():
        return tiny(ids)


def test_tiny_config_has_the_three_attention_kinds(tiny):
    assert tiny.config.compress_ratios == (0, 4, 128)
    assert tiny.config.hc_mult == 4 and tiny.config.head_dim == 512 and tiny.config.rope_dim == 64
    assert tiny.layers[1].attn.indexer is not None and tiny.layers[2].attn.indexer is None
    assert tiny.layers[0].attn.compressor is None


def test_tiny_forward_finite(logits):
    assert logits.shape == (T, PRESETS["tiny"].vocab_size) and logits.dtype == torch.float32
    assert logits.isfinite().all()
    assert 0.1 < logits.std().item() < 10


def test_seeded_init_is_deterministic(tiny):
    other = build_model("tiny", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), other.state_dict().values()))
    third = build_model("tiny", seed=1)
    assert not torch.equal(third.embed.weight, tiny.embed.weight)


def test_symbolic_trace_equals_eager(tiny, ids, logits):
    gm = fx.symbolic_trace(tiny, concrete_args={"start_pos": 0})
    assert not [n for n in gm.graph.nodes if n.op == "call_module"], "no leaf modules expected"
    constants = [n.target for n in gm.graph.nodes if n.op == "get_attr" and "_tensor_constant" in str(n.target)]
    assert not constants, constants
    with torch.no_grad():
        assert torch.equal(gm(ids), logits)
        for n in (0, 1, 5):  # same graph, other T (no size specialization)
            short = example_inputs(tiny, n, seed=3)[0]
            assert torch.equal(gm(short), tiny(short))


def test_traced_graph_exposes_boundaries(tiny):
    gm = fx.symbolic_trace(tiny, concrete_args={"start_pos": 0})
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in ["layers.0.hc_attn_fn", "layers.0.hc_attn_scale", "layers.0.hc_attn_base", "layers.0.attn_norm.weight",
                 "layers.0.attn.kv_norm.weight", "layers.1.attn.compressor.ape", "layers.1.attn.compressor.wkv.weight",
                 "layers.2.attn.compressor.wgate.weight", "layers.0.attn.rope.cos", "hc_head_fn", "layers.0.attn.attn_sink"]:
        assert name in targets, name
    linears = [n for n in gm.graph.nodes if n.target is torch.nn.functional.linear]
    assert len(linears) > 20


def test_every_module_traces(tiny):
    """Each submodule traces on its own (its boundaries become graph inputs) and matches eager."""
    cfg = tiny.config
    n = 9
    x = torch.randn(n, 4, cfg.dim, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    h = torch.randn(n, cfg.dim, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    positions = torch.arange(n)
    with torch.no_grad():
        for layer in tiny.layers:
            gm = fx.symbolic_trace(layer, concrete_args={"start_pos": 0})
            assert torch.equal(gm(x, positions), layer(x, positions, 0))
            gm = fx.symbolic_trace(layer.attn, concrete_args={"start_pos": 0})
            assert torch.equal(gm(h, positions), layer.attn(h, positions, 0))
            for mod in (layer.attn_norm, layer.ffn, layer.attn.q_norm):
                arg = h if mod is not layer.attn.q_norm else h[:, : cfg.q_lora_rank]
                assert torch.equal(fx.symbolic_trace(mod)(arg), mod(arg))
        attn = tiny.layers[1].attn
        for comp in (attn.compressor, attn.indexer.compressor):
            gm = fx.symbolic_trace(comp, concrete_args={"start_pos": 0})
            for got, want in zip(gm(h, attn.rope.cos, attn.rope.sin), comp(h, attn.rope.cos, attn.rope.sin, 0)):
                assert torch.equal(got, want)
        qr = h[:, : cfg.q_lora_rank]
        cos, sin = attn.rope.cos[positions], attn.rope.sin[positions]
        gm = fx.symbolic_trace(attn.indexer, concrete_args={"start_pos": 0})
        want = attn.indexer(h, qr, positions, cos, sin, attn.rope.cos, attn.rope.sin, 0)
        assert torch.equal(gm(h, qr, positions, cos, sin, attn.rope.cos, attn.rope.sin), want)


@pytest.mark.parametrize("split", [1, 127, 200])
def test_decode_after_prefill_equals_full_prefill(tiny, ids, logits, split):
    with torch.no_grad():
        outs = [tiny(ids[:split])]
        pos = split
        for n in (1, 3, 2):  # single- and multi-token decode calls
            outs.append(tiny(ids[pos : pos + n], start_pos=pos))
            pos += n
        outs.append(tiny(ids[pos:], start_pos=pos))
        got = torch.cat(outs)
    torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)


def test_bf16_and_fp8_paged_layouts_agree(ids, logits):
    """The model stores FP8-simulated k_nope, so both layouts hold the same values."""
    bf16 = build_model("tiny", kv_cache_layout="bf16")
    assert type(bf16.layers[0].attn.window_cache).__name__ == "BF16KVCache"
    with torch.no_grad():
        assert torch.equal(bf16(ids), logits)


def test_attention_reads_only_causal_entries(tiny, ids, logits):
    """Logits of a prefix do not depend on later tokens (window, compressed and indexed entries)."""
    with torch.no_grad():
        prefix = tiny(ids[:140])
    torch.testing.assert_close(prefix, logits[:140], rtol=1e-5, atol=1e-5)


def test_hc_pre_inputs_in_layer(tiny):
    """The decoder layer feeds hc_pre with the residual and its own fp32 parameters."""
    layer = tiny.layers[0]
    assert layer.hc_attn_fn.dtype == torch.float32 and layer.hc_attn_fn.shape == (24, 4 * tiny.config.dim)
    x = torch.randn(3, 4, tiny.config.dim).to(torch.bfloat16)
    h, post, comb = hc_pre(x, layer.hc_attn_fn, layer.hc_attn_scale, layer.hc_attn_base, 4, 1e-6, 1e-6, 20, 2.0)
    assert h.shape == (3, tiny.config.dim) and post.shape == (3, 4) and comb.shape == (3, 4, 4)


@pytest.mark.parametrize("name,dim,heads,layers", [("flash", 4096, 64, 43), ("pro", 7168, 128, 61)])
def test_release_presets_on_meta(name, dim, heads, layers):
    build_model(name, device="meta")  # warm-up: first meta ops import torch internals
    t0 = time.perf_counter()
    m = build_model(name, device="meta")
    assert time.perf_counter() - t0 < 2.0
    sd = m.state_dict()
    K = 4 * dim
    assert all(v.is_meta for v in sd.values())
    assert len(m.layers) == layers
    assert sd["layers.0.hc_attn_fn"].shape == (24, K) and sd["layers.0.hc_attn_fn"].dtype == torch.float32
    assert sd["layers.0.hc_ffn_base"].shape == (24,) and sd["layers.0.hc_ffn_scale"].shape == (3,)
    assert sd["hc_head_fn"].shape == (4, K) and sd["hc_head_base"].shape == (4,) and sd["hc_head_scale"].shape == (1,)
    assert sd["layers.0.attn.attn_sink"].shape == (heads,) and sd["layers.0.attn.attn_sink"].dtype == torch.float32
    assert sd["layers.2.attn.compressor.ape"].shape == (4, 1024)
    assert sd["layers.3.attn.compressor.ape"].shape == (128, 512)
    assert sd["layers.2.attn.compressor.wkv.weight"].shape == (1024, dim)
    assert sd["layers.3.attn.compressor.wgate.weight"].shape == (512, dim)
    assert sd["layers.2.attn.indexer.compressor.ape"].shape == (4, 256)
    assert sd["layers.2.attn.indexer.compressor.norm.weight"].shape == (128,)
    assert sd["layers.2.attn.indexer.weights_proj.weight"].shape == (64, dim)
    assert "layers.3.attn.indexer.wq_b.weight" not in sd
    assert sd["layers.0.attn.kv_norm.weight"].shape == (512,)
    assert sd["head.weight"].shape == (129280, dim) and sd["embed.weight"].shape == (129280, dim)
    if name == "pro":  # checkpoint listing in spec section 1
        assert sd["layers.0.attn.wq_a.weight"].shape == (1536, 7168)
        assert sd["layers.0.attn.wq_b.weight"].shape == (65536, 1536)
        assert sd["layers.0.attn.wkv.weight"].shape == (512, 7168)
        assert sd["layers.0.attn.wo_a.weight"].shape == (16384, 4096)
        assert sd["layers.0.attn.wo_b.weight"].shape == (7168, 16384)
        assert sd["layers.2.attn.indexer.wq_b.weight"].shape == (8192, 1536)
        assert sd["layers.0.attn.q_norm.weight"].shape == (1536,)
        assert sd["layers.0.attn.compressor.ape"].shape == (128, 512)  # Pro: layers 0-1 are ratio 128
    else:
        assert "layers.0.attn.compressor.ape" not in sd  # Flash: layers 0-1 are ratio 0
    (x,) = example_inputs(m, 7)
    assert x.is_meta and x.shape == (7,) and x.dtype == torch.long


def test_example_inputs_on_model_device(tiny):
    (x,) = example_inputs(tiny, 11)
    assert x.shape == (11,) and x.dtype == torch.long and x.device == tiny.embed.weight.device
    assert int(x.max()) < tiny.config.vocab_size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_on_cuda_matches_cpu(ids, logits):
    gpu = build_model("tiny", device="cuda")
    with torch.no_grad():
        out = gpu(ids.cuda())
    assert out.isfinite().all()
    # bf16 GEMMs differ between CPU and GPU, and FP8 rounding amplifies single-ulp flips
    assert ((out.cpu() - logits).norm() / logits.norm()).item() < 5e-2
    gm = fx.symbolic_trace(gpu, concrete_args={"start_pos": 0})
    with torch.no_grad():
        again = gm(ids.cuda())
    assert ((again - out).norm() / out.norm()).item() < 1e-2
