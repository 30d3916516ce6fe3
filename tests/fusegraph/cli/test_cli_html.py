"""The compare HTML: two SVG graphs per site, and (with Chromium installed) that a browser shows both.

The page is built in-process from the toy model compiled by the real compiler (the same renderer
``fusegraph compare -o DIR`` uses), then screenshot by headless Chromium when it is installed.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import fusegraph
from cli_toy_model import make
from fusegraph.cli import model_source
from fusegraph.cli.compare import compare_compiled
from fusegraph.render.compare_html import render_html
from fusegraph.render.graph_svg import STYLE
from png_decode import decode_png


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    model, inputs = make(tokens=5)
    source = model_source.ModelSource("toy", "toy", model, inputs, inputs[0].device, 5, 0)
    compiled = fusegraph.compile(model, target="cpu", example_inputs=inputs)
    result = compare_compiled(compiled, source, "cpu")
    path = tmp_path_factory.mktemp("html") / "compare.html"
    path.write_text(render_html(result, compiled))
    return path, result


def test_page_has_two_svg_graphs_per_site(compare_page):
    path, result = compare_page
    html = path.read_text()
    assert result.sites and result.passed
    assert html.count("<svg") == 2 * len(result.sites)
    for s in result.sites:
        assert f'id="site-{s.index}"' in html
        for name in s.site.replaced:
            assert f">{name}</text>" in html or "folded" in html  # every removed node is drawn (or folded)
        assert f">{s.site.fused_node}</text>" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "headless_shell"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _hex(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_chromium_shows_both_graphs(compare_page, tmp_path):
    path, _ = compare_page
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1300,1900", f"--screenshot={shot}", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    img = decode_png(shot.read_bytes())[..., :3].astype(np.int32)
    assert img.std() > 10  # not a blank page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50

    def where(kind: str) -> np.ndarray:
        color = np.array(_hex(STYLE[kind][0]))
        return np.argwhere((np.abs(img - color) <= 2).all(-1))

    removed, fused = where("removed"), where("fused")
    assert len(removed) > 500, "the unfused graph's removed nodes are not visible"
    assert len(fused) > 200, "the fused call is not visible"
    # side by side: the fused graph is drawn to the right of the unfused one
    first_pair_rows = removed[:, 0].min(), removed[:, 0].max()
    fused_in_pair = fused[(fused[:, 0] >= first_pair_rows[0]) & (fused[:, 0] <= first_pair_rows[1])]
    assert len(fused_in_pair) and fused_in_pair[:, 1].mean() > removed[:, 1].mean()
