"""Verification on fewer rows (``fusegraph.match.rows``) decides exactly what full-size verification does.

The production cut applies to large candidates only (``MIN_ELEMENTS``, ``T >= 2 * EVAL_ROWS``), which
these small graphs are not; the tests force it (``EVAL_ROWS = 5``, no size floor) and compile each
model twice, cut and uncut: the sites (regions, inputs, outputs), the counts and every near-miss
record must be equal, and the cut must really have decided the matches. Models: the ``tiny`` preset
(every DSV4 pattern, sparse attention included), the same with another softmax scale (sparse
attention rejected), and ``_variants`` blocks with changed eps (mHC pre and q norm rejected).

Unit checks: the row-wise probe tells a row-wise reference (``q_norm_rope``, elementwise math) from
a pooling one (``compressor_pool``), a scan either way, a mean over rows and a shift; the shape guard rejects a literal row count; sizes read off tensors are
recomputed, a device is not a size.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import _variants
import fusegraph
from fusegraph import ops
from fusegraph.match import matcher as matcher_module
from fusegraph.match import rows
from fusegraph.models.presets import build_model, example_inputs
from fusegraph.pattern import Pattern, TensorSpec, concrete_shape
from fusegraph.patterns import all_patterns


def _compile_record(model, inputs, monkeypatch, cut: bool) -> tuple[dict, int]:
    """(what the compile decided, how many candidates the cut evaluation matched)."""
    monkeypatch.setattr(rows, "EVAL_ROWS", 5)
    monkeypatch.setattr(rows, "MIN_ELEMENTS", 0 if cut else 1 << 62)
    cut_matches = []
    evaluate = matcher_module.Matcher._evaluate_runs

    def spy(self, pattern, binding, closure, row_cut):
        out = evaluate(self, pattern, binding, closure, row_cut)
        if row_cut is not None and out.kind == "match":
            cut_matches.append(pattern.name)
        return out

    monkeypatch.setattr(matcher_module.Matcher, "_evaluate_runs", spy)
    report = fusegraph.compile(model, example_inputs=inputs, target="cpu").report
    sites = [{k: v for k, v in dataclasses.asdict(s).items() if k not in ("max_error", "selection")}
             for s in report.sites]
    record = {"counts": report.counts(), "sites": sites,
              "near_misses": [dataclasses.asdict(m) for m in report.near_misses]}
    return record, len(cut_matches)


def _assert_cut_equals_full(model, inputs, monkeypatch) -> dict:
    full, _ = _compile_record(model, inputs, monkeypatch, cut=False)
    cut, decided = _compile_record(model, inputs, monkeypatch, cut=True)
    assert cut == full
    assert decided > 0, "no candidate was decided by the cut evaluation"
    return full


def test_tiny_preset_cut_equals_full(monkeypatch):
    model = build_model("tiny", device="meta")
    record = _assert_cut_equals_full(model, example_inputs(model, 16), monkeypatch)
    assert record["counts"]["sparse_attn_sink"] == 2 and not record["near_misses"]


def test_rejected_sparse_attention_cut_equals_full(monkeypatch):
    model = build_model("tiny", device="meta", n_layers=2, compress_ratios=(0, 4))
    for layer in model.layers:
        layer.attn.softmax_scale = 448 ** -0.5   # not the op's 512^-0.5
    record = _assert_cut_equals_full(model, example_inputs(model, 16), monkeypatch)
    assert "sparse_attn_sink" not in record["counts"] and "sparse_attn_sink_swa" not in record["counts"]
    assert any(m["pattern"].startswith("sparse_attn_sink") for m in record["near_misses"])


@pytest.mark.parametrize("variant, rejected", [
    (_variants.mhc("hc_pre-rms_eps_1e-5", rms_eps=1e-5), "mhc_pre_norm"),
    (_variants.attn("q_norm-eps_1e-5", q_eps=1e-5), "q_norm_rope"),
], ids=["hc_pre-rms_eps_1e-5", "q_norm-eps_1e-5"])
def test_rejected_variants_cut_equal_full(variant, rejected, monkeypatch):
    block = variant.build()
    record = _assert_cut_equals_full(block, block.example_inputs(), monkeypatch)
    assert rejected not in record["counts"]
    assert any(m["pattern"] == rejected for m in record["near_misses"])


# -- units -----------------------------------------------------------------------------------------
def _probe(name: str, dims: dict[str, int]) -> bool:
    pattern = next(p for p in all_patterns() if p.name == name)

    def draw(k: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(k)
        return {n: s.gen(concrete_shape(s.shape, dims), (s.dtypes or (torch.float32,))[0], g, dims)
                for n, s in pattern.inputs.items()}

    def reference(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = ops.get(pattern.op).reference(**inputs, **pattern.literal_values(dims))
        return out if isinstance(out, tuple) else (out,)

    return rows.reference_rowwise(pattern, dims, draw, reference)


def test_rowwise_probe_tells_row_math_from_pooling():
    assert _probe("q_norm_rope", {"T": 5, "H": 2, "Dh": 512})
    # the compressor pools blocks of 4 rows: one changed row changes its block's output row, and
    # the output has no T axis at all
    assert not _probe("compressor_pool", {"T": 8, "R": 4, "W": 256, "d": 128, "NB": 2})


@pytest.mark.parametrize("fn, rowwise", [
    (lambda x: (x * 2 + 1, x.sum(-1)), True),
    (lambda x: (x.cumsum(0),), False),                         # causal scan over rows
    (lambda x: (x.flip(0).cumsum(0).flip(0),), False),         # anti-causal scan
    (lambda x: (x - x.mean(0, keepdim=True),), False),         # mixes all rows
    (lambda x: (x[:, :3] * 2, x.roll(1, 0)), False),           # one output row-wise, one shifted
], ids=["rowwise", "cumsum", "reverse_cumsum", "mean_over_rows", "roll"])
def test_rowwise_probe_on_plain_functions(fn, rowwise):
    pattern = Pattern(name="probe", op="probe", inputs={"x": TensorSpec(("T", "D"), (torch.float32,))})
    draw = lambda k: {"x": torch.randn(5, 4, generator=torch.Generator().manual_seed(k))}  # noqa: E731
    assert rows.reference_rowwise(pattern, {"T": 5, "D": 4}, draw, lambda inputs: fn(inputs["x"])) == rowwise


def test_shape_guard():
    cut = rows.RowCut(full=128, rows=13)
    assert cut.fits((128, 7, 64), (13, 7, 64)) and cut.fits((128 * 16,), (13 * 16,)) and cut.fits((12, 3), (12, 3))
    assert not cut.fits((100, 4), (13, 4))          # x[:100]: a literal row count
    assert not cut.fits((128, 4), (13, 4, 1))
    with pytest.raises(rows.NotScalable):
        rows.check_shapes(cut, {"a": torch.empty(100, 4, device="meta")}, {"a": torch.empty(13, 4)})
    rows.check_shapes(cut, {"a": (torch.empty(128, 2, device="meta"),)}, {"a": (torch.empty(13, 2),)})


def test_plan_only_for_large_row_candidates():
    q_norm = next(p for p in all_patterns() if p.name == "q_norm_rope")
    store = next(p for p in all_patterns() if p.name == "store_fp8_paged")
    assert rows.plan(q_norm, {"T": 128, "H": 64, "Dh": 512}, 1 << 23) == rows.RowCut(128, rows.EVAL_ROWS)
    assert rows.plan(q_norm, {"T": 16, "H": 64, "Dh": 512}, 1 << 23) is None     # few rows already
    assert rows.plan(q_norm, {"T": 128, "H": 2, "Dh": 512}, 1 << 17) is None      # small: full size
    assert rows.plan(store, {"T": 128, "NP": 64, "B": 37440}, 1 << 23) is None    # mutates a cache


def test_positional_row_treatment_is_not_cut():
    """A tensor made from sizes alone along the token axis (``arange(T) < 64``) may treat rows by
    position, which 13 rows cannot show: such candidates go to full size; row-wise ones stay cut."""
    def positional(x):
        return torch.where((torch.arange(x.size(0)) < 64)[:, None], x * 2, x)

    def rowwise(x):
        return (x * x).sum(-1, keepdim=True) + x

    cut = rows.RowCut(full=128, rows=rows.EVAL_ROWS)
    for fn, scalable in ((positional, False), (rowwise, True)):
        gm = torch.fx.symbolic_trace(fn)
        fusegraph.capture.propagate(gm, (torch.randn(128, 8),))
        closure = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
        if scalable:
            rows.check_row_sources(cut, closure)
        else:
            with pytest.raises(rows.NotScalable, match="from sizes alone"):
                rows.check_row_sources(cut, closure)
