"""Reading export files row by row: CSV, JSON Lines and Parquet (no Kafka here).

The format comes from the file name: ``.csv``, ``.jsonl``/``.ndjson`` (each
optionally ``.gz``) or ``.parquet``. Rows are streamed: CSV and JSON Lines a
line at a time, Parquet a record batch at a time, so a file of any size is
read in constant memory. Each row knows its number (1-based, data rows only)
and where it is in the file (``orders.csv:14``) for error messages, and can
give back its original content as JSON bytes for a dead letter.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PARQUET_BATCH_ROWS = 4096


class FileFormatError(ValueError):
    """The file as a whole cannot be read: unknown format, bad header, not UTF-8, not gzip."""


@dataclass
class Row:
    number: int  # 1-based ordinal among data rows
    where: str  # "orders.csv:14" (CSV/JSON Lines: line) or "orders.parquet: row 14"
    values: dict[str, Any] | None  # None when the row itself could not be read
    error: str | None = None  # why it could not be read
    reason: str = "invalid_json"  # dead-letter reason when it could not be read
    original: bytes | None = None  # the line as read (JSON Lines)

    def payload(self) -> bytes:
        """The original row as JSON bytes (what a dead letter seals)."""
        if self.original is not None:
            return self.original
        return json.dumps(self.values, ensure_ascii=False, default=str).encode()


def format_of(path: str | Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for ext, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet")):
        if name.endswith(ext):
            if fmt == "parquet" and gz:
                raise FileFormatError(f"{path}: gzipped Parquet is not supported (Parquet compresses itself)")
            return fmt, gz
    raise FileFormatError(f"{path}: unknown format; use .csv, .jsonl or .ndjson (optionally .gz), or .parquet")


def lookup(values: dict[str, Any], column: str) -> Any:
    """A column's value; a dotted name reaches into nested objects when no column has that exact name."""
    if column in values:
        return values[column]
    node: Any = values
    for part in column.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class ExportFile:
    """One export file, read as a stream of rows."""

    def __init__(self, path: str | Path, *, columns: list[str], delimiter: str = ",",
                 encoding: str = "utf-8-sig") -> None:
        self.path = Path(path)
        self.format, self.gzipped = format_of(self.path)
        self.columns = columns  # source columns the mapping reads
        self.delimiter = delimiter
        self.encoding = encoding
        try:
            self.size = self.path.stat().st_size
        except OSError as exc:
            raise FileFormatError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._raw: IO[bytes] | None = None
        self._rows_done = 0
        self._rows_total = 0

    @property
    def name(self) -> str:
        return self.path.name

    def fraction_read(self) -> float:
        """How much of the file has been read, 0..1 (bytes for CSV/JSON Lines, rows for Parquet)."""
        if self.format == "parquet":
            return self._rows_done / self._rows_total if self._rows_total else 1.0
        if self._raw is None or self.size == 0:
            return 0.0
        try:
            return min(1.0, self._raw.tell() / self.size)
        except (OSError, ValueError):
            return 1.0

    def rows(self) -> Iterator[Row]:
        if self.format == "parquet":
            yield from self._parquet_rows()
            return
        with open(self.path, "rb") as raw:
            self._raw = raw
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if self.gzipped else raw
            try:
                if self.format == "csv":
                    yield from self._csv_rows(stream)
                else:
                    yield from self._jsonl_rows(stream)
            except (gzip.BadGzipFile, EOFError) as exc:
                raise FileFormatError(f"{self.name}: not a complete gzip file ({exc})") from None
            except UnicodeDecodeError as exc:
                raise FileFormatError(f"{self.name}: not {self.encoding} text ({exc.reason} at byte {exc.start}); "
                                      "set [csv] encoding in the mapping") from None

    def _csv_rows(self, stream: IO[bytes]) -> Iterator[Row]:
        text = io.TextIOWrapper(stream, encoding=self.encoding, newline="")
        reader = csv.reader(text, delimiter=self.delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise FileFormatError(f"{self.name}: empty file, expected a header row") from None
        except csv.Error as exc:
            raise FileFormatError(f"{self.name}:1: unreadable header ({exc})") from None
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise FileFormatError(f"{self.name}:1: duplicate column name(s) {', '.join(dupes)}")
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise FileFormatError(f"{self.name}: column(s) {', '.join(repr(c) for c in missing)} named in the "
                                  f"mapping are not in the header ({', '.join(header)})")
        number = 0
        line_after = reader.line_num
        while True:
            start = line_after + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                number += 1
                line_after = reader.line_num
                yield Row(number, f"{self.name}:{start}", None, f"unreadable CSV row ({exc})", reason="malformed_row",
                          original=b"")
                continue
            line_after = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line
            number += 1
            where = f"{self.name}:{start}"
            if len(cells) != len(header):
                yield Row(number, where, None, f"{len(cells)} cells, the header has {len(header)} columns",
                          reason="malformed_row", original=json.dumps(cells, ensure_ascii=False).encode())
                continue
            yield Row(number, where, dict(zip(header, cells, strict=True)))

    def _jsonl_rows(self, stream: IO[bytes]) -> Iterator[Row]:
        number = 0
        for line_no, line in enumerate(stream, start=1):
            body = line.strip()
            if line_no == 1 and body.startswith(b"\xef\xbb\xbf"):
                body = body[3:]
            if not body:
                continue
            number += 1
            where = f"{self.name}:{line_no}"
            try:
                obj = json.loads(body.decode("utf-8"))
            except UnicodeDecodeError:
                yield Row(number, where, None, "not UTF-8 text", original=body)
                continue
            except json.JSONDecodeError as exc:
                yield Row(number, where, None, f"not JSON ({exc.msg} at column {exc.colno})", original=body)
                continue
            if not isinstance(obj, dict):
                yield Row(number, where, None, f"expected a JSON object, got {type(obj).__name__}", original=body)
                continue
            yield Row(number, where, obj, original=body)

    def _parquet_rows(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends on garbage
            raise FileFormatError(f"{self.name}: not a Parquet file ({exc})") from None
        names = pf.schema_arrow.names
        wanted = []
        missing = []
        for column in self.columns:
            top = column if column in names else column.split(".")[0]
            if top not in names:
                missing.append(column)
            elif top not in wanted:
                wanted.append(top)
        if missing:
            raise FileFormatError(f"{self.name}: column(s) {', '.join(repr(c) for c in missing)} named in the "
                                  f"mapping are not in the file ({', '.join(names)})")
        self._rows_total = pf.metadata.num_rows
        number = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted or None):
            for values in batch.to_pylist():
                number += 1
                self._rows_done = number
                yield Row(number, f"{self.name}: row {number}", values)
