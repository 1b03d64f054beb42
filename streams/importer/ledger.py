"""The import ledger: which files were imported with which mapping, on a compacted topic.

One record per completed import, keyed ``<file sha256>:<mapping sha256>``
(topics.IMPORTS_LEDGER, one partition, compacted, Avro
``com.touchline.imports.ImportLedgerEntry``). Before sending anything the
importer looks its key up; an entry means the same bytes were already
imported with the same mapping, so there is nothing to do. The entry is
written only after every event and dead letter of the import was delivered.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from streams import avro
from streams.kafka import clients
from streams.settings import Settings
from streams.topics import IMPORTS_LEDGER

SCHEMA = IMPORTS_LEDGER.schema
READ_TIMEOUT_S = 30.0


def import_key(file_sha256: str, mapping_sha256: str) -> str:
    return f"{file_sha256}:{mapping_sha256}"


def entry(*, file_sha256: str, mapping_sha256: str, file_name: str, file_bytes: int, source: str,
          imported_at_ms: int, rows: int, accepted: int, rejected_by_reason: dict[str, int],
          forced: bool) -> dict[str, Any]:
    return {
        "import_key": import_key(file_sha256, mapping_sha256), "file_sha256": file_sha256,
        "mapping_sha256": mapping_sha256, "file_name": file_name, "file_bytes": file_bytes, "source": source,
        "imported_at_ms": imported_at_ms, "rows": rows, "accepted": accepted,
        "rejected": sum(rejected_by_reason.values()), "rejected_by_reason": dict(rejected_by_reason),
        "forced": forced,
    }


def find(settings: Settings, key: str, timeout_s: float = READ_TIMEOUT_S) -> dict[str, Any] | None:
    """The latest ledger entry for ``key``, or None (never imported, or forgotten by a tombstone)."""
    clients.create_topics(settings, (IMPORTS_LEDGER,))
    topic = IMPORTS_LEDGER.name(settings)
    consumer = clients.consumer(settings, f"{settings.group('importer')}-{uuid.uuid4().hex[:8]}",
                                **{"enable.partition.eof": True})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        found: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout_s
        position = low
        while position < high:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the import ledger {topic} took longer than {timeout_s:.0f} s")
            for m in consumer.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof = m.offset()
                        position = max(position, high if eof is None else eof)
                        continue
                    raise RuntimeError(f"reading the import ledger {topic}: {err}")
                position = max(position, (m.offset() or 0) + 1)
                if m.key() == key.encode():
                    value = m.value()
                    found = None if value is None else avro.decode_as(SCHEMA, value)
        return found
    finally:
        consumer.close()


def encode(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a ledger record."""
    return record["import_key"].encode(), avro.encode(SCHEMA, record)
