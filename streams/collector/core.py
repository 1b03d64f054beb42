"""The collector's request logic, pure apart from the sealer's random nonce.

``WriteKeys`` answers "which source sent this request?" from its
``Authorization`` header. ``plan_batch`` turns a request body into an
``HttpError`` or a ``Plan``: per event, the raw record to produce (Avro,
keyed by route key) or the dead letter to produce and the reason, plus the
JSON response to send once Kafka has acknowledged all of them.

Each event goes through ``jsonform.from_json`` (the JSON form, Segment-style
names understood) and ``validate.clean`` (the same checks as ingestion), so
phones and emails are normalised and hashed here: no raw personal data is
ever written to a topic. Ingestion cleans the record again; that is
idempotent (hashed values pass through).

The collector owns receive time: ``receive_time_ms`` / ``receivedAt`` sent by
a client are ignored, so a client cannot make a stale or far-future event
look fresh. (History with old event times goes through the importer.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from streams import avro
from streams.deadletter import records as dead_letters
from streams.deadletter.sealing import Sealer
from streams.ingest.validate import Policy, Rejected, clean, labels, route_key
from streams.touchpoint import jsonform
from streams.touchpoint.taxonomy import PERSONAL_IDENTIFIERS

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Top-level keys of a batch besides "batch": defaults for every event that lacks them.
BATCH_DEFAULTS = ("context", "channel", *jsonform.ENVELOPE)
# Segment transport keys, dropped wherever they appear: not event content (writeKey is a secret).
TRANSPORT_KEYS = ("writeKey", "integrations")
# Times a client may not set: the collector stamps receive time itself.
RECEIVE_KEYS = ("receive_time_ms", "receive_time", "receivedAt")
BATCH_KEYS = frozenset({"batch", "sentAt", *BATCH_DEFAULTS, *TRANSPORT_KEYS})


# --------------------------------------------------------------------------- auth

class WriteKeyError(ValueError):
    """TOUCHLINE_COLLECTOR_WRITE_KEYS cannot be used."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class WriteKeys:
    """Per-source write keys; a source may hold several (key rotation)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        sources_of: dict[str, set[str]] = {}
        for source, key in pairs:
            if not SOURCE_NAME.match(source):
                raise WriteKeyError(f"source name {source!r}: letters, digits, '_', '.', '-' only (64 at most)")
            if not key:
                raise WriteKeyError(f"source {source!r} has an empty write key")
            sources_of.setdefault(key, set()).add(source)
        shared = sorted(s for srcs in sources_of.values() if len(srcs) > 1 for s in srcs)
        if shared:
            raise WriteKeyError(f"one write key is given to several sources: {', '.join(shared)}")
        # Digests compared in constant time: neither a key's content nor its length leaks.
        self._digests = [(_digest(k), next(iter(s))) for k, s in sources_of.items()]
        self.sources = frozenset(s for _, s in self._digests)

    @classmethod
    def parse(cls, text: str) -> WriteKeys:
        """From "source:key,source2:key2" (a key may itself contain ':')."""
        pairs = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            source, sep, key = item.partition(":")
            if not sep:
                raise WriteKeyError(f"{item[:3]}…: expected source:key")
            pairs.append((source.strip(), key.strip()))
        return cls(pairs)

    def source_of_key(self, key: str) -> str | None:
        wanted = _digest(key)
        found = None
        for digest, source in self._digests:  # no early exit: same time whichever key matches
            if hmac.compare_digest(digest, wanted):
                found = source
        return found

    def source_for(self, authorization: str | None) -> str | None:
        """The source a request's Authorization header proves, or None.

        ``Basic base64(writeKey + ":")`` (Segment's convention: the write key is the
        user name, the password empty) or ``Bearer writeKey``.
        """
        key = presented_key(authorization)
        return None if key is None else self.source_of_key(key)


def presented_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class HttpError:
    status: int
    error: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 512 * 1024
    max_batch: int = 500


@dataclass(frozen=True)
class Accepted:
    index: int
    event_id: str
    key: bytes  # the route key: one cookie's events stay in order on one raw partition
    value: bytes  # Avro Touchpoint, Confluent framing
    channel: str
    type: str

    def result(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "status": "accepted"}


@dataclass(frozen=True)
class DeadLettered:
    index: int
    event_id: str | None
    reason: str
    message: str
    channel: str
    type: str
    record: dict[str, Any]  # the DeadLetter record, payload sealed

    @cached_property
    def _encoded(self) -> tuple[bytes, bytes]:
        return dead_letters.encode(self.record)

    @property
    def key(self) -> bytes:
        return self._encoded[0]

    @property
    def value(self) -> bytes:
        return self._encoded[1]

    def result(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "status": "rejected",
                "reason": self.reason, "message": self.message}


@dataclass
class Plan:
    source: str
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[DeadLettered] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        results = [a.result() for a in self.accepted] + [d.result() for d in self.rejected]
        return {"accepted": len(self.accepted), "rejected": len(self.rejected),
                "results": sorted(results, key=lambda r: int(r["index"]))}


# --------------------------------------------------------------------------- batch

def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes, limits: Limits) -> tuple[list[Any], dict[str, Any]] | HttpError:
    """(events, batch-level defaults) from a request body, or the HTTP error."""
    if len(body) > limits.max_body_bytes:
        return HttpError(413, "body_too_large", f"request body is larger than {limits.max_body_bytes} bytes")
    try:
        doc = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return HttpError(400, "invalid_json", f"the body is not JSON: {str(exc)[:200]}")
    if not isinstance(doc, dict):
        return HttpError(400, "invalid_batch", 'the body must be a JSON object {"batch": [event, ...]}')
    unknown = sorted(set(doc) - BATCH_KEYS)
    if unknown:
        return HttpError(400, "invalid_batch", f"unknown top-level field(s): {', '.join(unknown)}")
    events = doc.get("batch")
    if not isinstance(events, list):
        return HttpError(400, "invalid_batch", '"batch" must be a list of events')
    if len(events) > limits.max_batch:
        return HttpError(400, "batch_too_large", f"{len(events)} events in one batch, limit {limits.max_batch}")
    defaults = {k: doc[k] for k in BATCH_DEFAULTS if doc.get(k) is not None}
    if "context" in defaults and not isinstance(defaults["context"], dict):
        return HttpError(400, "invalid_batch", '"context" must be an object')
    return events, defaults


def event_bytes(event: Any) -> bytes:
    """The event as the client sent it (canonical JSON of the parsed value), for its dead letter."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def collector_dead_letter_id(source: str, event_id: str | None, payload: bytes) -> str:
    """The id of an HTTP event's dead letter (it has no Kafka coordinates for
    ``deadletter.records.dead_letter_id``). Deterministic: the same event sent
    again (a retry) gets the same id; two different ones never do."""
    digest = hashlib.sha256(payload).hexdigest()[:32]
    return f"collector/{source}/{(event_id or '-')[:128]}/{digest}"


