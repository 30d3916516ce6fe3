"""Decode steps (``start_pos > 0``) compile and run like the eager model, caches included.

A decode step of the reference model walks its tokens in Python (``for i in range(x.size(0))``,
``if (pos + 1) % ratio``): symbolic sizes cannot drive that loop, so ``capture`` traces again with the
example shapes and ``start_pos`` as constants. Code whose control flow reads tensor *values* falls back
to the Dynamo backend, which fuses every graph Dynamo hands it (graph breaks, guard failures).

The fused step must give the eager logits (bf16 tolerance) and leave the same state behind: window
and compressed FP8 caches (compared as the rows attention reads back), compressor states, indexer keys.
Fused calls run their torch providers (``ops.prefer``): what is under test is capture; the kernels
have their own tests, and a whole model under the Triton interpreter takes half a minute a step.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

import fusegraph
from fusegraph import ops
from fusegraph.compiler import InputSpecError
from fusegraph.models.kv_cache import PagedFP8KVCache, gather_fp8_paged
from fusegraph.models.presets import build_model

PREFILL = 125
# Every DSV4 site of a tiny (ratios 0, 4, 128) decode step. The compressor's decode pooling (from its
# state rows, APE already added) is not the compressor_pool op, so no pattern fuses it.
DECODE_SITES = {"mhc_pre_norm": 1, "mhc_post_pre": 5, "mhc_post": 1, "hc_head_norm": 1, "q_norm_rope": 3,
                "kv_norm_rope_quant_store": 3, "sparse_attn_sink": 2, "sparse_attn_sink_swa": 1}


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    scale = want.norm().item()
    return (got - want).norm().item() / scale if scale else got.norm().item()


def _readable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, paged FP8 caches as the dequantized rows of all their slots."""
    out = {}
    for name, buf in model.named_buffers():
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if isinstance(owner, PagedFP8KVCache):
            buf = gather_fp8_paged(buf, torch.arange(owner.num_slots), owner.page_size)
        out[name] = buf.float()
    return out


def assert_same_state(model: torch.nn.Module, ref: torch.nn.Module) -> None:
    got, want = _readable_state(model), _readable_state(ref)
    for name, w in want.items():
        g = got[name]
        assert torch.equal(torch.isneginf(g), torch.isneginf(w)), f"{name}: empty score rows differ"
        finite = torch.isfinite(w)
        assert _rel_l2(g[finite], w[finite]) < 1e-2, name


def _prefilled(**overrides) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("tiny", **overrides)
    ids = torch.randint(0, model.config.vocab_size, (PREFILL + 8,))
    with torch.no_grad():
        model(ids[:PREFILL])
    return model, ids


@pytest.fixture(scope="module")
def prefilled():
    return _prefilled()


@pytest.fixture(autouse=True)
def torch_providers():
    with ops.prefer({"*": ["torch"]}):
        yield


def _decode(prefilled, steps: int):
    """(fused module, its model, eager twin, logits, eager logits) after a T=steps decode step."""
    base, ids = prefilled
    model, ref = copy.deepcopy(base), copy.deepcopy(base)
    step = ids[PREFILL:PREFILL + steps]
    compiled = fusegraph.compile(model, example_inputs=(step, PREFILL), target="cpu")
    with torch.no_grad():
        got = compiled(step, start_pos=PREFILL)  # the model's own keyword
        want = ref(step, start_pos=PREFILL)
    return compiled, model, ref, got, want


def _window_row(model: torch.nn.Module, layer: int, pos: int) -> torch.Tensor:
    cache = model.layers[layer].attn.window_cache
    return gather_fp8_paged(cache.pages, torch.tensor([pos]), cache.page_size)


def test_decode_step_without_a_compressed_row_matches_eager(prefilled):
    compiled, model, ref, got, want = _decode(prefilled, 1)   # position 125: no block completes
    report = compiled.report
    assert report.capture == "symbolic_trace"
    assert "concrete shapes" in report.capture_note and "cannot be interpreted as an integer" in report.capture_note
    assert re.search(r"symbolic_trace failed at \w+\.py:\d+", report.capture_note)  # where plain tracing stopped
    counts = report.counts()
    for pattern, n in DECODE_SITES.items():
        assert counts.get(pattern, 0) == n, (pattern, counts)
    assert "store_fp8_paged" not in counts  # no compressed row to store at this position
    assert _rel_l2(got, want) < 1e-2
    assert_same_state(model, ref)
    for layer in range(3):  # the fused store wrote this token's row
        assert _window_row(model, layer, PREFILL).abs().sum() > 0

    # the module is specialized: another start_pos or T is refused, not silently computed wrong
    with pytest.raises(AssertionError, match="start_pos has been specialized to have value 125"):
        compiled(prefilled[1][PREFILL:PREFILL + 1], PREFILL + 1)
    with pytest.raises(InputSpecError, match=r"compiled for torch.int64 \(1,\)"):
        compiled(prefilled[1][PREFILL:PREFILL + 2], PREFILL)


