"""``touchline load FILE --kind stores|products|calendar|spend``: a reference file onto its topic.

The file is parsed and checked as a whole first (``rows.parse_file``). If any
row is rejected, nothing is produced and the command exits 1, listing the first
errors; ``--allow-errors`` loads the valid rows anyway (exit 0). A file that
cannot be read at all (unknown format, bad CSV header, not gzip or UTF-8) exits 2.

Valid rows are produced to the kind's compacted topic, keyed by the natural id,
as Confluent-framed Avro, and the command waits until the broker acknowledged
every record. Parsing and encoding are deterministic, so loading the same file
again writes the same keys with the same values: compaction folds them and the
tables end in the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streams import avro
from streams.kafka.clients import create_topics, producer
from streams.reference.rows import KINDS, Kind, Parsed, RowError, parse_file
from streams.settings import Settings

SHOWN_ERRORS = 10


class LoadError(RuntimeError):
    """The broker did not take every record."""


@dataclass
class LoadResult:
    kind: Kind
    file: str
    topic: str
    rows: int  # valid rows in the file
    loaded: int  # records acknowledged by the broker
    errors: list[RowError] = field(default_factory=list)
    withheld: bool = False  # rows were rejected and --allow-errors was not given: nothing produced

    @property
    def rejected(self) -> int:
        return len(self.errors)

    def summary(self, shown: int = SHOWN_ERRORS) -> str:
        lines = [f"{self.file} -> {self.topic}: {self.loaded} loaded, {self.rejected} rejected"]
        lines += [f"  {e}" for e in self.errors[:shown]]
        if self.rejected > shown:
            lines.append(f"  ... and {self.rejected - shown} more")
        if self.withheld:
            lines.append(f"nothing loaded: fix the rejected rows, or pass --allow-errors to load "
                         f"the {self.rows} valid row(s)")
        return "\n".join(lines)


def produce_rows(settings: Settings, parsed: Parsed, timeout_s: float = 60.0) -> int:
    """Produce the parsed rows to their topic and wait for every acknowledgement; return the count."""
    kind = parsed.kind
    topic = kind.topic.name(settings)
    create_topics(settings, (kind.topic,))  # idempotent; keeps a fresh cluster's topic compacted
    failures: list[str] = []
    acked = 0

    def on_delivery(err: object, msg: object) -> None:
        nonlocal acked
        if err is not None:
            failures.append(str(err))
        else:
            acked += 1

    p = producer(settings)
    for row in parsed.rows:
        value = avro.encode(kind.contract, row.record)
        while True:
            try:
                p.produce(topic, key=row.key.encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                p.poll(0.5)
        p.poll(0)
    left = p.flush(timeout_s)
    if left or failures:
        raise LoadError(f"{topic}: {left} record(s) not delivered within {timeout_s:.0f}s, "
                        f"{len(failures)} failed{': ' + failures[0] if failures else ''}")
    return acked


def load(settings: Settings, path: Path | str, kind: str, allow_errors: bool = False) -> LoadResult:
    """Parse ``path`` as ``kind`` and load it (see the module docstring). Raises FileFormatError, LoadError."""
    parsed = parse_file(Path(path), KINDS[kind])
    result = LoadResult(parsed.kind, parsed.file, parsed.kind.topic.name(settings), len(parsed.rows), 0,
                        parsed.errors)
    if parsed.errors and not allow_errors:
        result.withheld = True
        return result
    result.loaded = produce_rows(settings, parsed)
    return result
