"""Plain-text tables and number formats for terminals (no dependencies, no colour codes).

Cells are strings; a column is right-aligned when every non-empty cell in it looks like a number
(so counts and percentages line up). Long cells are cut with an ellipsis at ``max_width`` so that
one long source line does not wrap the whole table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

_NUMERIC = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?\s*(%|[KMGT]?i?B|x|ms|s)?(\s*\(.*\))?$", re.I)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as memory is counted)."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"  # pragma: no cover


def pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def sci(x: float | None) -> str:
    """Errors: '0', '3.1e-04', 'n/a'."""
    if x is None:
        return "n/a"
    if x != x:  # NaN
        return "nan"
    if x == 0:
        return "0"
    if abs(x) >= 0.01 and abs(x) < 1000:
        return f"{x:.3g}"
    return f"{x:.1e}"


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


@dataclass
class Table:
    headers: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    max_width: int = 60          # per cell
    title: str = ""
    left: Sequence[int] = ()     # columns kept left-aligned even when they look numeric (bucket lists)

    def add(self, *cells: object) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])

    def render(self) -> str:
        cols = len(self.headers)
        rows = [[shorten(c, self.max_width) for c in (r + [""] * cols)[:cols]] for r in self.rows]
        widths = [len(h) for h in self.headers]
        for r in rows:
            widths = [max(w, len(c)) for w, c in zip(widths, r)]
        numeric = [i not in self.left and all(not r[i] or _NUMERIC.match(r[i]) for r in rows) and any(r[i] for r in rows)
                   for i in range(cols)]

        def fmt(cells: Iterable[str]) -> str:
            out = []
            for i, c in enumerate(cells):
                out.append(c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]))
            return "  ".join(out).rstrip()

        lines = []
        if self.title:
            lines.append(self.title)
        lines.append(fmt(self.headers))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(fmt(r) for r in rows)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def compress_paths(paths: Iterable[str], limit: int = 6) -> str:
    """['layers.0.attn', 'layers.1.attn', 'layers.3.attn'] -> 'layers.{0..1,3}.attn'.

    Paths that differ only in a layer index are folded into one template with index ranges;
    at most ``limit`` templates are shown, then '+N more'.
    """
    templates: dict[str, list[int]] = {}
    order: list[str] = []
    for p in paths:
        m = re.search(r"(?:^|\.)layers\.(\d+)(?=\.|$)", p)
        if m:
            key = p[: m.start(1)] + "{}" + p[m.end(1):]
            num = int(m.group(1))
        else:
            key, num = p or "(root)", -1
        if key not in templates:
            templates[key] = []
            order.append(key)
        if num >= 0:
            templates[key].append(num)
    parts = []
    for key in order[:limit]:
        nums = sorted(set(templates[key]))
        parts.append(key.replace("{}", "{" + ranges(nums) + "}") if nums and len(nums) > 1
                     else key.replace("{}", str(nums[0])) if nums else key)
    if len(order) > limit:
        parts.append(f"+{len(order) - limit} more")
    return ", ".join(parts)


def ranges(nums: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2,5,7..8'."""
    out = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}..{nums[j]}")
        i = j + 1
    return ",".join(out)
