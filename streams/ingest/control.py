"""Clock-tick control records on the raw topic.

With ``TOUCHLINE_CLOCK=manual`` nothing moves Touchline's time but event times
and these ticks. A tick is a record whose header ``touchline-control`` is
``clock`` and whose value is the new time as 8 big-endian bytes of epoch
milliseconds. Because a tick travels in-band, on the same partition and after
the events produced before it, it can never overtake them: a test or the
simulator that sends a tick to every raw partition knows every earlier event
is processed before time moves. Ticks are not touchpoints: they are neither
counted as input nor dead-lettered. Under ``TOUCHLINE_CLOCK=wall`` they are
ignored, so a stray tick cannot fire a production timer early.
"""

from __future__ import annotations

import struct

CONTROL_HEADER = "touchline-control"
CLOCK = b"clock"
_TIME = struct.Struct(">q")


def tick_value(t_ms: int) -> bytes:
    return _TIME.pack(t_ms)


def tick_headers() -> list[tuple[str, bytes]]:
    return [(CONTROL_HEADER, CLOCK)]


def tick_time(headers: list[tuple[str, bytes]] | None, value: bytes | None) -> int | None:
    """The tick's time if this record is a clock tick, else None."""
    if not headers:
        return None
    for name, v in headers:
        if name == CONTROL_HEADER and v == CLOCK and value is not None and len(value) == 8:
            return int(_TIME.unpack(value)[0])
    return None
