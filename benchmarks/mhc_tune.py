"""Tuning sweep of the mHC Triton kernels on one GPU: each kernel alone and whole ops, per config.

    PYTHONPATH=$PWD python3 -m benchmarks.mhc_tune --out $OUT [--groups copy,pre4k,...]

Times are medians per call under CUDA-graph replay over rotating input sets (cold L2), as in
``benchmarks/harness.py``. Every whole-op variant is also checked against the fp32 reference
(max relative L2 error over its outputs). One JSON line per measurement goes to
``OUT/mhc_tune.jsonl`` as it is taken (a run cut short still leaves its numbers); a table is
printed at the end. Each op is also timed on both implementations (``path="token"``: the
first-generation kernels, one finisher program per token; ``path="stream"``), whatever the
default for that T.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from benchmarks.harness import L2_BYTES, measure_copy_bandwidth, max_rel_err, nbytes, time_graph
from fusegraph.kernels.hc_head.reference import hc_head
from fusegraph.kernels.mhc_post_pre.reference import mhc_post_pre
from fusegraph.kernels.mhc_pre import inputs
from fusegraph.kernels.mhc_pre import triton_kernels as tk
from fusegraph.kernels.mhc_pre.reference import mhc_pre
from fusegraph.kernels.mhc_pre.triton_kernels import CollapseConfig, GemmConfig

FLASH, PRO = 4096, 7168
LARGE_T = 1024  # from here on: kernels timed alone per config (below: whole ops)


@dataclass
class Row:
    group: str
    name: str
    T: int
    D: int
    us: float
    mbytes: float
    tbps: float
    err: Optional[float] = None
    note: str = ""


class Sweep:
    def __init__(self, out_dir: str, replays: int) -> None:
        self.rows: list[Row] = []
        self.replays = replays
        self.path = os.path.join(out_dir, "mhc_tune.jsonl")
        os.makedirs(out_dir, exist_ok=True)
        self.t0 = time.time()

    def record(self, row: Row) -> Row:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
        err = "" if row.err is None else f" err {row.err:.1e}"
        print(f"[{time.time() - self.t0:6.1f}s] {row.group:10s} {row.name:44s} T={row.T:<5d} D={row.D}: "
              f"{row.us:8.2f} us {row.tbps:5.2f} TB/s{err} {row.note}", flush=True)
        return row

    def time(self, group: str, name: str, T: int, D: int, fn: Callable[..., Any], sets: list[tuple], nbytes_: int,
             check: Optional[Callable[[tuple], float]] = None, note: str = "") -> Optional[Row]:
        try:
            err = check(sets[0]) if check else None
            us = time_graph(fn, sets, self.replays)
        except Exception as exc:  # one broken variant must not stop the sweep
            print(f"  {group} {name} T={T}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            return None
        return self.record(Row(group, name, T, D, us, nbytes_ / 1e6, nbytes_ / (us * 1e-6) / 1e12, err, note))


def make_sets(make: Callable[[int], tuple]) -> list[tuple]:
    first = make(0)
    size = max(1, nbytes(first))
    n = max(2, min(64, math.ceil(2 * L2_BYTES / size)))
    return [first] + [make(i) for i in range(1, n)]


def pre_bytes(T: int, D: int, n_mix: int) -> int:
    return 2 * T * 4 * D * 2 + T * D * 2 + n_mix * 4 * D * 4


def post_pre_bytes(T: int, D: int) -> int:
    return T * D * 2 + 3 * T * 4 * D * 2 + T * D * 2 + 24 * 4 * D * 4


def err_vs(reference: Callable[..., Any], fused: Callable[..., Any]) -> Callable[[tuple], float]:
    def check(args: tuple) -> float:
        with torch.no_grad():
            return max_rel_err(fused(*args), reference(*args))
    return check


# ------------------------------------------------------------------------------------------------
# groups
# ------------------------------------------------------------------------------------------------
def group_copy(sw: Sweep, dev: torch.device) -> None:
    gbps = measure_copy_bandwidth(dev)
    sw.record(Row("copy", "copy_ eager 2GiB (harness)", 0, 0, 2 * 2 ** 31 / (gbps * 1e9) * 1e6, 2 * 2 ** 31 / 1e6,
                  gbps / 1e3))
    src = torch.empty(2 ** 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    sw.time("copy", "copy_ 1GiB under graph (old harness)", 0, 0, lambda: dst.copy_(src), [()], 2 * 2 ** 30)
    a = torch.randn(2 ** 29, device=dev, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    sw.time("copy", "bf16 mul kernel 1GiB under graph", 0, 0, lambda: torch.mul(a, 1.0, out=b), [()], 2 * 2 ** 30)
    del src, dst, a, b
    torch.cuda.empty_cache()


def _gemm_variants(T: int) -> list[GemmConfig]:
    if T >= LARGE_T:
        return [
            GemmConfig(64, 4, 4, 4, "bf16x2", sq_mode=1),        # best of sweep 1
            GemmConfig(64, 4, 4, 4, "bf16x2pre", sq_mode=1),
            GemmConfig(64, 4, 4, 4, "bf16x2pre", sq_mode=2),
            GemmConfig(64, 4, 4, 3, "bf16x2pre", sq_mode=2),
            GemmConfig(64, 4, 4, 6, "bf16x2pre", sq_mode=2),
            GemmConfig(64, 8, 4, 4, "bf16x2pre", sq_mode=2),
            GemmConfig(64, 2, 4, 4, "bf16x2pre", sq_mode=2),
            GemmConfig(128, 4, 8, 4, "bf16x2pre", sq_mode=2),
            GemmConfig(128, 2, 8, 4, "bf16x2pre", sq_mode=2),
        ]
    if T > 16:
        shapes = [(32, 16), (32, 32), (16, 16), (16, 32), (16, 64)]
    else:
        shapes = [(16, 64), (16, 128), (16, 256)]
    return [GemmConfig(bm, s, 4, 3, "tf32", early_trigger=True) for bm, s in shapes]


def _name(cfg: GemmConfig) -> str:
    return f"{cfg.block_m}/S{cfg.n_splits}/w{cfg.num_warps}/st{cfg.num_stages}/{cfg.mma}/sq{cfg.sq_mode}"


def group_pre(sw: Sweep, dev: torch.device, T: int, D: int, head: bool = False) -> None:
    """mhc_pre+norm (or hc_head+norm): both paths, kernel 1 / kernel 2 alone per config, then the best pair."""
    tag = ("head" if head else "pre") + str(T)
    n_mix = 4 if head else 24
    make_args = inputs.hc_head_args if head else inputs.mhc_pre_args
    forward = tk.hc_head_forward if head else tk.mhc_pre_forward
    reference = hc_head.reference if head else mhc_pre.reference
    sets = make_sets(lambda i: make_args(T, D, device=dev, norm=True, seed=i))
    full_bytes = pre_bytes(T, D, n_mix)
    for path in ("token", "stream"):
        def by_path(*a, path=path):
            return forward(*a, path=path)
        sw.time(tag, f"full path={path}", T, D, by_path, sets, full_bytes, err_vs(reference, by_path))
    default = tk.gemm_config(T, 4 * D, dev, n_mix=n_mix)
    sw.time(tag, f"full default ({tk.default_path(T)})", T, D, forward, sets, full_bytes, err_vs(reference, forward))

    # kernel 1 alone
    best_gemm: tuple[float, GemmConfig] = (float("inf"), default)
    for cfg in _gemm_variants(T) + [default]:
        def k1(*a, cfg=cfg):
            return tk.prenorm_mix(a[0].view(T, 4 * D), a[1], a[2], a[3], a[5], a[6], 2.0, 20, cfg)
        if T >= LARGE_T:
            r = sw.time(tag, f"k1 {_name(cfg)}", T, D, k1, sets, T * 4 * D * 2 + n_mix * 4 * D * 4)
            if r and r.us < best_gemm[0]:
                best_gemm = (r.us, cfg)
        else:  # small T: whole op per config (launch overlap matters)
            def full(*a, cfg=cfg):
                return forward(*a, gemm_cfg=cfg, path="stream")
            r = sw.time(tag, f"full {_name(cfg)}", T, D, full, sets, full_bytes, err_vs(reference, full))
            if r and r.us < best_gemm[0] and (r.err or 0) < 2e-3:
                best_gemm = (r.us, cfg)

    # kernel 2 alone
    best_col: tuple[float, CollapseConfig] = (float("inf"), tk.collapse_config(D))
    if T >= LARGE_T:
        pres = [tk.prenorm_mix(a[0].view(T, 4 * D), a[1], a[2], a[3], a[5], a[6], 2.0, 20, default)[0] for a in sets]
        col_sets = [a + (p,) for a, p in zip(sets, pres)]
        bd = tk.collapse_config(D).block_d
        for warps in (4, 8):
            cfg = CollapseConfig(bd, 1, warps)

            def k2(*a, cfg=cfg):
                return tk.collapse(a[0], a[-1], a[4], a[7], True, cfg)
            r = sw.time(tag, f"k2 collapse bd{bd}/w{warps}", T, D, k2, col_sets, T * 4 * D * 2 + T * D * 2)
            if r and r.us < best_col[0]:
                best_col = (r.us, cfg)
        del pres, col_sets

    def best(*a):
        return forward(*a, gemm_cfg=best_gemm[1], collapse_cfg=best_col[1], path="stream")
    sw.time(tag, f"stream best {best_gemm[1]} {best_col[1]}", T, D, best, sets, full_bytes, err_vs(reference, best))


def group_post_pre(sw: Sweep, dev: torch.device, T: int, D: int) -> None:
    tag = f"postpre{T}"
    sets = make_sets(lambda i: inputs.mhc_post_pre_args(T, D, device=dev, norm=True, seed=i))
    full_bytes = post_pre_bytes(T, D)
    ref = mhc_post_pre.reference
    fwd = tk.mhc_post_pre_forward
    sw.time(tag, f"full default ({tk.default_path(T)})", T, D, fwd, sets, full_bytes, err_vs(ref, fwd))
    for path in ("token", "stream"):
        def by_path(*a, path=path):
            return fwd(*a, path=path)
        sw.time(tag, f"full path={path}", T, D, by_path, sets, full_bytes, err_vs(ref, by_path))
    sw.time(tag, "mhc_post alone (reference point)", T, D, lambda *a: tk.mhc_post_forward(*a[:4]), sets,
            T * D * 2 + 2 * T * 4 * D * 2)


GROUPS = ("copy", "pre4k", "head4k", "postpre4k", "pro4k", "small")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/mhc_tune"))
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--replays", type=int, default=20)
    args = p.parse_args()
    dev = torch.device("cuda", torch.cuda.current_device())
    sw = Sweep(args.out, args.replays)
    print(torch.cuda.get_device_name(dev), torch.__version__, flush=True)
    groups = args.groups.split(",")
    with torch.no_grad():
        if "copy" in groups:
            group_copy(sw, dev)
        if "pre4k" in groups:
            group_pre(sw, dev, 4096, FLASH)
        if "head4k" in groups:
            group_pre(sw, dev, 4096, FLASH, head=True)
        if "postpre4k" in groups:
            group_post_pre(sw, dev, 4096, FLASH)
        if "small" in groups:
            for T in (1, 32):
                group_pre(sw, dev, T, FLASH)
                group_pre(sw, dev, T, FLASH, head=True)
                group_post_pre(sw, dev, T, FLASH)
        if "pro4k" in groups:
            group_pre(sw, dev, 4096, PRO)
            group_post_pre(sw, dev, 4096, PRO)
    print("\n== summary ==")
    for r in sw.rows:
        err = "" if r.err is None else f"{r.err:.1e}"
        print(f"{r.group:10s} {r.name:60.60s} {r.us:9.2f} us {r.tbps:5.2f} TB/s {err}")


if __name__ == "__main__":
    main()
