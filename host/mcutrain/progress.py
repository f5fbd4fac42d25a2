"""A one-line progress bar on stderr (no dependency): redrawn in place on a terminal,
a line per quarter otherwise (logs and CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MB"


class ProgressBar:
    """Call with (done, total) as work progresses; close() ends the line."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self._first: int | None = None
        self._quarter = -1
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if self._first is None:
            self._first = done
            self.t0 = time.monotonic()
        now = time.monotonic()
        if self.tty:
            if done < total and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            self.stream.write("\r" + self.render(done, total))
            self._drawn = True
        else:
            quarter = 4 * done // total if total else 4
            if quarter > self._quarter:
                self._quarter = quarter
                self.stream.write(self.render(done, total) + "\n")
        self.stream.flush()

    def render(self, done: int, total: int) -> str:
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.t0
        rate = (done - (self._first or 0)) / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.label} [{bar}] {frac * 100:5.1f}% "
            f"{human_bytes(done)}/{human_bytes(total)} {human_bytes(rate)}/s"
        )

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
