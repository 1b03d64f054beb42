"""Loader input rows -> reference records, with one clear error per bad row. Pure.

Files are CSV with a header row, or JSON Lines (one object per line); either
may be gzip-compressed (``.gz``). The format is taken from the name:
``*.csv[.gz]`` or ``*.jsonl[.gz]`` / ``*.ndjson[.gz]``.

Cells: an empty CSV cell, a missing JSON key and JSON ``null`` all mean "no
value". Lists (``tags``, ``channels``) are ``|``-separated in CSV and JSON
arrays (or ``|``-separated strings) in JSON Lines. Booleans are
``true/false``, ``yes/no`` or ``1/0`` in CSV. Dates are ISO ``YYYY-MM-DD``.

Every error names the file and line, e.g. ``stores.csv:14: latitude 'abc' is
not a number``; a row with several problems gets one error listing them all.
Two rows with the same key are an error (the second names the first's line):
a file is a set of records, so loading it twice, or in any order, ends in the
same state.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from streams import avro
from streams.topics import REF_CAMPAIGNS, REF_PRODUCTS, REF_SPEND, REF_STORES, TopicSpec

LIST_SEPARATOR = "|"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# How a text cell spells a boolean (compared lower-cased, stripped); the importer reads them too.
TRUE_WORDS = frozenset({"true", "yes", "1", "y", "t"})
FALSE_WORDS = frozenset({"false", "no", "0", "n", "f"})


class FileFormatError(ValueError):
    """The file as a whole cannot be read: unknown format, bad header, not UTF-8, not gzip."""


class _Bad(ValueError):
    """One field's problem; collected into the row's error."""


# ----------------------------------------------------------------------------- field parsers
# Each takes the field name and the raw value (a str from CSV, any JSON value
# from JSON Lines, never None) and returns the Avro value or raises _Bad.


def text(name: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Bad(f"{name} {raw!r} is not text")
    value = raw.strip()
    if not value:
        raise _Bad(f"{name} is empty")
    return value


def number(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise _Bad(f"{name} {raw!r} is not a number")
    try:
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except ValueError:
        raise _Bad(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise _Bad(f"{name} {raw!r} is not a finite number")
    return value


def count(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Bad(f"{name} {raw!r} is not a whole number")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw):
        raw = int(raw)
    if not isinstance(raw, int):
        raise _Bad(f"{name} {raw!r} is not a whole number")
    if raw < 0:
        raise _Bad(f"{name} {raw!r} is negative")
    return raw


def amount(name: str, raw: Any) -> float:
    value = number(name, raw)
    if value < 0:
        raise _Bad(f"{name} {raw!r} is negative")
    return value


def date(name: str, raw: Any) -> str:
    if isinstance(raw, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw.strip()):
        try:
            return dt.date.fromisoformat(raw.strip()).isoformat()
        except ValueError:
            pass
    raise _Bad(f"{name} {raw!r} is not a date (YYYY-MM-DD)")


def boolean(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    raise _Bad(f"{name} {raw!r} is not true or false")


def string_list(name: str, raw: Any) -> list[str]:
    items = raw.split(LIST_SEPARATOR) if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise _Bad(f"{name} {raw!r} is not a list of text")
    return [i.strip() for i in items if i.strip()]


def currency(name: str, raw: Any) -> str:
    value = text(name, raw)
    if not _CURRENCY.match(value):
        raise _Bad(f"{name} {raw!r} is not an ISO 4217 code (e.g. CNY)")
    return value


def latitude(name: str, raw: Any) -> float:
    value = number(name, raw)
    if not -90 <= value <= 90:
        raise _Bad(f"{name} {raw!r} is outside -90..90")
    return value


def longitude(name: str, raw: Any) -> float:
    value = number(name, raw)
    if not -180 <= value <= 180:
        raise _Bad(f"{name} {raw!r} is outside -180..180")
    return value


def category_path(name: str, raw: Any) -> str:
    value = text(name, raw)
    parts = value.split("/")
    if any(not p.strip() or p != p.strip() for p in parts):
        raise _Bad(f"{name} {raw!r} is not a path like women/shoes/sneakers")
    return value


def token(name: str, raw: Any) -> str:
    """A lowercase name such as a channel: letters, digits, '_' and '-'."""
    value = text(name, raw)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", value):
        raise _Bad(f"{name} {raw!r} is not a lowercase name (letters, digits, _ or -)")
    return value


def no_separator(parse: Callable[[str, Any], str]) -> Callable[[str, Any], str]:
    """Key parts of the spend key may not contain its separator."""

    def check(name: str, raw: Any) -> str:
        value = parse(name, raw)
        if LIST_SEPARATOR in value:
            raise _Bad(f"{name} {raw!r} contains '{LIST_SEPARATOR}'")
        return value

    return check


# ----------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[str, Any], Any]
    required: bool = True
    default: Any = None  # when not required and absent


@dataclass(frozen=True)
class Kind:
    """One kind of reference file: its fields, record checks, key and topic."""

    name: str
    contract: str
    topic: TopicSpec
    fields: tuple[Field, ...]
    key: Callable[[dict[str, Any]], str]
    check: Callable[[dict[str, Any]], list[str]] = field(default=lambda r: [])

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _not_before(later: str, earlier: str) -> Callable[[dict[str, Any]], list[str]]:
    def check(r: dict[str, Any]) -> list[str]:
        if r.get(later) is not None and r.get(earlier) is not None and r[later] < r[earlier]:
            return [f"{later} {r[later]} is before {earlier} {r[earlier]}"]
        return []

    return check


def _campaign_checks(r: dict[str, Any]) -> list[str]:
    return _not_before("ends_on", "starts_on")(r) + _not_before("starts_on", "warmup_starts_on")(r)


def spend_key(day: str, channel: str, campaign_id: str | None) -> str:
    """The spend topic's key: ``day|channel|campaign_id`` (campaign part empty when null)."""
    return LIST_SEPARATOR.join((day, channel, campaign_id or ""))


