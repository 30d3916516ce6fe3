"""Self-contained HTML pages: inline CSS, no scripts or fonts fetched from anywhere.

A report must open from a CI artifact or an e-mail attachment, offline, years later; so everything
(styles, SVG drawings) is inlined, and the page works without JavaScript (``<details>`` folds long
lists).
"""
from __future__ import annotations

from html import escape
from typing import Iterable, Sequence

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.sub { color: #5b6477; margin-bottom: 16px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f6f9; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12.5px; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 8px 0; }
.bar { display: inline-block; width: 120px; height: 10px; background: #e8ebf0; vertical-align: middle; }
.bar > span { display: block; height: 10px; background: #3b82f6; }
details { margin: 4px 0; } summary { cursor: pointer; }
.pair { display: flex; gap: 16px; align-items: flex-start; overflow-x: auto; }
.pair > figure { margin: 0; border: 1px solid #e3e6ec; padding: 8px; background: #fff; }
figcaption { font-weight: 600; margin-bottom: 6px; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 8px; border-radius: 3px; }
"""


def esc(value: object) -> str:
    return escape("" if value is None else str(value))


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
          raw: Sequence[int] = ()) -> str:
    """An HTML table; columns in ``numeric`` are right-aligned, cells in ``raw`` columns are HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            cells.append(f"<td{cls}>{c if i in raw else esc(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bar(share: float) -> str:
    width = max(0.0, min(1.0, share)) * 100
    return f'<span class="bar"><span style="width:{width:.1f}%"></span></span> {100 * share:.1f}%'
