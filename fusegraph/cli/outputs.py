"""Output paths, checked before any long work starts (a typo should not cost a 60 s compile)."""
from __future__ import annotations

import os
from pathlib import Path

from fusegraph.cli.errors import UsageError


def check_output_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"output {path!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path!r}: directory {str(parent)!r} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"cannot write {path!r}: permission denied")
    if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path!r}: directory {str(parent)!r} is not writable")
    return p


def check_output_dir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"output directory {path!r} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path!r}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {path!r}: permission denied")
    return p


def write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