STORES = Kind("stores", avro.STORE, REF_STORES, (
    Field("store_id", text), Field("name", text), Field("city", text),
    Field("latitude", latitude), Field("longitude", longitude),
    Field("opened_on", date), Field("closed_on", date, required=False),
), key=lambda r: r["store_id"], check=_not_before("closed_on", "opened_on"))

PRODUCTS = Kind("products", avro.PRODUCT, REF_PRODUCTS, (
    Field("product_id", text), Field("name", text), Field("category_path", category_path),
    Field("price", amount), Field("currency", currency), Field("new_arrival", boolean),
    Field("tags", string_list, required=False, default=[]), Field("launched_on", date, required=False),
), key=lambda r: r["product_id"])

CAMPAIGNS = Kind("calendar", avro.CAMPAIGN, REF_CAMPAIGNS, (
    Field("campaign_id", text), Field("name", text), Field("starts_on", date), Field("ends_on", date),
    Field("warmup_starts_on", date, required=False),
    Field("channels", string_list, required=False, default=[]),
), key=lambda r: r["campaign_id"], check=_campaign_checks)

SPEND = Kind("spend", avro.SPEND, REF_SPEND, (
    Field("day", date), Field("channel", no_separator(token)),
    Field("campaign_id", no_separator(text), required=False),
    Field("amount", amount), Field("currency", currency),
    Field("impressions", count, required=False), Field("clicks", count, required=False),
    Field("leads", count, required=False),
), key=lambda r: spend_key(r["day"], r["channel"], r["campaign_id"]))

KINDS: dict[str, Kind] = {k.name: k for k in (STORES, PRODUCTS, CAMPAIGNS, SPEND)}


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Row:
    line: int
    key: str
    record: dict[str, Any]


@dataclass
class Parsed:
    kind: Kind
    file: str
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def file_format(path: Path) -> str:
    """``csv`` or ``jsonl`` from the file name (``.gz`` allowed)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson"):
        return "jsonl"
    raise FileFormatError(f"{path.name}: unknown format; name it .csv or .jsonl (optionally .gz)")


def _open_text(path: Path) -> IO[str]:
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(cast(IO[bytes], raw), encoding="utf-8-sig", newline="")


def raw_rows(path: Path, kind: Kind) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, raw row) for every data row; a str instead of a dict is that row's error.

    Raises FileFormatError for problems of the whole file (header, encoding, gzip).
    """
    fmt = file_format(path)
    try:
        with _open_text(path) as fh:
            if fmt == "csv":
                yield from _csv_rows(path, fh, kind)
            else:
                yield from _jsonl_rows(fh, kind)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise FileFormatError(f"{path.name}: cannot read: {exc}") from exc


