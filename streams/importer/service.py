"""``touchline import``: an export file + a mapping -> historical touchpoints on the raw topic.

The shell around the pure parts (mapping.py, files.py, convert.py):

1. parse the mapping and open the file (format from its name), failing early;
2. hash the file (sha256, streamed) and look ``<file sha256>:<mapping sha256>``
   up in the import ledger: found means "already imported", nothing is sent
   (``--force`` imports anyway);
3. stream the rows: each clean event goes to the raw topic as Avro, keyed by
   its route key; each rejected row goes to the dead-letter topic with its
   reason, a message naming file, line and column, and the original row
   sealed (AES-GCM), so raw phone numbers and emails never reach a topic in
   clear;
4. flush and check every delivery, and only then write the ledger entry.
   A failed delivery exits non-zero and writes no entry: running again is
   safe, since event ids are deterministic and repeats are dropped downstream.

A progress bar on stderr shows rows, rows/s and how much of the file was read.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaError, Message

from streams import avro
from streams.clock import Clock, SystemClock
from streams.deadletter import records as dead_letters
from streams.deadletter.sealing import Sealer
from streams.importer import ledger
from streams.importer.convert import Converted, Converter, Failure
from streams.importer.files import ExportFile, Row
from streams.importer.mapping import Mapping
from streams.importer.mapping import load as load_mapping
from streams.importer.progress import Progress
from streams.ingest.service import policy_from
from streams.kafka import clients
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, IMPORTS_LEDGER, RAW

FLUSH_TIMEOUT_S = 60.0
POLL_EVERY = 1000
SHOW_REJECTIONS = 5  # rejected rows listed in the summary (all of them are on the dead-letter topic)


class DeliveryFailed(RuntimeError):
    """Some records were not delivered: no ledger entry was written."""


@dataclass
class ImportResult:
    file: str
    file_sha256: str
    source: str
    rows: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    dry_run: bool = False
    forced: bool = False
    already: dict[str, Any] | None = None  # the ledger entry found: nothing was done
    first_rejections: list[str] = field(default_factory=list)  # the first few, for the summary

    def summary(self) -> str:
        if self.already is not None:
            when = datetime.fromtimestamp(self.already["imported_at_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return (f"{self.file}: already imported on {when} ({self.already['rows']:,} rows, "
                    f"{self.already['accepted']:,} accepted, {self.already['rejected']:,} rejected; "
                    f"sha256 {self.file_sha256}): nothing to do (--force imports it again)")
        lines = [
            f"{'dry run of ' if self.dry_run else ''}import of {self.file} (source {self.source}"
            f"{', forced' if self.forced else ''})",
            f"  file sha256  {self.file_sha256}",
            f"  rows read    {self.rows:,}",
            f"  accepted     {self.accepted:,}" + ("  (dry run: nothing sent)" if self.dry_run else ""),
            f"  rejected     {sum(self.rejected.values()):,}"
            + ("" if self.dry_run else "  (to the dead-letter topic)"),
        ]
        for reason, n in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason:24} {n:,}")
        if self.first_rejections:
            lines.append(f"  first rejected row{'s' if len(self.first_rejections) > 1 else ''}:")
            lines += [f"    {detail}" for detail in self.first_rejections]
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"  took         {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        return "\n".join(lines)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Sender:
    """A confluent-kafka producer that counts failed deliveries."""

    def __init__(self, settings: Settings) -> None:
        self.producer = clients.producer(settings)
        self.failures: list[str] = []
        self._sent = 0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self._sent += 1
        if self._sent % POLL_EVERY == 0:
            self.producer.poll(0)

    def flush(self, what: str) -> None:
        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left or self.failures:
            detail = f"; first error: {self.failures[0]}" if self.failures else ""
            raise DeliveryFailed(f"{left + len(self.failures)} record(s) of {what} were not delivered{detail}")


def run_import(settings: Settings, file: str | Path, mapping: str | Path | Mapping, *, force: bool = False,
               dry_run: bool = False, clock: Clock | None = None, stderr: TextIO | None = None,
               tty: bool | None = None) -> ImportResult:
    """Import one file. Raises MappingError / FileFormatError (nothing sent) or DeliveryFailed."""
    clock = clock or SystemClock()
    stderr = stderr if stderr is not None else sys.stderr
    m = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    export = ExportFile(file, columns=m.source_columns, delimiter=m.csv_delimiter, encoding=m.csv_encoding)
    digest = file_sha256(export.path)
    result = ImportResult(export.name, digest, m.source, dry_run=dry_run, forced=force)
    key = ledger.import_key(digest, m.digest)
    if not dry_run:
        found = ledger.find(settings, key)
        if found is not None and not force:
            result.already = found
            return result

    converter = Converter(m, policy_from(settings))
    policy = converter.policy
    sender = None if dry_run else _Sender(settings)
    sealer = None if dry_run else Sealer.from_settings(settings)
    raw_topic, dlq_topic = RAW.name(settings), DEAD_LETTERS.name(settings)
    # Dead letters name the file by its hash: two files of one source never share a dead-letter id.
    origin = f"import/{m.source}/{digest[:16]}"
    progress = Progress(stderr, f"importing {export.name}", tty=tty)
    started = time.monotonic()

    def reject(row: Row, failure: Failure, now_ms: int) -> None:
        result.rejected[failure.reason] += 1
        if len(result.first_rejections) < SHOW_REJECTIONS:
            result.first_rejections.append(f"{failure.reason}: {failure.detail}")
        if sender is None or sealer is None:
            return
        record = dead_letters.build(
            sealer, reason=failure.reason, detail=failure.detail, topic=origin, partition=-1,
            offset=row.number, payload=row.payload(), failed_at_ms=now_ms,
        )
        sender.send(dlq_topic, *dead_letters.encode(record))

    for row in export.rows():
        result.rows += 1
        now_ms = clock.now_ms()
        outcome: Converted | Failure = converter.convert(row, now_ms)
        if isinstance(outcome, Converted):
            value = avro.encode(avro.TOUCHPOINT, outcome.touchpoint)
            if len(value) > policy.max_record_bytes:
                reject(row, Failure("oversize", f"{row.where}: {len(value)} bytes as Avro, limit "
                                    f"{policy.max_record_bytes}"), now_ms)
            else:
                result.accepted += 1
                if sender is not None:
                    sender.send(raw_topic, outcome.key.encode(), value)
        else:
            reject(row, outcome, now_ms)
        progress.update(result.rows, export.fraction_read())

    if sender is not None:
        sender.flush(f"{export.name} (events and dead letters)")
        entry = ledger.entry(
            file_sha256=digest, mapping_sha256=m.digest, file_name=export.name, file_bytes=export.size,
            source=m.source, imported_at_ms=clock.now_ms(), rows=result.rows, accepted=result.accepted,
            rejected_by_reason=dict(result.rejected), forced=force,
        )
        k, v = ledger.encode(entry)
        sender.send(IMPORTS_LEDGER.name(settings), k, v)
        sender.flush("the import ledger entry")
    result.seconds = time.monotonic() - started
    progress.finish(result.rows)
    return result
