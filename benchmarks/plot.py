"""Plot and README headline of ``benchmarks.e2e`` results (from its JSON).

``python -m benchmarks.plot RESULTS.json [MORE.json ...] [--plot FILE] [--markdown FILE]``

Several result files (e.g. a decode run and a prefill run made in separate GPU slots) are merged:
their rows are concatenated, later files win for the same (layer, T, variant, PDL).

* ``plot(data, path)``: time per layer vs T, one panel per layer (compress ratio), one line per
  variant (eager, torch.compile, fusegraph, fusegraph + torch.compile; fused variants with PDL on
  when measured). The time is each row's headline time: CUDA-graph replay where measured (decode
  T), else launched from Python (prefill T). Log-log axes. A ``.png`` path is drawn with
  matplotlib when it is installed; otherwise (or for a ``.svg`` path) a self-contained SVG is
  written next to it, drawn here without dependencies.
* ``markdown(data)``: the headline table for the README: per T, the per-layer time of each variant
  (mean over the layers), the speedups over torch.compile, the fusable-part numbers and the goals;
  then every row per layer (time, kernel launches, share of GPU time in fused ops, PDL, compile
  time) and the run's notes (why something was skipped, how prefill was compiled).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Optional, Sequence

VARIANT_LABELS = {"eager": "eager", "compile": "torch.compile", "fusegraph": "fusegraph",
                  "fusegraph_compile": "fusegraph + torch.compile"}
COLORS = {"eager": "#7f7f7f", "compile": "#1f77b4", "fusegraph": "#d62728", "fusegraph_compile": "#2ca02c"}


# -- data ----------------------------------------------------------------------------------------
def load(paths: Sequence[str]) -> dict[str, Any]:
    """Merge result files: rows, fusable parts and checks concatenated (later files win on a key)."""
    merged: dict[str, Any] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if not merged:
            merged = data
            continue
        for key, ident in (("rows", ("layer", "T", "variant", "pdl")), ("fusable", ("layer", "T")),
                           ("checks", ("name", "layer", "T"))):
            keep = {tuple(r[k] for k in ident): r for r in merged.get(key, [])}
            for r in data.get(key, []):
                keep[tuple(r[k] for k in ident)] = r
            merged[key] = list(keep.values())
        # One row per goal: a measured verdict replaces "not measured" and an earlier file's verdict
        # (later files win, as for the rows the verdict is computed from).
        goals: dict[str, dict[str, Any]] = {}
        for g in merged.get("goals", []) + data.get("goals", []):
            if g["name"] not in goals or g.get("passed") is not None:
                goals[g["name"]] = g
        merged["goals"] = list(goals.values())
        merged["notes"] = list(dict.fromkeys(merged.get("notes", []) + data.get("notes", [])))
        merged["layers"] = merged.get("layers") or data.get("layers")
        # a merge of runs of different commits names them all (the plot title and the markdown)
        meta, other = merged.setdefault("meta", {}), data.get("meta", {})
        commits = [c for c in str(meta.get("git_commit", "")).split("+") if c]
        new = str(other.get("git_commit", ""))
        if new and new not in commits:
            meta["git_commit"] = "+".join(commits + [new])
    return merged


def _commits(meta: dict[str, Any], width: int) -> str:
    """``abc1234`` or, for merged runs, ``abc1234+def5678`` (hashes cut to ``width``)."""
    return "+".join(c[:width] for c in str(meta.get("git_commit", "?")).split("+"))


def _headline(row: dict[str, Any]) -> Optional[float]:
    if row.get("skipped") or row.get("error"):
        return None
    return row.get("graph_us") if row.get("graph_us") is not None else row.get("stream_us")


def _pdl_choice(rows: list[dict[str, Any]]) -> Optional[bool]:
    """PDL setting shown for fused variants: on when any row was measured with it."""
    return True if any(r.get("pdl") is True for r in rows) else False


def series(data: dict[str, Any]) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """layer -> variant -> [(T, headline us)] sorted by T."""
    rows = data.get("rows", [])
    pdl = _pdl_choice(rows)
    out: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        if r["variant"] in ("fusegraph", "fusegraph_compile") and r.get("pdl") not in (pdl, None):
            continue
        us = _headline(r)
        if us is None:
            continue
        out.setdefault(r["layer"], {}).setdefault(r["variant"], []).append((r["T"], us))
    for per_layer in out.values():
        for v in per_layer:
            per_layer[v].sort()
    return out


def _layer_title(data: dict[str, Any], layer: int) -> str:
    ratio = next((l["ratio"] for l in data.get("layers", []) if l["index"] == layer), None)
    return f"layer {layer} (compress ratio {ratio})" if ratio is not None else f"layer {layer}"


def _subtitle(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    model = meta.get("model", {})
    return (f"DSV4 {model.get('preset', '?')} layers on {meta.get('device', '?')}, commit "
            f"{_commits(meta, 10)}; decode T: CUDA-graph replay, prefill T: stream")


# -- plot ----------------------------------------------------------------------------------------
def plot(data: dict[str, Any], path: str) -> str:
    """Write the plot; returns the path written (``.svg`` instead of ``.png`` without matplotlib)."""
    if path.lower().endswith(".png"):
        try:
            return _plot_matplotlib(data, path)
        except ImportError:
            path = path[:-4] + ".svg"
    with open(path, "w") as f:
        f.write(svg(data))
    return path


def _plot_matplotlib(data: dict[str, Any], path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = series(data)
    layers = sorted(per_layer)
    fig, axes = plt.subplots(1, max(1, len(layers)), figsize=(5 * max(1, len(layers)), 4.2), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for variant, label in VARIANT_LABELS.items():
            pts = per_layer[layer].get(variant)
            if pts:
                ax.plot([t for t, _ in pts], [u for _, u in pts], marker="o", label=label, color=COLORS[variant])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens T")
        ax.set_ylabel("time per layer (us)")
        ax.set_title(_layer_title(data, layer))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(_subtitle(data), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def svg(data: dict[str, Any]) -> str:
    """The same plot as a dependency-free SVG document."""
    per_layer = series(data)
    layers = sorted(per_layer) or [0]
    pw, ph, left, top, bottom, right = 380, 300, 60, 40, 45, 15
    width, height = pw * len(layers), ph + 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="12">{_esc(_subtitle(data))}</text>']
    for k, layer in enumerate(layers):
        pts_all = [p for pts in per_layer.get(layer, {}).values() for p in pts]
        x0, y0 = k * pw + left, top + 10
        w, h = pw - left - right, ph - top - bottom
        parts.append(f'<text x="{x0 + w / 2}" y="{y0 - 6}" text-anchor="middle">{_esc(_layer_title(data, layer))}</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
        if not pts_all:
            parts.append(f'<text x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle">no data</text>')
            continue
        ts = [t for t, _ in pts_all]
        us = [u for _, u in pts_all if u > 0]
        tlo, thi = math.log2(min(ts)), math.log2(max(ts))
        ulo, uhi = math.log10(min(us)), math.log10(max(us))
        thi, uhi = (thi if thi > tlo else tlo + 1), (uhi if uhi > ulo else ulo + 1)
        uticks = _log_ticks(10 ** ulo, 10 ** uhi)
        ulo, uhi = math.log10(uticks[0]), math.log10(uticks[-1])

        def px(t: float) -> float:
            return x0 + (math.log2(t) - tlo) / (thi - tlo) * w

        def py(u: float) -> float:
            return y0 + h - (math.log10(max(u, 1e-9)) - ulo) / (uhi - ulo) * h

        for t in sorted(set(ts)):
            parts.append(f'<line x1="{px(t):.1f}" y1="{y0}" x2="{px(t):.1f}" y2="{y0 + h}" stroke="#ddd"/>')
            parts.append(f'<text x="{px(t):.1f}" y="{y0 + h + 14}" text-anchor="middle">{t}</text>')
        for u in uticks:
            parts.append(f'<line x1="{x0}" y1="{py(u):.1f}" x2="{x0 + w}" y2="{py(u):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 4}" y="{py(u) + 4:.1f}" text-anchor="end">{_num(u)}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 30}" text-anchor="middle">tokens T</text>')
        parts.append(f'<text x="{k * pw + 14}" y="{y0 + h / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 {k * pw + 14} {y0 + h / 2})">time per layer (us)</text>')
        for variant in VARIANT_LABELS:
            pts = per_layer.get(layer, {}).get(variant)
            if not pts:
                continue
            coords = " ".join(f"{px(t):.1f},{py(u):.1f}" for t, u in pts)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS[variant]}" stroke-width="2"/>')
            parts += [f'<circle cx="{px(t):.1f}" cy="{py(u):.1f}" r="3" fill="{COLORS[variant]}"/>' for t, u in pts]
    lx = 10
    for variant, label in VARIANT_LABELS.items():
        parts.append(f'<rect x="{lx}" y="{height - 18}" width="12" height="4" fill="{COLORS[variant]}"/>')
        parts.append(f'<text x="{lx + 16}" y="{height - 12}">{_esc(label)}</text>')
        lx += 30 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _num(u: float) -> str:
    return f"{u:g}" if u < 1e5 else f"1e{round(math.log10(u))}"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- markdown ------------------------------------------------------------------------------------
def _f(v: Optional[float], spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(data: dict[str, Any], detail: bool = True) -> str:
    """The README headline: per-layer time per variant and T, speedups, fusable part, goals; with
    ``detail``, every row (kernel launches, fused share, PDL, compile time) and the run's notes."""
    meta = data.get("meta", {})
    rows = data.get("rows", [])
    pdl = _pdl_choice(rows)
    n_layers = len(data.get("layers", [])) or 1
    lines = [f"Measured on {meta.get('device', '?')} (torch {meta.get('torch', '?')}, triton {meta.get('triton', '?')}), "
             f"commit `{_commits(meta, 12)}`, {meta.get('date', '?')}. Time per layer in µs, "
             f"mean over the {n_layers} layers (compress ratios "
             f"{', '.join(str(l['ratio']) for l in data.get('layers', []))}); decode T under CUDA-graph replay, "
             f"prefill T launched from Python; fused variants with PDL {'on' if pdl else 'off'}.", ""]
    head = ["T", "mode"] + [VARIANT_LABELS[v] for v in VARIANT_LABELS] + ["fusegraph vs compile",
                                                                           "fusegraph+compile vs compile"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in sorted({r["T"] for r in rows}):
        means: dict[str, Optional[float]] = {}
        mode = ""
        for v in VARIANT_LABELS:
            sel = [r for r in rows if r["T"] == T and r["variant"] == v and r.get("pdl") in (pdl, None)]
            vals = [_headline(r) for r in sel]
            ok = len(sel) == n_layers and all(x is not None for x in vals)
            means[v] = sum(vals) / n_layers if ok else None  # type: ignore[arg-type]
            if ok and not mode:
                mode = "CUDA graph" if all(r.get("graph_us") is not None for r in sel) else "stream"
        x1 = means["compile"] / means["fusegraph"] if means["compile"] and means["fusegraph"] else None
        x2 = means["compile"] / means["fusegraph_compile"] if means["compile"] and means["fusegraph_compile"] else None
        lines.append("| " + " | ".join([str(T), mode or "–"] + [_f(means[v]) for v in VARIANT_LABELS]
                                       + [_f(x1, ".2f") + "x" if x1 else "–", _f(x2, ".2f") + "x" if x2 else "–"]) + " |")
    parts = data.get("fusable", [])
    if parts:
        lines += ["", "Fusable part of a decode layer (mHC, norms, RoPE, compressor pooling, KV store), CUDA-graph "
                      "replay, µs:", "",
                  "| layer | ratio | T | eager | torch.compile | fused (PDL on) | fused (PDL off) | x torch.compile |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in sorted(parts, key=lambda p: (p["T"], p["layer"])):
            lines.append(f"| {p['layer']} | {p['ratio']} | {p['T']} | {_f(p.get('eager_graph_us'))} | "
                         f"{_f(p.get('compile_graph_us'))} | {_f(p.get('fused_graph_us'))} | "
                         f"{_f(p.get('fused_graph_us_pdl_off'))} | {_f(p.get('speedup_vs_compile'), '.2f')} |")
    goals = data.get("goals", [])
    if goals:
        lines += ["", "| goal | target | result |", "|---|---|---|"]
        for g in goals:
            status = "not measured" if g.get("passed") is None else ("pass" if g["passed"] else "FAIL")
            value = f" ({g['value']:.2f}x)" if g.get("value") is not None else ""
            lines.append(f"| {g['name']} | {g['target']} | {status}{value} |")
    if detail:
        lines += [""] + per_layer_table(data)
        notes = data.get("notes", [])
        if notes:
            lines += ["", "Notes:", ""] + [f"- {_cell(n)}" for n in notes]
    return "\n".join(lines) + "\n"


VARIANT_ORDER = list(VARIANT_LABELS)


def per_layer_table(data: dict[str, Any]) -> list[str]:
    """Every measured row: time (CUDA graph or stream), kernel launches (GPU activities of one forward),
    share of GPU time inside fused ops, PDL, compile seconds (and the T fusegraph.compile saw)."""
    rows = sorted(data.get("rows", []), key=lambda r: (r["T"], r["layer"], VARIANT_ORDER.index(r["variant"])
                                                        if r["variant"] in VARIANT_ORDER else 9, r.get("pdl") is False))
    lines = ["Per layer and variant (time: CUDA-graph replay where measured, else launched from Python):", "",
             "| layer | ratio | T | variant | PDL | time µs | mode | kernels | fused calls | fused % | compile s | "
             "rel L2 | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        us = _headline(r)
        mode = "–" if us is None else ("graph" if r.get("graph_us") is not None else "stream")
        pdl = "–" if r.get("pdl") is None else ("on" if r["pdl"] else "off")
        share = r.get("fused_share")
        compile_s = _f(r.get("compile_s"))
        at = r.get("compiled_at_T")
        if at is not None and at != r["T"] and r.get("compile_s") is not None:
            compile_s += f" (at T={at})"
        note = (f"skipped: {r['skipped']}" if r.get("skipped") else f"ERROR: {r['error']}" if r.get("error")
                else r.get("graph_error") or ("" if r.get("within_tolerance") in (True, None) else "outside tolerance"))
        lines.append("| " + " | ".join([
            str(r["layer"]), str(r["ratio"]), str(r["T"]), VARIANT_LABELS.get(r["variant"], r["variant"]), pdl,
            _f(us), mode, "–" if r.get("gpu_ops") is None else str(r["gpu_ops"]),
            "–" if r.get("fused_calls") is None else str(r["fused_calls"]),
            "–" if share is None else f"{100 * share:.0f}", compile_s,
            "–" if r.get("rel_l2") is None else f"{r['rel_l2']:.1e}", _cell(note)[:160]]) + " |")
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON written by python -m benchmarks.e2e --out")
    p.add_argument("--plot", default=None, help="plot file (.png with matplotlib, else .svg)")
    p.add_argument("--markdown", default=None, help="write the headline table here (default: print it)")
    args = p.parse_args(argv)
    data = load(args.results)
    if args.plot:
        print(f"wrote {plot(data, args.plot)}", file=sys.stderr)
    text = markdown(data)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)
        print(f"wrote {args.markdown}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