def _csv_rows(path: Path, fh: IO[str], kind: Kind) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        return
    names = [h.strip() for h in header]
    unknown = [n for n in names if n not in kind.field_names]
    missing = [f.name for f in kind.fields if f.required and f.name not in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    problems = ([f"unknown column(s) {', '.join(map(repr, unknown))}"] if unknown else []) + \
        ([f"missing column(s) {', '.join(map(repr, missing))}"] if missing else []) + \
        ([f"repeated column(s) {', '.join(map(repr, repeated))}"] if repeated else [])
    if problems:
        raise FileFormatError(f"{path.name}:1: {'; '.join(problems)} (columns of {kind.name}: "
                              f"{', '.join(kind.field_names)})")
    line = reader.line_num + 1  # where the next row starts (quoted cells may span lines)
    for cells in reader:
        start, line = line, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(names):
            yield start, f"{len(cells)} cells, the header has {len(names)}"
            continue
        yield start, {n: c for n, c in zip(names, cells, strict=True) if c.strip() != ""}


def _jsonl_rows(fh: IO[str], kind: Kind) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number_, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield number_, f"not JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(obj, dict):
            yield number_, f"not a JSON object but {type(obj).__name__}"
            continue
        unknown = [k for k in obj if k not in kind.field_names]
        if unknown:
            yield number_, f"unknown field(s) {', '.join(map(repr, unknown))} (fields of {kind.name}: " \
                f"{', '.join(kind.field_names)})"
            continue
        yield number_, {k: v for k, v in obj.items() if v is not None and v != ""}


def to_record(kind: Kind, raw: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """One raw row -> (Avro record, []) or (None, problems)."""
    record: dict[str, Any] = {}
    problems: list[str] = []
    for f in kind.fields:
        if f.name not in raw:
            if f.required:
                problems.append(f"{f.name} is missing")
            record[f.name] = list(f.default) if isinstance(f.default, list) else f.default
            continue
        try:
            record[f.name] = f.parse(f.name, raw[f.name])
        except _Bad as exc:
            problems.append(str(exc))
    if problems:
        return None, problems
    problems = kind.check(record)
    return (None, problems) if problems else (record, [])


def parse_file(path: Path | str, kind: Kind | str) -> Parsed:
    """Every row of a loader file, parsed and checked; raises FileFormatError for whole-file problems."""
    path = Path(path)
    kind = KINDS[kind] if isinstance(kind, str) else kind
    out = Parsed(kind, path.name)
    first_line: dict[str, int] = {}
    for line, raw in raw_rows(path, kind):
        if isinstance(raw, str):
            out.errors.append(RowError(path.name, line, raw))
            continue
        record, problems = to_record(kind, raw)
        if record is None:
            out.errors.append(RowError(path.name, line, "; ".join(problems)))
            continue
        key = kind.key(record)
        if key in first_line:
            out.errors.append(RowError(path.name, line, f"key {key!r} repeats line {first_line[key]}"))
            continue
        first_line[key] = line
        out.rows.append(Row(line, key, record))
    return out


# ----------------------------------------------------------------------------- writing files


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return LIST_SEPARATOR.join(value)
    return str(value)


def write_file(path: Path | str, kind: Kind | str, records: list[dict[str, Any]]) -> Path:
    """Write records as a loader file (format from the name, as ``file_format``); the inverse of parse_file."""
    path = Path(path)
    kind = KINDS[kind] if isinstance(kind, str) else kind
    fmt = file_format(path)
    raw = gzip.open(path, "wb") if path.suffix.lower() == ".gz" else open(path, "wb")  # noqa: SIM115
    with io.TextIOWrapper(cast(IO[bytes], raw), encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(kind.field_names)
            for r in records:
                writer.writerow([_cell(r.get(n)) for n in kind.field_names])
        else:
            for r in records:
                fh.write(json.dumps({n: r.get(n) for n in kind.field_names}, ensure_ascii=False) + "\n")
    return path
