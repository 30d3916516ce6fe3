"""Crossover tables: which mHC provider (Triton or TileLang) wins per op, hidden size and T bucket.

A table is a JSON file ``crossover_<device>.json`` next to this module, written by
``benchmarks/mhc_crossover.py`` on the GPU it names and committed with it::

    {"format": 1, "status": "measured" | "unmeasured", "device": "NVIDIA H200",
     "commit": "<git sha of the measured tree>", "date": "<UTC ISO date>", "method": "...",
     "buckets": [1, 8, 32, 64, 128, 512, 4096, 16384],
     "results": [{"op": "mhc_pre", "D": 4096, "T": 1, "triton_us": 9.9, "tilelang_us": 8.7,
                  "winner": "tilelang"}, ...]}

The TileLang providers rank above Triton (priority 30 > 20) and ask ``reason_against`` from their
``supports_args``: a call goes to TileLang only when the table for the call's device (matched on
``torch.cuda.get_device_name``) is measured and names TileLang the winner for the call's op, hidden
size D and T bucket. Anything else keeps Triton, with the reason in the compile report:

* no table for this device, or the table is ``"unmeasured"`` (the committed state until the lead
  runs the benchmark: a table must not claim what nobody measured);
* this (op, D) was not measured, or Triton won that bucket.

A T bucket is the smallest measured T >= the call's T (T past the largest uses the largest).
mhc_pre and mhc_post_pre are measured with the RMSNorm epilogue (how the model calls them); their
calls without it use the same entry. ``fusegraph.ops.prefer`` overrides the table: a provider the
innermost preference lists for the op is never held back by it (tests and benchmarks force a
provider that way).
"""
from __future__ import annotations

import functools
import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

FORMAT = 1
BUCKETS = (1, 8, 32, 64, 128, 512, 4096, 16384)
MEASURED, UNMEASURED = "measured", "unmeasured"
PROVIDERS = ("triton", "tilelang")
OPS = ("mhc_pre", "mhc_post", "mhc_post_pre")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Entry:
    op: str
    D: int
    T: int
    winner: str
    triton_us: Optional[float]
    tilelang_us: Optional[float]


@dataclass(frozen=True)
class Table:
    path: str
    device: str
    status: str
    commit: Optional[str]
    date: Optional[str]
    entries: tuple[Entry, ...] = ()

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def lookup(self, op: str, D: int, T: int) -> Optional[Entry]:
        """The entry of T's bucket for (op, D), or None when (op, D) was not measured."""
        rows = sorted((e for e in self.entries if e.op == op and e.D == D), key=lambda e: e.T)
        if not rows:
            return None
        return next((e for e in rows if e.T >= T), rows[-1])


def parse_table(data: dict[str, Any], path: str) -> Table:
    """Validate a table's JSON; raises ValueError naming the file and the problem."""
    def bad(msg: str) -> ValueError:
        return ValueError(f"crossover table {path}: {msg}")

    if data.get("format") != FORMAT:
        raise bad(f"format {data.get('format')!r}, expected {FORMAT}")
    status = data.get("status")
    if status not in (MEASURED, UNMEASURED):
        raise bad(f"status {status!r}, expected {MEASURED!r} or {UNMEASURED!r}")
    device = data.get("device")
    if not isinstance(device, str) or not device:
        raise bad("no device name")
    entries = []
    for row in data.get("results") or []:
        if row.get("op") not in OPS or row.get("winner") not in PROVIDERS:
            raise bad(f"bad result row {row}")
        entries.append(Entry(row["op"], int(row["D"]), int(row["T"]), row["winner"], row.get("triton_us"),
                             row.get("tilelang_us")))
    if status == MEASURED and (not entries or not data.get("commit") or not data.get("date")):
        raise bad("a measured table needs results, a commit and a date")
    if status == UNMEASURED and entries:
        raise bad("an unmeasured table must not carry results")
    return Table(path, device, status, data.get("commit"), data.get("date"), tuple(entries))


@functools.lru_cache(maxsize=None)
def load_tables(directory: str = HERE) -> tuple[Table, ...]:
    tables = []
    for path in sorted(glob.glob(os.path.join(directory, "crossover_*.json"))):
        with open(path) as f:
            tables.append(parse_table(json.load(f), path))
    return tuple(tables)


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> Optional[str]:
    """The name a table is matched on (``torch.cuda.get_device_name``); None off CUDA."""
    if device.type != "cuda":
        return None
    return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


def forced(op: str, provider: str) -> bool:
    """True when the innermost ``fusegraph.ops.prefer`` for ``op`` lists ``provider``."""
    from fusegraph import ops

    for layer in reversed(ops._preferences()):
        names = layer.get(op) or layer.get("*")
        if names:
            return provider in names
    return False


def reason_against(provider: str, op: str, D: int, T: int, device: torch.device,
                   tables: Optional[Iterable[Table]] = None) -> Optional[str]:
    """None when ``provider`` may take this call; else why the table keeps the other provider."""
    if forced(op, provider):
        return None
    name = device_name(device)
    if name is None:
        return "crossover: no CUDA device to match a crossover table"
    tables = tuple(load_tables() if tables is None else tables)
    table = next((t for t in tables if t.device == name), None)
    if table is None:
        known = ", ".join(sorted({t.device for t in tables})) or "none"
        return f"crossover: no table for {name!r} (tables for: {known}); Triton stays the choice"
    if table.status != MEASURED:
        return (f"crossover table {table.name} ({table.device}) is unmeasured: Triton stays the choice "
                "until benchmarks/mhc_crossover.py has been run there")
    entry = table.lookup(op, D, T)
    if entry is None:
        return f"crossover table {table.name}: {op} not measured at D = {D}; Triton stays the choice"
    if entry.winner == provider:
        return None
    return (f"crossover table {table.name} ({table.device}): {entry.winner} wins {op} at D = {D}, T bucket "
            f"{entry.T} (triton {_us(entry.triton_us)}, tilelang {_us(entry.tilelang_us)})")


def _us(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f} us"
