"""The mHC TileLang providers (mhc_pre, mhc_post, mhc_post_pre): availability, the crossover
table and the dispatch it drives (CPU), the sm_90a compile-only check (needs tilelang and nvcc),
and GPU cases beyond the shared correctness tests (which ``test_mhc_pre.py``, ``test_mhc_post.py``
and ``test_mhc_post_pre.py`` run for both providers: ``-k tilelang`` selects these).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fusegraph import ops
from fusegraph.kernels.mhc_post.reference import mhc_post
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_pre import crossover, inputs
from fusegraph.kernels.mhc_pre import tilelang as tl_pre
from fusegraph.kernels.mhc_pre.reference import mhc_pre
from fusegraph.kernels.mhc_pre.testing import (assert_pdl_off_equals_on, check_mhc_pre, gpu_test,
                                               replay_on_new_input)

H200 = "NVIDIA H200"


def _has_tilelang() -> bool:
    return tl_pre.tilelang_missing() is None


# -- availability ----------------------------------------------------------------------------------
def test_unavailable_reports_why_and_dispatch_keeps_triton(monkeypatch):
    monkeypatch.setattr(tl_pre, "_kernels", None)
    monkeypatch.setattr(tl_pre, "_import_error", None)
    real_import = tl_pre.importlib.import_module

    def no_tilelang(name, *a, **k):
        if name == "tilelang" or name.startswith("tilelang."):
            raise ModuleNotFoundError("No module named 'tilelang'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(tl_pre.importlib, "import_module", no_tilelang)
    reason = tl_pre.tilelang_missing()
    assert reason.startswith("tilelang not installed") and "No module named 'tilelang'" in reason
    for op, args in ((mhc_pre, inputs.mhc_pre_args(2, 48)), (mhc_post, inputs.mhc_post_args(2, 48)),
                     (mhc_post_pre, inputs.mhc_post_pre_args(2, 48))):
        sel = op.select("sm90", args)
        assert sel.provider == "triton", sel
        assert {r.provider: r.reason for r in sel.rejected}["tilelang"] == reason
    with pytest.raises(RuntimeError, match="tilelang not installed"):
        tl_pre.kernels()


def test_runs_only_on_sm90():
    args = inputs.mhc_pre_args(2, 48)
    for target in ("cpu", "sm80", "sm100"):
        reasons = {r.provider: r.reason for r in mhc_pre.select(target, args).rejected}
        assert "does not run on" in reasons["tilelang"], reasons


# -- the crossover table ------------------------------------------------------------------------------
def _table(status="measured", device=H200, results=None) -> crossover.Table:
    rows = results if results is not None else [
        {"op": "mhc_pre", "D": 4096, "T": 1, "triton_us": 9.9, "tilelang_us": 8.0, "winner": "tilelang"},
        {"op": "mhc_pre", "D": 4096, "T": 32, "triton_us": 12.1, "tilelang_us": 13.0, "winner": "triton"},
        {"op": "mhc_pre", "D": 4096, "T": 4096, "triton_us": 94.0, "tilelang_us": 80.0, "winner": "tilelang"},
    ]
    data = {"format": 1, "status": status, "device": device, "commit": "abc" if status == "measured" else None,
            "date": "2026-11-21" if status == "measured" else None, "results": rows if status == "measured" else []}
    return crossover.parse_table(data, f"crossover_{device.split()[-1].lower()}.json")


@pytest.fixture
def on_h200(monkeypatch):
    """Pretend cuda:0 is an H200 (device_name is all the table lookup asks of the device)."""
    monkeypatch.setattr(crossover, "device_name", lambda device: H200 if device.type == "cuda" else None)


def test_committed_table_is_measured_and_agrees_with_its_own_times():
    tables = crossover.load_tables()
    assert [t.name for t in tables] == ["crossover_h200.json"]
    (table,) = tables
    assert table.device == H200 and table.status == crossover.MEASURED and table.entries
    with open(table.path) as f:
        data = json.load(f)
    assert data["buckets"] == list(crossover.BUCKETS) and data["commit"] and data["date"]
    for e in table.entries:  # TileLang wins a bucket only with a measured margin of 3 %
        if e.winner == "tilelang":
            assert e.tilelang_us is not None and e.triton_us is not None and e.tilelang_us <= 0.97 * e.triton_us, e
        else:
            assert e.tilelang_us is None or e.triton_us is None or e.tilelang_us > 0.97 * e.triton_us, e


@pytest.mark.parametrize("data,needle", [
    ({"format": 2}, "format"),
    ({"format": 1, "status": "maybe", "device": H200}, "status"),
    ({"format": 1, "status": "measured", "device": H200, "results": []}, "needs results"),
    ({"format": 1, "status": "unmeasured", "device": H200,
      "results": [{"op": "mhc_pre", "D": 1, "T": 1, "winner": "tilelang"}]}, "must not carry"),
    ({"format": 1, "status": "measured", "device": H200, "commit": "a", "date": "d",
      "results": [{"op": "mhc_pre", "D": 1, "T": 1, "winner": "cuda"}]}, "bad result row"),
])
def test_bad_tables_are_refused(data, needle):
    with pytest.raises(ValueError, match=needle):
        crossover.parse_table(data, "x.json")


def test_bucket_lookup():
    table = _table()
    # smallest measured T >= the call's T; past the largest, the largest
    assert [table.lookup("mhc_pre", 4096, T).T for T in (1, 2, 32, 33, 4096, 10 ** 6)] == [1, 32, 32, 4096, 4096, 4096]
    assert table.lookup("mhc_pre", 7168, 1) is None and table.lookup("mhc_post", 4096, 1) is None


def test_reason_against(on_h200):
    dev = torch.device("cuda", 0)
    table = _table()
    assert crossover.reason_against("tilelang", "mhc_pre", 4096, 1, dev, [table]) is None
    assert "triton wins mhc_pre at D = 4096, T bucket 32" in crossover.reason_against(
        "tilelang", "mhc_pre", 4096, 20, dev, [table])
    assert crossover.reason_against("tilelang", "mhc_pre", 4096, 999, dev, [table]) is None
    assert "not measured at D = 7168" in crossover.reason_against("tilelang", "mhc_pre", 7168, 1, dev, [table])
    assert "unmeasured" in crossover.reason_against("tilelang", "mhc_pre", 4096, 1, dev, [_table("unmeasured")])
    other = _table(device="NVIDIA H100 80GB HBM3")
    assert "no table for 'NVIDIA H200'" in crossover.reason_against("tilelang", "mhc_pre", 4096, 1, dev, [other])
    assert "no CUDA device" in crossover.reason_against("tilelang", "mhc_pre", 4096, 1, torch.device("cpu"), [table])
    # a forced preference overrides the table
    with ops.prefer({"mhc_pre": ["tilelang", "triton"]}):
        assert crossover.reason_against("tilelang", "mhc_pre", 4096, 20, dev, [_table("unmeasured")]) is None
    with ops.prefer({"*": ["triton"]}):  # a forced list without TileLang lifts nothing
        assert "triton wins" in crossover.reason_against("tilelang", "mhc_pre", 4096, 20, dev, [table])


def _as_cuda_meta(args: tuple) -> tuple:
    """The arguments as meta tensors whose ``device`` reads cuda:0 (planning without a GPU)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            m = torch.empty_like(a, device="meta")
            out.append(_FakeCuda(m))
        else:
            out.append(a)
    return tuple(out)