def redact(message: str, event: Any) -> str:
    """A rejection message without the event's raw phone or email in it.

    Messages travel in plaintext (the response, the dead letter's detail, ClickHouse);
    a type error such as "identifiers.phone: 13800138000 is not a string" would
    otherwise carry the number there.
    """
    if not isinstance(event, dict):
        return message
    ids = event.get("identifiers")
    values = [ids.get(k) for k in PERSONAL_IDENTIFIERS] if isinstance(ids, dict) else []
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        text = str(value).strip() if not isinstance(value, dict | list) else json.dumps(value)
        if len(text) >= 3:
            message = message.replace(repr(value), "<redacted>").replace(text, "<redacted>")
    return message


def _event_id(event: Any) -> str | None:
    if not isinstance(event, dict):
        return None
    value = event.get("event_id", event.get("messageId"))
    return value if isinstance(value, str) and value.strip() else None


def plan_batch(body: bytes, source: str, now_ms: int, policy: Policy, sealer: Sealer,
               limits: Limits = Limits()) -> Plan | HttpError:
    parsed = parse_body(body, limits)
    if isinstance(parsed, HttpError):
        return parsed
    events, top = parsed
    defaults = {"source_app": source, **{k: v for k, v in top.items() if k != "context"}}
    plan = Plan(source)
    for index, event in enumerate(events):
        if isinstance(event, dict):
            event = {k: v for k, v in event.items() if k not in TRANSPORT_KEYS}
        outcome = _one(event, now_ms, policy, defaults, top.get("context"), index)
        if isinstance(outcome, Accepted):
            plan.accepted.append(outcome)
        else:
            reason, message, channel, kind = outcome
            message = redact(message, event)
            payload = event_bytes(event)
            event_id = _event_id(event)
            # An HTTP event has no Kafka coordinates: its dead letter is named deterministically.
            record = dead_letters.build(
                sealer, reason=reason, detail=message, topic=f"collector/{source}", partition=0,
                offset=index, payload=payload, failed_at_ms=now_ms,
                name=collector_dead_letter_id(source, event_id, payload),
            )
            plan.rejected.append(DeadLettered(index, event_id, reason, message, channel, kind, record))
    return plan


def _one(event: Any, now_ms: int, policy: Policy, defaults: dict[str, Any],
         context: dict[str, Any] | None, index: int) -> Accepted | tuple[str, str, str, str]:
    """An event's raw record, or (reason, message, channel, type) of its rejection."""
    channel, kind = labels({**defaults, **event} if isinstance(event, dict) else event)
    if isinstance(event, dict):
        event = {k: v for k, v in event.items() if k not in RECEIVE_KEYS}
        if context and (event.get("context") is None or isinstance(event.get("context"), dict)):
            event["context"] = {**context, **(event.get("context") or {})}
    try:
        tp = jsonform.from_json(event, received_ms=now_ms, defaults=defaults)
    except jsonform.JsonEventError as exc:
        return exc.reason, exc.message, channel, kind
    cleaned = clean(tp, policy)
    if isinstance(cleaned, Rejected):
        return cleaned.reason, cleaned.detail, cleaned.channel, cleaned.type
    try:
        value = avro.encode(avro.TOUCHPOINT, cleaned)
    except (ValueError, TypeError, AttributeError) as exc:  # a value from_json let through but Avro refuses
        return "invalid_field", f"not encodable as a Touchpoint: {str(exc)[:300]}", cleaned["channel"], cleaned["type"]
    if len(value) > policy.max_record_bytes:
        return "oversize", f"{len(value)} bytes as Avro, limit {policy.max_record_bytes}", cleaned["channel"], cleaned["type"]
    key = route_key(cleaned["identifiers"])
    assert key is not None  # clean() rejects events without a usable identifier
    return Accepted(index, cleaned["event_id"], key.encode(), value, cleaned["channel"], cleaned["type"])
