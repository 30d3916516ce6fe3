"""Helpers for driving the installed ``fusegraph`` console script as a user would."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOY = "cli_toy_model:make"                 # a factory the real compiler fuses (tests/.../cli_toy_model.py)
TOY_WITH_CONFIG = "cli_toy_model:make_with_config"


def console_script() -> str:
    """The ``fusegraph`` script installed next to this interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / "fusegraph"
    if beside.exists():
        return str(beside)
    found = shutil.which("fusegraph")
    if found is None:
        pytest.skip("the fusegraph console script is not installed")
    return found


def run_cli(*args: str, cwd: Path | str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``fusegraph ARGS`` in ``cwd``; this folder is importable so the toy factories resolve."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), full_env.get("PYTHONPATH", "")) if p)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # The CLI is tested with the torch providers: Triton under the CPU interpreter would make a
    # whole-model run take minutes, and the kernels have their own tests.
    full_env.pop("TRITON_INTERPRET", None)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    return subprocess.run([console_script(), *args], cwd=str(cwd or HERE), env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def show(proc: subprocess.CompletedProcess) -> str:
    """For assertion messages: what the command printed."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