class _FakeCuda:
    """A tensor stand-in with the real shape/dtype/contiguity of ``t`` and ``device == cuda:0``."""

    def __init__(self, t: torch.Tensor):
        self._t = t
        self.device = torch.device("cuda", 0)
        self.is_cuda = True

    def __getattr__(self, name):
        return getattr(self._t, name)


@pytest.mark.parametrize("op,make,case", [
    (mhc_pre, inputs.mhc_pre_args, "mhc_pre"),
    (mhc_post, inputs.mhc_post_args, "mhc_post"),
    (mhc_post_pre, inputs.mhc_post_pre_args, "mhc_post_pre"),
])
def test_dispatch_follows_the_table(monkeypatch, on_h200, op, make, case):
    """With tilelang available and a measured table, sm90 calls go to TileLang exactly in the
    buckets it won; with the committed (unmeasured) table every call stays with Triton."""
    monkeypatch.setattr(tl_pre, "tilelang_missing", lambda: None)
    rows = [{"op": case, "D": 64, "T": 1, "triton_us": 5.0, "tilelang_us": 4.0, "winner": "tilelang"},
            {"op": case, "D": 64, "T": 64, "triton_us": 5.0, "tilelang_us": 6.0, "winner": "triton"}]
    monkeypatch.setattr(crossover, "load_tables", lambda: (_table(results=rows),))
    for T, expected in ((1, "tilelang"), (2, "triton"), (64, "triton"), (100, "triton")):
        args = _as_cuda_meta(make(T, 64))
        sel = op.select("sm90", args)
        assert sel.provider == expected, (T, sel)
        if expected == "triton":
            assert "triton wins" in {r.provider: r.reason for r in sel.rejected}["tilelang"]
    monkeypatch.setattr(crossover, "load_tables", lambda: (_table("unmeasured"),))
    sel = op.select("sm90", _as_cuda_meta(make(1, 64)))
    assert sel.provider == "triton" and "unmeasured" in {r.provider: r.reason for r in sel.rejected}["tilelang"]
    with ops.prefer({case: ["tilelang"]}):
        assert op.select("sm90", _as_cuda_meta(make(1, 64))).provider == "tilelang"


