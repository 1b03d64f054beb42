"""Pure validation of raw records: a clean touchpoint, or a dead-letter reason.

No Kafka here: the ingest service calls ``accept`` for every raw record and
routes the outcome. A clean touchpoint has its v1 fields upgraded, its junk
identifiers removed and its phone/email normalised and hashed.

Dead-letter reasons (the ``reason`` label everywhere):

- ``oversize``: larger than the configured record limit;
- ``not_wire_format``, ``unknown_schema``, ``wrong_schema``, ``avro_decode_error``:
  not a Confluent-framed Touchpoint (streams/avro.py);
- ``unknown_event_type``, ``unknown_channel``: outside the taxonomy;
- ``missing_field``: a field the event type requires is empty;
- ``wrong_properties``: typed properties of another family than the type's;
- ``no_identifier``: no identifier left once junk values are removed;
- ``event_time_future``: event time too far after its receive time;
- ``event_time_too_old``: a live event older than the horizon (imports are exempt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams import avro
from streams.touchpoint.normalise import normalise_identifiers
from streams.touchpoint.record import upgrade_v1
from streams.touchpoint.taxonomy import (
    CHANNELS,
    EVENT_TYPES,
    FAMILIES,
    FAMILY_OF,
    REQUIRED,
    ROUTE_IDENTIFIERS,
    is_junk,
)


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str
    channel: str = "unknown"  # metric labels: known values only, "unknown" otherwise
    type: str = "unknown"


@dataclass(frozen=True)
class Policy:
    """What ingestion accepts; built from Settings by the ingest service."""

    salt: bytes
    default_country: str = "+86"
    max_record_bytes: int = 64 * 1024
    max_future_skew_ms: int = 24 * 3600 * 1000
    max_event_age_ms: int = 30 * 24 * 3600 * 1000


def route_key(identifiers: dict[str, Any]) -> str | None:
    """The device-like identifier that decides an event's identity partition."""
    for kind in ROUTE_IDENTIFIERS:
        value = identifiers.get(kind)
        if not is_junk(value):
            return f"{kind}:{value}"
    return None


def _field(event: dict[str, Any], family: dict[str, Any], path: str) -> Any:
    if path.startswith("properties."):
        return family.get(path[len("properties."):])
    return event.get(path)


def check(event: dict[str, Any], policy: Policy) -> Rejected | None:
    """Semantic checks on a decoded, normalised touchpoint; None means valid."""
    if not event["event_id"] or is_junk(event["event_id"]):
        return Rejected("missing_field", "event_id is empty")
    kind = event["type"]
    if kind not in EVENT_TYPES:
        return Rejected("unknown_event_type", f"unknown event type {kind!r}; use 'custom' for events outside the taxonomy")
    if event["channel"] not in CHANNELS:
        return Rejected("unknown_channel", f"unknown channel {event['channel']!r}")
    family_name = FAMILY_OF[kind]
    container = event.get("properties") or {}
    others = [f for f in FAMILIES if f != family_name and container.get(f) is not None]
    if others:
        return Rejected("wrong_properties", f"{kind} carries properties.{family_name}, not properties.{others[0]}")
    family = container.get(family_name) or {}
    for path in REQUIRED.get(kind, ()):
        value = _field(event, family, path)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Rejected("missing_field", f"{kind} requires {path}")
    t, received = event["event_time_ms"], event["receive_time_ms"]
    if t <= 0:
        return Rejected("event_time_too_old", f"event_time_ms {t} is not a time")
    if t > received + policy.max_future_skew_ms:
        return Rejected("event_time_future", f"event time is {(t - received) / 3.6e6:.1f} h after its receive time")
    if not event["historical"] and t < received - policy.max_event_age_ms:
        return Rejected("event_time_too_old", f"live event is {(received - t) / 8.64e7:.1f} days old (horizon "
                        f"{policy.max_event_age_ms / 8.64e7:.0f} days); import history with `touchline import`")
    if route_key(event["identifiers"]) is None:
        return Rejected("no_identifier", "no usable identifier (all missing or junk)")
    return None


def clean(event: dict[str, Any], policy: Policy) -> dict[str, Any] | Rejected:
    """Upgrade, normalise and check a decoded touchpoint."""
    event = upgrade_v1(event)
    ids, _dropped = normalise_identifiers(event["identifiers"], policy.salt, policy.default_country)
    event = {**event, "identifiers": ids}
    problem = check(event, policy)
    if problem is None:
        return event
    return Rejected(problem.reason, problem.detail, *labels(event))


def labels(event: Any) -> tuple[str, str]:
    """(channel, type) metric labels with bounded cardinality.

    Known values only, "unknown" otherwise: also for an event that is not an
    object, lacks the field, or holds a non-string there (raw JSON may).
    """
    if not isinstance(event, dict):
        return "unknown", "unknown"
    channel, kind = event.get("channel"), event.get("type")
    return (channel if isinstance(channel, str) and channel in CHANNELS else "unknown",
            kind if isinstance(kind, str) and kind in EVENT_TYPES else "unknown")


def accept(data: bytes | None, policy: Policy) -> dict[str, Any] | Rejected:
    if data is not None and len(data) > policy.max_record_bytes:
        return Rejected("oversize", f"{len(data)} bytes, limit {policy.max_record_bytes}")
    try:
        event = avro.decode_as(avro.TOUCHPOINT, data)  # type: ignore[arg-type]
    except avro.WireFormatError as exc:
        return Rejected(exc.reason, exc.detail)
    return clean(event, policy)
