"""The declarative mapping of an export file onto touchpoints (pure).

A mapping is a TOML file (README: "Importing history")::

    source = "pos-receipts"            # names the export; prefixes event ids and dead letters
    timezone = "Asia/Shanghai"         # zone of naive timestamps
    # type = "order_completed"         # every row is this type (single-type exports)
    # timestamp_format = "iso"         # iso | epoch_ms | epoch_s | a strptime pattern ("%Y/%m/%d %H:%M")
    # keep_event_ids = false           # true: the event_id column is used as is, not "<source>:<value>"

    [constants]                        # values every event gets (a column's non-empty value wins)
    channel = "store_pos"

    [columns]                          # target field = source column
    event_id = "receipt_no"
    type = "txn_type"
    timestamp = "txn_time"
    "identifiers.phone" = "member_phone"
    "properties.total" = "amount"

    [types]                            # source event name = taxonomy type
    SALE = "order_completed"

Targets: ``event_id``, ``type``, ``timestamp`` or ``event_time_ms``,
``channel``, ``source_app``, ``store_id``, ``guide_id``, ``referrer_id``,
``identifiers.<kind>``, ``context.<field>``, ``properties.<field>``, and the
whole-object targets ``identifiers``, ``context`` and ``properties`` (a column
holding a JSON object). Dotted keys may also be written unquoted
(``identifiers.phone = "member_phone"``). Source columns may be dotted paths
into nested JSON/Parquet values (``"user.phone"``).

``parse`` checks everything that can be checked before reading a row and
raises MappingError naming each problem.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.touchpoint import jsonform, record
from streams.touchpoint.taxonomy import CHANNELS, EVENT_TYPES

ENVELOPE = ("channel", *jsonform.ENVELOPE)
SCALARS = ("event_id", "type", "timestamp", "event_time_ms", *ENVELOPE)
GROUPS = ("identifiers", "context", "properties")  # also whole-object targets
TIME_FORMATS = ("iso", "epoch_ms", "epoch_s")
_TOP_KEYS = {"source", "timezone", "type", "timestamp_format", "keep_event_ids", "constants", "columns",
             "types", "csv"}
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class MappingError(ValueError):
    """The mapping cannot be used; the message lists every problem found."""


@cache
def _all_property_fields() -> frozenset[str]:
    return frozenset().union(*(record.family_fields(t) for t in EVENT_TYPES if t != "custom"))


@dataclass(frozen=True)
class Mapping:
    source: str
    timezone: str
    columns: dict[str, str]  # target -> source column (dotted path)
    constants: dict[str, Any] = field(default_factory=dict)  # target -> value
    types: dict[str, str] = field(default_factory=dict)  # source event name -> taxonomy type
    type: str | None = None  # every row's type, when the export has one type
    timestamp_format: str = "iso"
    keep_event_ids: bool = False
    csv_delimiter: str = ","
    csv_encoding: str = "utf-8-sig"
    digest: str = ""  # sha256 of the mapping's canonical JSON: part of the import ledger key

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def source_columns(self) -> list[str]:
        """Mapped source columns, each once, in a stable order."""
        return sorted(set(self.columns.values()))


def _flatten(table: dict[str, Any], where: str, problems: list[str], values_are_columns: bool) -> dict[str, Any]:
    """``{"identifiers": {"phone": "x"}}`` (unquoted dotted TOML keys) -> ``{"identifiers.phone": "x"}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in GROUPS:
            for sub, v in value.items():
                if isinstance(v, dict) and values_are_columns:
                    problems.append(f"[{where}] {key}.{sub}: nested too deep (targets are at most group.field)")
                    continue
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def target_problem(target: str, constant_type: str | None) -> str | None:
    """Why ``target`` is not a field a column or constant can fill (None: it is)."""
    if target in SCALARS or target in GROUPS:
        return None
    group, _, name = target.partition(".")
    if group not in GROUPS or not name:
        return (f"unknown target field {target!r} (targets: {', '.join(SCALARS)}, identifiers.<kind>, "
                "context.<field>, properties.<field>, identifiers, context, properties)")
    kinds, contexts = record.field_types("Identifiers"), record.field_types("Context")
    if group == "identifiers" and name not in kinds:
        return f"unknown target field {target!r}: identifier kinds are {', '.join(sorted(kinds))}"
    if group == "context" and name not in contexts:
        return f"unknown target field {target!r}: context fields are {', '.join(sorted(contexts))}"
    if group == "properties":
        if constant_type == "custom":
            return None  # free attributes
        allowed = record.family_fields(constant_type) if constant_type else _all_property_fields()
        if name not in allowed:
            scope = f"{constant_type} has no property" if constant_type else "no event type has a property"
            return (f"unknown target field {target!r}: {scope} {name!r}"
                    + (f" (allowed: {', '.join(sorted(allowed))})" if constant_type else ""))
    return None


