"""One export row -> the JSON form of a touchpoint -> a clean, historical Touchpoint (pure).

For each row the converter

1. takes the mapped columns (a column's non-empty value, else the mapping's
   constant), casting strings (CSV cells) to the target field's Avro type as
   the Touchpoint schema declares it: double, int, long, boolean, or JSON for
   records, arrays and maps. A cast error names the file, line and column;
2. resolves the event type: ``[types]`` first, then taxonomy and Segment
   names; any other name becomes a ``custom`` event named after it;
3. gives the event its id: ``<source>:<event_id column>``, or, without an id
   column, ``<source>:<hash>`` of the source name, the row's mapped values
   (canonical JSON: column order and unmapped columns do not matter) and how
   many identical rows came before it in the file. Re-exports of the same
   data, in any row order, get the same ids; identical rows stay distinct;
4. builds the event with ``jsonform.from_json`` (``historical`` set, receive
   time = import time, naive times in the mapping's zone) and runs it through
   ``validate.clean``, the same checks and phone/email hashing ingestion
   applies, so raw personal data never leaves the importer.

Outcome: a ``Converted`` (clean touchpoint + route key) or a ``Failure`` with a
dead-letter reason and a detail starting with where the row is.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from streams.importer.files import Row, lookup
from streams.importer.mapping import ENVELOPE, GROUPS, Mapping
from streams.ingest import validate
from streams.reference.rows import FALSE_WORDS, TRUE_WORDS
from streams.touchpoint import jsonform, record
from streams.touchpoint.taxonomy import EVENT_TYPES, SEGMENT_NAMES

_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Converted:
    touchpoint: dict[str, Any]
    key: str  # validate.route_key: the raw record's key


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str


class RowError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CastError(ValueError):
    pass


# ----------------------------------------------------------------------------- Avro types of targets

def target_type(target: str, event_type: str) -> Any:
    """The Avro type of a mapping target for an event of ``event_type`` (None: not a field of it)."""
    group, _, name = target.partition(".")
    if group == "identifiers":
        return "string"
    if group == "context":
        return record.field_types("Context").get(name)
    if group == "properties":
        return record.field_types(record.family_record(record.family_name(event_type))).get(name)
    return record.field_types("Touchpoint").get(target)


def cast(value: Any, schema: Any) -> Any:
    """``value`` (a CSV string, a JSON or Parquet value) as the Avro type ``schema``; CastError if it cannot be."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(branches) != 1:
            return value
        schema = branches[0]
    named = record.named_schemas()
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "string":
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | Decimal):
            return str(value)
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        if isinstance(value, datetime | date):
            return value.isoformat()
        raise CastError(f"{value!r} is not text")
    if kind in ("int", "long"):
        number: Any = value
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                number = int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    raise CastError(f"{value!r} is not a whole number") from None
        if isinstance(number, bool) or not isinstance(number, int | float | Decimal):
            raise CastError(f"{value!r} is not a whole number")
        if isinstance(number, float | Decimal):
            if not math.isfinite(number) or number != int(number):
                raise CastError(f"{value!r} is not a whole number")
            number = int(number)
        if kind == "int" and not _INT32[0] <= number <= _INT32[1]:
            raise CastError(f"{value!r} is out of range for an int")
        return number
    if kind in ("double", "float"):
        if isinstance(value, bool):
            raise CastError(f"{value!r} is not a number")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise CastError(f"{value!r} is not a number") from None
        if not isinstance(value, int | float | Decimal):
            raise CastError(f"{value!r} is not a number")
        out = float(value)
        if not math.isfinite(out):
            raise CastError(f"{value!r} is not a finite number")
        return out
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise CastError(f"{value!r} is not true/false")
    if kind in ("record", "array", "map"):
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise CastError(f"{value!r} is not JSON (a {kind} is expected)") from None
        return value
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _scalar(value: Any) -> Any:
    """A custom attribute value: a JSON scalar."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return value.strip()
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise CastError(f"{value[:80]!r} is not a JSON object ({what})") from None
    if not isinstance(value, dict):
        raise CastError(f"{type(value).__name__} is not a JSON object ({what})")
    return value


def resolve_type(name: str, mapping: Mapping) -> tuple[str, str | None]:
    """(taxonomy type, custom event name or None) of a source event name."""
    name = name.strip()
    if name in mapping.types:
        kind = mapping.types[name]
        return kind, (name if kind == "custom" else None)
    if name in EVENT_TYPES:
        return name, None
    if name in SEGMENT_NAMES:
        return SEGMENT_NAMES[name], None
    snake = name.lower().replace(" ", "_")
    if snake in EVENT_TYPES and snake != "custom":
        return snake, None
    return "custom", name


class Converter:
    """Converts the rows of one file, in file order (ids count identical rows)."""

    def __init__(self, mapping: Mapping, policy: validate.Policy) -> None:
        self.mapping = mapping
        self.policy = policy
        self.tz = mapping.tz
        self._seen: dict[bytes, int] = {}  # digest of a row's mapped values -> rows seen so far

    # -- values ---------------------------------------------------------------
    def _get(self, values: dict[str, Any], target: str) -> tuple[Any, str | None]:
        """(value, source column or None for a constant/absent)."""
        column = self.mapping.columns.get(target)
        if column is not None:
            value = lookup(values, column)
            if not _blank(value):
                return value, column
        return self.mapping.constants.get(target), None

    def _cast(self, row: Row, target: str, value: Any, column: str | None, schema: Any) -> Any:
        try:
            return cast(value, schema)
        except CastError as exc:
            source = f"column {column!r}" if column else "constant"
            raise RowError("invalid_field", f"{row.where}: {source} -> {target}: {exc}") from None

    # -- ids ------------------------------------------------------------------
    def derived_id(self, values: dict[str, Any]) -> str:
        content = {c: lookup(values, c) for c in self.mapping.source_columns}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        digest = hashlib.sha256(canonical.encode()).digest()[:16]
        n = self._seen.get(digest, 0)
        self._seen[digest] = n + 1
        h = hashlib.blake2b(f"{self.mapping.source}\n{canonical}\n{n}".encode(), digest_size=16).hexdigest()
        return f"{self.mapping.source}:{h}"

    def _event_id(self, row: Row, values: dict[str, Any]) -> str:
        if "event_id" not in self.mapping.columns:
            return self.derived_id(values)
        value, column = self._get(values, "event_id")
        if _blank(value):
            raise RowError("missing_field", f"{row.where}: column {self.mapping.columns['event_id']!r} "
                           "-> event_id is empty")
        text = self._cast(row, "event_id", value, column, "string")
        return text if self.mapping.keep_event_ids else f"{self.mapping.source}:{text}"

    # -- time -----------------------------------------------------------------
    def _event_time(self, row: Row, values: dict[str, Any]) -> int:
        if "event_time_ms" in self.mapping.columns:
            value, column = self._get(values, "event_time_ms")
            if _blank(value):
                raise RowError("missing_field", f"{row.where}: column {column or self.mapping.columns['event_time_ms']!r} "
                               "-> event_time_ms is empty")
            return int(self._cast(row, "event_time_ms", value, column, "long"))
        column = self.mapping.columns["timestamp"]
        value = lookup(values, column)
        if _blank(value):
            raise RowError("missing_field", f"{row.where}: column {column!r} -> timestamp is empty")
        try:
            return self.parse_timestamp(value)
        except jsonform.JsonEventError as exc:  # its message starts with "timestamp: "
            raise RowError("invalid_field", f"{row.where}: column {column!r} -> {exc.message}") from None
        except CastError as exc:
            raise RowError("invalid_field", f"{row.where}: column {column!r} -> timestamp: {exc}") from None

    def parse_timestamp(self, value: Any) -> int:
        fmt = self.mapping.timestamp_format
        if isinstance(value, datetime):
            when = value if value.tzinfo is not None else value.replace(tzinfo=self.tz)
            return int(when.timestamp() * 1000)
        if isinstance(value, date):
            return int(datetime(value.year, value.month, value.day, tzinfo=self.tz).timestamp() * 1000)
        if isinstance(value, bool):
            raise CastError(f"{value!r} is not a time")
        if fmt in ("epoch_ms", "epoch_s"):
            try:
                number = float(value.strip()) if isinstance(value, str) else float(value)
            except (TypeError, ValueError):
                raise CastError(f"{value!r} is not epoch {'milliseconds' if fmt == 'epoch_ms' else 'seconds'}") from None
            if not math.isfinite(number):
                raise CastError(f"{value!r} is not a time")
            return int(round(number * (1000 if fmt == "epoch_s" else 1)))
        if fmt == "iso":
            if isinstance(value, float):
                value = int(value)
            return jsonform.parse_time(value, "timestamp", self.tz)
        if not isinstance(value, str):
            raise CastError(f"{value!r} is not text in the format {fmt!r}")
        try:
            when = datetime.strptime(value.strip(), fmt)
        except ValueError:
            raise CastError(f"{value!r} does not match the format {fmt!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.tz)
        return int(when.timestamp() * 1000)

    # -- the event ------------------------------------------------------------
    def to_json(self, row: Row, received_ms: int) -> dict[str, Any]:
        """The JSON form of the row's event; RowError when a value cannot be used."""
        assert row.values is not None
        values = row.values
        m = self.mapping
        event_id = self._event_id(row, values)
        name, name_column = self._get(values, "type")
        if _blank(name):
            if m.type is None:
                raise RowError("missing_field", f"{row.where}: column {m.columns.get('type')!r} -> type is empty")
            kind, custom_name = m.type, None
        else:
            kind, custom_name = resolve_type(self._cast(row, "type", name, name_column, "string"), m)
        obj: dict[str, Any] = {
            "event_id": event_id, "type": kind, "event_time_ms": self._event_time(row, values),
            "historical": True, "receive_time_ms": received_ms,
        }
        if custom_name is not None:
            obj["event_name"] = custom_name
        for target in ENVELOPE:
            value, column = self._get(values, target)
            if not _blank(value):
                obj[target] = self._cast(row, target, value, column, "string")
        for group in GROUPS:
            group_values = self._group(row, values, group, kind)
            if group_values:
                obj[group] = group_values
        return obj

    def _group(self, row: Row, values: dict[str, Any], group: str, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        whole, column = self._get(values, group)
        if not _blank(whole):
            try:
                out = dict(_object(whole, group))
            except CastError as exc:
                source = f"column {column!r}" if column else "constant"
                raise RowError("invalid_field", f"{row.where}: {source} -> {group}: {exc}") from None
            if group == "identifiers":
                out = {k: cast(v, "string") if isinstance(v, int | float | Decimal) and not isinstance(v, bool) else v
                       for k, v in out.items()}
        fields = {t.split(".", 1)[1] for t in (*self.mapping.columns, *self.mapping.constants)
                  if t.startswith(group + ".")}
        custom_attributes: dict[str, Any] = {}
        for name in sorted(fields):
            target = f"{group}.{name}"
            value, column = self._get(values, target)
            if _blank(value):
                continue
            if group == "properties" and kind == "custom":
                custom_attributes[name] = _scalar(value)
                continue
            schema = target_type(target, kind)
            if schema is None:
                continue  # a property this event type does not have (mixed exports): left out
            out[name] = self._cast(row, target, value, column, schema)
        if custom_attributes:
            event_name = out.pop("event_name", None)
            attributes = out.pop("attributes", None)
            merged = dict(attributes) if isinstance(attributes, dict) else dict(out)
            merged.update(custom_attributes)
            out = {"attributes": merged}
            if event_name is not None:
                out["event_name"] = event_name
        return out

    def convert(self, row: Row, received_ms: int) -> Converted | Failure:
        if row.values is None:
            return Failure(row.reason, f"{row.where}: {row.error}")
        try:
            obj = self.to_json(row, received_ms)
            tp = jsonform.from_json(obj, received_ms=received_ms, tz=self.tz)
        except RowError as exc:
            return Failure(exc.reason, exc.detail)
        except jsonform.JsonEventError as exc:
            return Failure(exc.reason, f"{row.where}: {exc.message}")
        cleaned = validate.clean(tp, self.policy)
        if isinstance(cleaned, validate.Rejected):
            return Failure(cleaned.reason, f"{row.where}: {cleaned.detail}")
        key = validate.route_key(cleaned["identifiers"])
        assert key is not None  # clean() rejects events without one
        return Converted(cleaned, key)
