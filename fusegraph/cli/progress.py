"""Progress lines on stderr for long work (matching a 61-layer model takes a while).

On a terminal one line is rewritten in place; otherwise (CI logs, pipes) a line is printed at most
every ``interval`` seconds and at the end, so logs stay short. stdout is never touched: it carries
the report.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, *, stream: TextIO | None = None, interval: float = 2.0,
                 enabled: bool = True):
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = float("-inf")  # the first update always prints
        self._start = time.monotonic()
        self._open_line = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        """The ``progress(done, total, what)`` callback of ``fusegraph.compile``."""
        if not self.enabled:
            return
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < (0.1 if self.tty else self.interval):
            return
        self._last = now
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        text = f"{self.label}: {pct} [{done}/{total}] {what}".rstrip()
        if self.tty:
            width = 100
            self.stream.write("\r" + text[:width].ljust(width))
            self._open_line = True
            if final:
                self.stream.write("\n")
                self._open_line = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A one-off status line (``compiling tiny for sm90 ...``)."""
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(f"{message}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start