def _canonical_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def parse(doc: dict[str, Any]) -> Mapping:
    """A Mapping from a parsed TOML document, or MappingError listing every problem."""
    problems: list[str] = []
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    source = doc.get("source")
    if not isinstance(source, str) or not _SOURCE.match(source):
        problems.append("source: required, 1-64 characters of letters, digits, '.', '_' or '-' "
                        f"(got {source!r})")
    tz_name = doc.get("timezone")
    if not isinstance(tz_name, str) or not tz_name:
        problems.append("timezone: required, an IANA zone for naive timestamps, e.g. \"Asia/Shanghai\"")
    else:
        try:
            ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone: unknown time zone {tz_name!r} (an IANA name such as \"Asia/Shanghai\" or \"UTC\")")
    constant_type = doc.get("type")
    if constant_type is not None and constant_type not in EVENT_TYPES:
        problems.append(f"type: {constant_type!r} is not a taxonomy type ({', '.join(sorted(EVENT_TYPES))})")
        constant_type = None
    fmt = doc.get("timestamp_format", "iso")
    if not isinstance(fmt, str) or (fmt not in TIME_FORMATS and "%" not in fmt):
        problems.append(f"timestamp_format: {fmt!r} is not one of {', '.join(TIME_FORMATS)} or a strptime pattern")
    keep_ids = doc.get("keep_event_ids", False)
    if not isinstance(keep_ids, bool):
        problems.append("keep_event_ids: true or false")

    def table(name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            problems.append(f"[{name}] must be a table")
            return {}
        return value

    columns = _flatten(table("columns"), "columns", problems, True)
    constants = _flatten(table("constants"), "constants", problems, False)
    for target, column in columns.items():
        problem = target_problem(target, constant_type)
        if problem:
            problems.append(f"[columns] {problem}")
        elif not isinstance(column, str) or not column:
            problems.append(f"[columns] {target}: the value must be a source column name (a string)")
    for target, value in constants.items():
        problem = target_problem(target, constant_type)
        if problem:
            problems.append(f"[constants] {problem}")
        elif target in ("event_id", "timestamp", "event_time_ms", "type"):
            hint = "; use the top-level type = ... for single-type exports" if target == "type" else ""
            problems.append(f"[constants] {target} cannot be a constant{hint}")
        elif target == "channel" and value not in CHANNELS:
            problems.append(f"[constants] channel: {value!r} is not a channel ({', '.join(sorted(CHANNELS))})")
    types = table("types")
    for name, kind in types.items():
        if kind not in EVENT_TYPES:
            problems.append(f"[types] {name!r} = {kind!r}: unknown taxonomy type "
                            f"(one of {', '.join(sorted(EVENT_TYPES))})")
    if types and "type" not in columns:
        problems.append("[types] is given but no column is mapped to type")
    if "type" not in columns and doc.get("type") is None:
        problems.append("no event type: map a column to type in [columns], or set type = \"<taxonomy type>\"")
    if "timestamp" in columns and "event_time_ms" in columns:
        problems.append("[columns] map timestamp or event_time_ms, not both")
    if "timestamp" not in columns and "event_time_ms" not in columns:
        problems.append("[columns] the event time is required: map timestamp (or event_time_ms)")
    if "channel" not in columns and "channel" not in constants:
        problems.append("channel: map a column to channel or set it in [constants]")
    if keep_ids is True and "event_id" not in columns:
        problems.append("keep_event_ids = true needs an event_id column")
    csv_opts = table("csv")
    bad_csv = sorted(set(csv_opts) - {"delimiter", "encoding"})
    if bad_csv:
        problems.append(f"[csv] unknown key(s) {', '.join(bad_csv)} (allowed: delimiter, encoding)")
    delimiter = csv_opts.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        problems.append("[csv] delimiter: one character")
    encoding = csv_opts.get("encoding", "utf-8-sig")
    if not isinstance(encoding, str):
        problems.append("[csv] encoding: a codec name such as \"utf-8\" or \"gb18030\"")
    else:
        try:
            "".encode(encoding)
        except LookupError:
            problems.append(f"[csv] encoding: unknown codec {encoding!r}")
    if problems:
        raise MappingError("\n".join(f"  - {p}" for p in problems))
    return Mapping(
        source=str(source), timezone=str(tz_name), columns=dict(columns), constants=dict(constants),
        types=dict(types), type=constant_type, timestamp_format=str(fmt), keep_event_ids=bool(keep_ids),
        csv_delimiter=str(delimiter), csv_encoding=str(encoding), digest=_canonical_digest(doc),
    )


def loads(text: str) -> Mapping:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"not valid TOML: {exc}") from None
    return parse(doc)


def load(path: str | Path) -> Mapping:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MappingError(f"{path} is not UTF-8 text") from None
    try:
        return loads(text)
    except MappingError as exc:
        raise MappingError(f"{path}:\n{exc}" if str(exc).startswith("  - ") else f"{path}: {exc}") from None
