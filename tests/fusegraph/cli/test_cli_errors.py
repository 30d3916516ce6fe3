"""Bad input: one line on stderr, exit code 2, no traceback, nothing on stdout.

The main cases run the console script (concurrently: each is a fresh process that fails before
compiling anything); the rest call ``main()`` in this process, which is the same code path after
the interpreter starts, and saves a torch import per case.
"""
from __future__ import annotations

import os
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_helpers import TOY, run_cli, show
from fusegraph.cli.main import main

FACTORIES = '''
import torch


def boom(tokens=8):
    raise ValueError("no weights here")


def wrong():
    return 42


def not_a_module():
    return "model", (torch.zeros(2),)


def bad_inputs():
    return torch.nn.Linear(2, 2), {"x": 1}
'''


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bad_factories.py").write_text(textwrap.dedent(FACTORIES))
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a directory")
    cases = {
        "unknown preset": (["report", "nosuch"], "unknown preset 'nosuch'"),
        "factory raises": (["report", "bad_factories:boom"], "factory bad_factories:boom raised ValueError: no weights here"),
        "returns an int": (["compare", "bad_factories:wrong"], "returned a int; expected (model, example_inputs)"),
        "unwritable report": (["report", TOY, "-o", str(a_file / "r.json")], "does not exist"),
        "bad target": (["report", "tiny", "--target", "sm70"], "invalid choice: 'sm70'"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(zip(cases, pool.map(lambda c: run_cli(*c[0], cwd=tmp_path), cases.values())))
    for name, (args, needle) in cases.items():
        proc = procs[name]
        assert proc.returncode == 2, f"{name}: {show(proc)}"
        assert "Traceback" not in proc.stderr, f"{name}: {show(proc)}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"{name}: {show(proc)}"
        assert needle in lines[0], f"{name}: {show(proc)}"
        assert lines[0].startswith("fusegraph"), lines[0]
        assert proc.stdout == "", f"{name}: {show(proc)}"


IN_PROCESS = {
    "missing module": (["report", "nosuchmodule_xyz:make"], "cannot import 'nosuchmodule_xyz'"),
    "missing factory": (["report", "bad_factories:nothing"], "has no attribute 'nothing'"),
    "returns no module": (["report", "bad_factories:not_a_module"], "returned a str as the model"),
    "inputs not a tuple": (["report", "bad_factories:bad_inputs"], "example inputs of type dict"),
    "report into a dir": (["report", TOY, "-o", "."], "is a directory"),
    "compare into a file": (["compare", TOY, "-o", "plain.txt"], "exists and is not a directory"),
    "unknown op": (["report", TOY, "--provider", "no_such_op=torch"], "unknown fused op 'no_such_op'"),
    "unknown provider": (["report", TOY, "--provider", "mhc_post=nope"], "has no provider 'nope'"),
    "bad provider syntax": (["report", TOY, "--provider", "mhc_post"], "--provider takes OP=NAME"),
    "negative tokens": (["report", "tiny", "--tokens", "-3"], "--tokens must be >= 0"),
    "compare a meta preset": (["compare", "flash"], "planning only"),
    "compare for another target": (["compare", TOY, "--target", "sm90"], "use `fusegraph report --target sm90`"),
}


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_bad_input_in_process(name, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_factories.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "plain.txt").write_text("not a directory")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    sys.modules.pop("bad_factories", None)
    args, needle = IN_PROCESS[name]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("fusegraph: error: "), err
    assert out == ""
