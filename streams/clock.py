"""Injectable time. Every delay, window and timer reads a Clock, never time.time().

Production uses SystemClock. Unit tests use ManualClock, whose time moves only
when told. Across processes (TOUCHLINE_CLOCK=manual) no clock object moves
time at all: event times and clock-tick records on the raw topic do (see
streams/ingest/control.py), so no test waits on wall time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


class ManualClock:
    """A clock that only moves forward, and only when advanced."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance_to(self, t_ms: int) -> None:
        self._now = max(self._now, t_ms)
