"""``fusegraph demo`` (README's first command): the tiny part, as a user runs it.

The flash/pro planning part is covered by test_cli_report's flash test; ``--presets`` with no
names keeps this test to the tiny model.
"""
from __future__ import annotations

import re

import pytest

from cli_helpers import run_cli, show


@pytest.mark.slow
def test_demo_tiny_part():
    proc = run_cli("demo", "--presets", "-q")
    assert proc.returncode == 0, show(proc)
    out = proc.stdout
    assert out.startswith("== 1. tiny on the CPU: fused vs unfused ==")
    assert re.search(r"^output\s+float32", out, re.M)            # the model-output table
    assert re.search(r"^\s*#\s+pattern\s+module\s+provider", out, re.M)  # the sites table
    assert "PASS: every output and site within tolerance" in out
    assert re.search(r"^demo finished in [\d.]+ s$", out, re.M)