def test_decode_step_crossing_a_compression_boundary_matches_eager(prefilled):
    compiled, model, ref, got, want = _decode(prefilled, 3)   # positions 125-127: 127 completes r4 and r128 blocks
    counts = compiled.report.counts()
    for pattern, n in DECODE_SITES.items():
        assert counts.get(pattern, 0) == n, (pattern, counts)
    assert counts.get("store_fp8_paged") == 2, counts  # each compressed cache stores its new row fused
    assert _rel_l2(got, want) < 1e-2
    assert_same_state(model, ref)
    for layer, block in ((1, 127 // 4), (2, 127 // 128)):
        cache = model.layers[layer].attn.compressed_cache
        assert gather_fp8_paged(cache.pages, torch.tensor([block]), cache.page_size).abs().sum() > 0


# -- the Dynamo fallback ---------------------------------------------------------------------------
class StopsOnNonFinite(torch.nn.Module):
    """Third-party style wrapper: a branch on a tensor value, which neither trace can capture."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, start_pos: int) -> torch.Tensor:
        logits = self.model(ids, start_pos)
        if torch.isfinite(logits).all():
            return logits
        return torch.nan_to_num(logits)


def test_value_dependent_control_flow_decodes_through_the_dynamo_fallback():
    base, ids = _prefilled(n_layers=1, compress_ratios=(4,))
    model, ref = copy.deepcopy(base), copy.deepcopy(base)
    pos = PREFILL + 2   # 127 completes a ratio-4 block
    torch._dynamo.reset()
    try:
        compiled = fusegraph.compile(StopsOnNonFinite(model), example_inputs=(ids[pos:pos + 1], pos), target="cpu")
        report = compiled.report
        assert report.capture == "dynamo"
        assert "traced again with concrete shapes" in report.capture_note  # both captures tried, and why not
        assert "control flow" in report.capture_note and "torch.compile backend" in report.capture_note
        with torch.no_grad():
            got, want = compiled(ids[pos:pos + 1], pos), ref(ids[pos:pos + 1], pos)
        graphs = compiled.fusegraph_backend.graphs
    finally:
        torch._dynamo.reset()
    assert _rel_l2(got, want) < 1e-2
    assert_same_state(model, ref)
    assert len(graphs) >= 1 and all(g.fused for g in graphs), graphs
    counts = report.counts()
    want_sites = {"mhc_pre_norm": 1, "mhc_post_pre": 1, "mhc_post": 1, "hc_head_norm": 1, "q_norm_rope": 1,
                  "kv_norm_rope_quant_store": 1, "sparse_attn_sink": 1, "store_fp8_paged": 1}
    assert {p: counts.get(p, 0) for p in want_sites} == want_sites, counts
    # module paths read as named_modules() names, not Dynamo's sources
    assert "model.layers.0.attn" in {s.module for s in report.sites}


class BreaksOnAValue(torch.nn.Module):
    """KV norm + RoPE + FP8 quant, a cache write at start_pos, then a graph break on a value."""

    def __init__(self):
        super().__init__()
        from fusegraph.models.rope import RotaryTable

        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(512).bfloat16())
        self.rope = RotaryTable(64, 64, 10000.0)
        self.register_buffer("cache", torch.zeros(64, 448, dtype=torch.bfloat16))

    def forward(self, kv: torch.Tensor, start_pos: int) -> torch.Tensor:
        from fusegraph.models.attention import kv_norm_rope_quant

        end = start_pos + kv.size(0)
        k_nope, k_rope = kv_norm_rope_quant(kv, self.weight, self.rope.cos[start_pos:end],
                                            self.rope.sin[start_pos:end], 1e-6, 1e-4)
        self.cache[start_pos:end] = k_nope
        if (k_rope.abs() > 1e3).any():
            k_rope = k_rope.clamp(-1e3, 1e3)
        return k_rope.float() * 2


def test_dynamo_backend_fuses_every_graph_and_runs_a_graph_it_cannot_fuse_unfused(monkeypatch):
    torch.manual_seed(0)
    model = BreaksOnAValue()
    twin = copy.deepcopy(model)
    kv = torch.randn(3, 512).bfloat16()
    torch._dynamo.reset()
    try:
        be = fusegraph.backend(target="cpu")
        fn = torch.compile(model, backend=be, dynamic=False)
        out = fn(kv, 5)
        torch.testing.assert_close(out, twin(kv, 5), rtol=0, atol=0)
        torch.testing.assert_close(model.cache, twin.cache, rtol=0, atol=0)
        first = len(be.graphs)
        assert first >= 2 and all(g.fused for g in be.graphs)  # split at the branch on a value
        assert [s.pattern for s in be.report.sites] == ["kv_norm_rope_quant"]
        assert be.report.before is not None and be.report.after.nodes < be.report.before.nodes
        # another start_pos fails Dynamo's guard on it: a new graph, fused as well
        out = fn(kv, 20)
        torch.testing.assert_close(out, twin(kv, 20), rtol=0, atol=0)
        torch.testing.assert_close(model.cache, twin.cache, rtol=0, atol=0)
        assert len(be.graphs) > first and all(g.fused for g in be.graphs)
        assert [s.pattern for s in be.report.sites] == ["kv_norm_rope_quant"] * 2

        # a graph whose passes fail runs as Dynamo captured it, and the report says why
        torch._dynamo.reset()
        import fusegraph.compiler as compiler

        def broken(*args, **kwargs):
            raise RuntimeError("no passes today")

        monkeypatch.setattr(compiler, "run_passes", broken)
        be = fusegraph.backend(target="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = torch.compile(model, backend=be, dynamic=False)(kv, 9)
        torch.testing.assert_close(out, twin(kv, 9), rtol=0, atol=0)
        torch.testing.assert_close(model.cache, twin.cache, rtol=0, atol=0)
        assert be.graphs and not any(g.fused for g in be.graphs)
        assert "no passes today" in be.graphs[0].error and "runs unfused" in be.report.capture_note
        assert any("runs unfused" in str(w.message) for w in caught)
    finally:
        torch._dynamo.reset()