def _meta_pre_args(T: int, D: int, norm_dtype=torch.bfloat16) -> tuple:
    def m(*shape, dtype=torch.float32):
        return _FakeCuda(torch.empty(*shape, dtype=dtype, device="meta"))

    return (m(T, 4, D, dtype=torch.bfloat16), m(24, 4 * D), m(3), m(24), m(D, dtype=norm_dtype)) + tuple(
        inputs.mhc_pre_args(1, 16)[5:])


def test_kernel_gates_and_the_table_are_separate_gates(on_h200):
    # supports_args: what the kernels can take; measured: the committed table's verdict
    assert tl_pre.supports(*_meta_pre_args(2, 4096)) is None
    assert "triton wins mhc_pre at D = 4096, T bucket 8" in tl_pre.measured(*_meta_pre_args(2, 4096))
    assert tl_pre.measured(*_meta_pre_args(128, 7168)) is None   # pro, T = 128: TileLang measured faster
    assert "multiple of 16" in tl_pre.supports(*_meta_pre_args(2, 40))
    assert f"> {tl_pre.MAX_D}" in tl_pre.supports(*_meta_pre_args(2, 2 * tl_pre.MAX_D))
    assert "bfloat16 or float32" in tl_pre.supports(*_meta_pre_args(2, 64, torch.float16))
    assert "not on a CUDA device" in tl_pre.supports(*inputs.mhc_pre_args(2, 48))


def test_benchmark_writes_a_table_the_loader_accepts():
    from benchmarks import mhc_crossover as mc

    cells = [mc.Cell("mhc_pre", "flash", 4096, 1, 9.9, 8.0, 1e-3, "tilelang"),
             mc.Cell("mhc_pre", "flash", 4096, 8, 10.0, 9.9, 1e-3, "triton"),
             mc.Cell("mhc_pre", "flash", 4096, 32, None, None, None, "triton", "not reached within the time budget"),
             mc.Cell("mhc_post", "flash", 4096, 1, 3.0, None, None, "tilelang", "RuntimeError: boom")]
    data = mc.table_json(cells, H200, {"git_commit": "abc123", "date": "2026-11-21T12:00:00+00:00"})
    table = crossover.parse_table(json.loads(json.dumps(data)), "crossover_h200.json")
    assert table.status == crossover.MEASURED and table.device == H200 and table.commit == "abc123"
    assert [(e.T, e.winner) for e in table.entries if e.op == "mhc_pre"] == [(1, "tilelang"), (8, "triton"),
                                                                             (32, "triton")]
    failed = table.lookup("mhc_post", 4096, 1)  # a failed cell claims nothing: Triton, no times
    assert failed.winner == "triton" and failed.triton_us is None and failed.tilelang_us is None
    if not torch.cuda.is_available():
        assert mc.main([]) == 2  # no GPU: a clear message, no table


# -- compile-only: the kernels lower and build for sm_90a (no GPU needed) ---------------------------------
COMPILE_SCRIPT = r'''
import json, re, subprocess, sys, tempfile, os
import tilelang
from tilelang.contrib import nvcc
from fusegraph.kernels.mhc_pre import tilelang_kernels as tk
D = int(sys.argv[1])
out = {}
for name, src in tk.lower_sources(D, "sm_90a").items():
    with tempfile.TemporaryDirectory() as tmp:
        cu = os.path.join(tmp, name + ".cu")
        open(cu, "w").write(src)
        cmd = [nvcc.get_nvcc_compiler(), "--cubin", "-O3", "-arch=sm_90a", "-w", "-Xptxas=-v", "-o",
               os.path.join(tmp, name + ".cubin"), cu] + nvcc.default_compile_options()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ok = proc.returncode == 0 and os.path.getsize(os.path.join(tmp, name + ".cubin")) > 0
        info = proc.stdout + proc.stderr
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", info)]
        out[name] = {"ok": ok, "spills": max(spills or [0]), "log": "" if ok else info[-2000:],
                     "pdl_wait": "cudaGridDependencySynchronize" in src,
                     "pdl_trigger": "cudaTriggerProgrammaticLaunchCompletion" in src}
json.dump(out, sys.stdout)
'''


