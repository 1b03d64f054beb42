"""The import's progress bar on stderr.

On a terminal it redraws one line (rows, rows/s, percent of the file read) at
most ``MAX_REDRAWS_PER_S`` times a second. Off a terminal (a log file, CI) it
stays quiet until ``finish``, which writes one final line either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

MAX_REDRAWS_PER_S = 4
BAR_WIDTH = 24


class Progress:
    def __init__(self, stream: TextIO, label: str, *, tty: bool | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty() if tty is None else tty
        self._monotonic = monotonic
        self._started = monotonic()
        self._last_draw = float("-inf")
        self.redraws = 0

    def line(self, rows: int, fraction: float) -> str:
        elapsed = max(self._monotonic() - self._started, 1e-9)
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(fraction * BAR_WIDTH))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"{self.label} [{bar}] {fraction * 100:5.1f}%  {rows:,} rows  {rows / elapsed:,.0f} rows/s"

    def update(self, rows: int, fraction: float) -> None:
        if not self.tty:
            return
        now = self._monotonic()
        if now - self._last_draw < 1.0 / MAX_REDRAWS_PER_S:
            return
        self._last_draw = now
        self.redraws += 1
        self.stream.write("\r" + self.line(rows, fraction) + "\x1b[K")
        self.stream.flush()

    def finish(self, rows: int, fraction: float = 1.0) -> None:
        prefix = "\r" if self.tty else ""
        self.stream.write(prefix + self.line(rows, fraction) + ("\x1b[K" if self.tty else "") + "\n")
        self.stream.flush()
