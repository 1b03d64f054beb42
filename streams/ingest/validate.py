"""Pure validation of raw records: a touchpoint, or a dead-letter reason.

No Kafka here: the ingest service calls ``accept`` for every raw record and
routes the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams import avro
from streams.touchpoint.taxonomy import CHANNELS, EVENT_TYPES, ROUTE_IDENTIFIERS, is_junk

# Events dated further ahead than this are clock errors, not touchpoints.
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def route_key(identifiers: dict[str, Any]) -> str | None:
    """The device-like identifier that decides an event's identity partition."""
    for kind in ROUTE_IDENTIFIERS:
        value = identifiers.get(kind)
        if not is_junk(value):
            return f"{kind}:{value}"
    return None


def check(event: dict[str, Any]) -> Rejected | None:
    """Semantic checks on a decoded touchpoint; None means valid."""
    if not event["event_id"] or is_junk(event["event_id"]):
        return Rejected("invalid_event", "event_id is empty")
    if event["type"] not in EVENT_TYPES:
        return Rejected("invalid_event", f"unknown event type {event['type']!r}")
    if event["channel"] not in CHANNELS:
        return Rejected("invalid_event", f"unknown channel {event['channel']!r}")
    if event["event_time_ms"] <= 0:
        return Rejected("invalid_event", "event_time_ms must be positive")
    if event["event_time_ms"] > event["receive_time_ms"] + MAX_FUTURE_SKEW_MS:
        return Rejected("invalid_event", "event_time_ms is more than a day after receive_time_ms")
    if route_key(event["identifiers"]) is None:
        return Rejected("invalid_event", "no usable identifier (all missing or junk)")
    return None


def accept(data: bytes | None) -> dict[str, Any] | Rejected:
    try:
        event = avro.decode_as(avro.TOUCHPOINT, data)  # type: ignore[arg-type]
    except avro.WireFormatError as exc:
        return Rejected(exc.reason, exc.detail)
    problem = check(event)
    return problem if problem is not None else event