def _nvcc_present() -> bool:
    if shutil.which("nvcc"):
        return True
    try:
        from tilelang.contrib.nvcc import find_cuda_path
        return os.path.exists(os.path.join(find_cuda_path() or "", "bin", "nvcc"))
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_tilelang(), reason="tilelang not installed")
@pytest.mark.skipif(not _nvcc_present(), reason="no nvcc")
@pytest.mark.parametrize("D", [4096, 7168, 80])
def test_kernels_compile_for_sm90a(D):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(D)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(results) == ["fuse", "fuse_norm", "gemm", "post"]
    for name, r in results.items():
        assert r["ok"], f"{name}: {r['log']}"
        assert r["spills"] == 0, f"{name}: {r['spills']} bytes of register spills"
        assert r["pdl_wait"] and r["pdl_trigger"], f"{name}: PDL sync/trigger missing"


# -- GPU ---------------------------------------------------------------------------------------------------
needs_tilelang = pytest.mark.skipif(not _has_tilelang(), reason="tilelang not installed")


def _tk():
    return tl_pre.kernels()


@pytest.mark.parametrize("n_splits", [1, 3, 7])
@needs_tilelang
@gpu_test
def test_gpu_split_remainders_and_padded_rows(n_splits):
    # D = 80: K = 320 -> 5 k-blocks over 3 / 7 splits (remainders, empty splits clamped), padded register row;
    # T = 45: two GEMM token blocks, the second partial
    args = inputs.mhc_pre_args(45, 80, device="cuda", norm=True, seed=n_splits)
    with _tk().poisoned_outputs() as made:
        outs = _tk().mhc_pre_forward(*args, n_splits=n_splits)
    assert made
    check_mhc_pre(args, outs)


@needs_tilelang
@gpu_test
def test_gpu_zero_tokens_and_fp32_norm_weight():
    for op, make in ((mhc_pre, inputs.mhc_pre_args), (mhc_post, inputs.mhc_post_args),
                     (mhc_post_pre, inputs.mhc_post_pre_args)):
        outs = op.providers["tilelang"].impl(*make(0, 4096, device="cuda"))
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert all(o.shape[0] == 0 and o.is_cuda for o in outs)
    args = list(inputs.mhc_pre_args(5, 4096, device="cuda", norm=True, seed=3))
    args[4] = args[4].float()
    check_mhc_pre(tuple(args), mhc_pre.providers["tilelang"].impl(*args))


@needs_tilelang
@gpu_test
def test_gpu_deterministic_and_default_dispatch_follows_committed_table():
    args = inputs.mhc_pre_args(4096, 4096, device="cuda", norm=True, seed=21)
    first = mhc_pre.providers["tilelang"].impl(*args)
    for a, b in zip(first, mhc_pre.providers["tilelang"].impl(*args)):
        assert torch.equal(a, b)  # no atomics: the split sum has a fixed order
    table = next((t for t in crossover.load_tables() if t.device == torch.cuda.get_device_name()), None)
    sel = mhc_pre.select("sm90", args)
    if table is None or table.status != crossover.MEASURED:
        assert sel.provider == "triton", sel
    else:
        assert (sel.provider == "tilelang") == (table.lookup("mhc_pre", 4096, 4096).winner == "tilelang")


@pytest.mark.parametrize("T", [1, 300])
@needs_tilelang
@gpu_test
def test_gpu_pdl_off_equals_on_and_graph_replay(monkeypatch, T):
    tk = _tk()
    args = inputs.mhc_post_pre_args(T, 4096, device="cuda", norm=True, seed=1)
    assert_pdl_off_equals_on(tk.mhc_post_pre_forward, args, monkeypatch)
    # capturable: replay on new residual values written into the captured input
    fresh = inputs.mhc_post_pre_args(T, 4096, device="cuda", norm=True, seed=2)[1]
    captured = replay_on_new_input(tk.mhc_post_pre_forward, args, 1, fresh)
    expected = tk.mhc_post_pre_forward(args[0], fresh, *args[2:])
    for a, b in zip(captured, expected):
        assert torch.equal(a, b)
