"""The JSON form of a touchpoint, for the HTTP collector and the importer (pure).

One event is a JSON object::

    {"event_id": "e-1", "type": "product_added", "timestamp": "2026-11-11T20:00:00+08:00",
     "channel": "web", "identifiers": {"anonymous_id": "c-9", "phone": "138 0013 8000"},
     "context": {"campaign": "double11", "city": "Shanghai"},
     "properties": {"cart_id": "k-1", "product_id": "P00001", "price": 299, "quantity": 1}}

- ``properties`` are the fields of the type's family record (taxonomy.FAMILY_OF,
  schemas/com.touchline.touchpoint.*.avsc); for ``custom`` they are the free
  attributes, and ``event_name`` names the event.
- Segment-style input is understood too: ``messageId`` for ``event_id``,
  ``anonymousId``/``userId`` for the anonymous and member ids, ``type: track``
  with ``event: "Product Added"`` (Segment spec names map to taxonomy types;
  any other name becomes a ``custom`` event instead of an error), ``type:
  page``/``screen``/``identify``.
- Times: ``event_time_ms`` (epoch ms) or ``timestamp`` (ISO-8601, or epoch ms);
  a naive ISO time is read in the caller's time zone.

``from_json`` returns a Touchpoint record or raises JsonEventError with a
dead-letter reason and a message naming the field. It does not validate the
event's meaning (required fields, identifiers, times): ingestion does that,
for every source alike.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from streams import avro
from streams.touchpoint import record
from streams.touchpoint.taxonomy import EVENT_TYPES, SEGMENT_NAMES

ENVELOPE = ("source_app", "store_id", "guide_id", "referrer_id")
_SEGMENT_ALIASES = {"messageId": "event_id", "receivedAt": "receive_time"}
_KNOWN = {"event_id", "type", "event", "event_time_ms", "timestamp", "receive_time_ms", "receive_time",
          "channel", "identifiers", "context", "properties", "historical", "anonymousId", "userId",
          "event_name", "sentAt", "originalTimestamp", "name", *ENVELOPE, *_SEGMENT_ALIASES}
SHANGHAI = ZoneInfo("Asia/Shanghai")


class JsonEventError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_time(value: Any, field: str, tz: tzinfo = SHANGHAI) -> int:
    """Epoch milliseconds from epoch ms (int) or an ISO-8601 string."""
    if isinstance(value, bool):
        raise JsonEventError("invalid_field", f"{field}: {value!r} is not a time")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise JsonEventError("invalid_field", f"{field}: {value!r} is not an ISO-8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=tz)
        return int(when.timestamp() * 1000)
    raise JsonEventError("invalid_field", f"{field}: {value!r} is not a time")


def _type_of(obj: dict[str, Any]) -> tuple[str, str | None]:
    """(taxonomy type, custom event name or None)."""
    kind = obj.get("type")
    if kind in ("track", None) and "event" in obj:
        name = obj["event"]
        if not isinstance(name, str) or not name.strip():
            raise JsonEventError("missing_field", "event: a track call needs an event name")
        if name in SEGMENT_NAMES:
            return SEGMENT_NAMES[name], None
        snake = name.strip().lower().replace(" ", "_")
        return (snake, None) if snake in EVENT_TYPES else ("custom", name)
    if kind in ("page", "screen", "identify"):
        return SEGMENT_NAMES[kind.capitalize()], None
    if not isinstance(kind, str) or not kind:
        raise JsonEventError("missing_field", "type: every event needs a type (or a Segment track event name)")
    if kind not in EVENT_TYPES:
        return "custom", kind  # outside the taxonomy: carried, not rejected
    return kind, obj.get("event_name")


def _strings(obj: Any, field: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise JsonEventError("invalid_field", f"{field}: expected an object, got {type(obj).__name__}")
    return obj


def _scalar_attributes(props: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in props.items():
        if v is None or isinstance(v, bool | int | float | str):
            out[str(k)] = v
        else:
            raise JsonEventError("invalid_field", f"properties.{k}: custom attributes must be scalars")
    return out


def from_json(obj: Any, *, received_ms: int, tz: tzinfo = SHANGHAI,
              defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Touchpoint record from one JSON event (see the module doc)."""
    if not isinstance(obj, dict):
        raise JsonEventError("invalid_json", f"an event must be a JSON object, got {type(obj).__name__}")
    obj = {**(defaults or {}), **{_SEGMENT_ALIASES.get(k, k): v for k, v in obj.items()}}
    unknown = sorted(set(obj) - _KNOWN)
    if unknown:
        raise JsonEventError("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    event_id = obj.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise JsonEventError("missing_field", "event_id (or messageId) is required")
    kind, custom_name = _type_of(obj)
    if "event_time_ms" in obj:
        t = parse_time(obj["event_time_ms"], "event_time_ms", tz)
    elif "timestamp" in obj or "originalTimestamp" in obj:
        t = parse_time(obj.get("timestamp", obj.get("originalTimestamp")), "timestamp", tz)
    else:
        raise JsonEventError("missing_field", "event_time_ms or timestamp is required")
    received = obj.get("receive_time_ms", obj.get("receive_time"))
    received_at = received_ms if received is None else parse_time(received, "receive_time_ms", tz)
    channel = obj.get("channel")
    if not isinstance(channel, str) or not channel:
        raise JsonEventError("missing_field", "channel is required")
    ids = dict(_strings(obj.get("identifiers"), "identifiers"))
    if obj.get("anonymousId") is not None:
        ids.setdefault("anonymous_id", obj["anonymousId"])
    if obj.get("userId") is not None:
        ids.setdefault("member_id", obj["userId"])
    props = dict(_strings(obj.get("properties"), "properties"))
    if kind == "custom":
        name = custom_name or props.pop("event_name", None) or obj.get("event_name")
        attributes = props.pop("attributes", None)
        props = {"event_name": name, "attributes": _scalar_attributes(attributes if isinstance(attributes, dict) else props)}
    else:
        allowed = record.family_fields(kind)
        extra = sorted(set(props) - allowed)
        if extra:
            raise JsonEventError("unknown_field", f"properties of {kind} have no field(s) {', '.join(extra)} "
                                 f"(allowed: {', '.join(sorted(allowed))}; use a custom event for anything else)")
    envelope = {k: obj[k] for k in ENVELOPE if obj.get(k) is not None}
    try:
        tp = record.build(
            event_id, kind, t, channel, receive_time_ms=received_at, identifiers=ids,
            context=_strings(obj.get("context"), "context") or None, properties_=props or None,
            historical=bool(obj.get("historical", False)), **envelope,
        )
    except KeyError as exc:
        raise JsonEventError("unknown_field", str(exc.args[0])) from None
    _coerce_numbers(tp)
    problem = _type_problem(tp)
    if problem:
        raise JsonEventError("missing_field" if problem.endswith("is required") else "invalid_field", problem)
    return tp


def _coerce_numbers(tp: dict[str, Any]) -> None:
    """JSON has one number type: ints are fine where Avro wants a double (the schema says where)."""
    def floats(values: dict[str, Any], record_name: str) -> None:
        for k in record.double_fields(record_name):
            v = values.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                values[k] = float(v)

    for family, values in (tp.get("properties") or {}).items():
        if isinstance(values, dict):
            floats(values, record.family_record(family))
            for item in values.get("products") or []:
                floats(item, "LineItem")


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "boolean": (bool,), "int": (int,), "long": (int,), "double": (float, int), "float": (float, int),
}


def _problem(value: Any, schema: Any, path: str, named: dict[str, Any]) -> str | None:
    """First mismatch between a value and an Avro type, as 'path: what is wrong'."""
    if isinstance(schema, list):
        if value is None and "null" in schema:
            return None
        branches = [b for b in schema if b != "null"]
        if value is None:
            return f"{path} is required"
        problems = [_problem(value, b, path, named) for b in branches]
        return None if any(pr is None for pr in problems) else problems[0]
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    kind = schema if isinstance(schema, str) else schema["type"]
    if value is None and kind != "null":
        return f"{path} is required"
    if kind == "null":
        return None if value is None else f"{path} must be null"
    if kind in _PY_TYPES:
        ok = isinstance(value, _PY_TYPES[kind]) and not (kind != "boolean" and isinstance(value, bool))
        return None if ok else f"{path}: {value!r} is not {'an' if kind == 'int' else 'a'} {kind}"
    if kind == "array":
        if not isinstance(value, list):
            return f"{path}: expected a list"
        for i, item in enumerate(value):
            found = _problem(item, schema["items"], f"{path}[{i}]", named)
            if found:
                return found
        return None
    if kind == "map":
        if not isinstance(value, dict):
            return f"{path}: expected an object"
        for k, item in value.items():
            found = _problem(item, schema["values"], f"{path}.{k}", named)
            if found:
                return found
        return None
    if kind == "record":
        if not isinstance(value, dict):
            return f"{path}: expected an object"
        for f in schema["fields"]:
            found = _problem(value.get(f["name"]), f["type"], f"{path}.{f['name']}" if path else f["name"], named)
            if found:
                return found
        return None
    return None


def _type_problem(tp: dict[str, Any]) -> str | None:
    parsed = avro.contract(avro.TOUCHPOINT).parsed
    named = parsed["__named_schemas"]
    problem = _problem(tp, parsed, "", named)
    if problem is None:
        return None
    family = f".{record.family_name(tp['type'])}." if tp.get("properties") else "."
    return problem.replace(f"properties{family}", "properties.")


def to_json(tp: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a Touchpoint record (nulls left out); from_json reads it back."""
    out: dict[str, Any] = {
        "event_id": tp["event_id"], "type": tp["type"], "event_time_ms": tp["event_time_ms"],
        "receive_time_ms": tp["receive_time_ms"], "channel": tp["channel"],
        "identifiers": {k: v for k, v in tp["identifiers"].items() if v is not None},
    }
    for k in ENVELOPE:
        if tp.get(k) is not None:
            out[k] = tp[k]
    if tp.get("context"):
        out["context"] = {k: v for k, v in tp["context"].items() if v is not None}
    fam = record.props(tp)
    if fam:
        props = {k: v for k, v in fam.items() if v is not None and v != []}
        if "products" in props:
            props["products"] = [{k: v for k, v in i.items() if v is not None} for i in props["products"]]
        out["properties"] = props
    if tp.get("historical"):
        out["historical"] = True
    return out
