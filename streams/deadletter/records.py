"""Building dead-letter records (pure apart from the sealer's random nonce)."""

from __future__ import annotations

from typing import Any

from streams import avro
from streams.deadletter.sealing import Sealer


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    # The source coordinates identify the record: a replay yields the same id.
    return f"{topic}/{partition}/{offset}"


def build(
    sealer: Sealer, *, reason: str, detail: str, topic: str, partition: int, offset: int,
    payload: bytes | None, failed_at_ms: int, name: str | None = None,
) -> dict[str, Any]:
    """A dead-letter record; ``name`` overrides the id derived from the source
    coordinates (sources without Kafka coordinates, e.g. the HTTP collector)."""
    dl_id = name or dead_letter_id(topic, partition, offset)
    nonce, sealed = sealer.seal(payload or b"", dl_id.encode())
    return {
        "dead_letter_id": dl_id, "reason": reason, "detail": detail[:1000],
        "source_topic": topic, "source_partition": partition, "source_offset": offset,
        "failed_at_ms": failed_at_ms, "payload_size": len(payload or b""),
        "key_id": sealer.key_id, "nonce": nonce, "payload_encrypted": sealed,
    }


def encode(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a dead-letter record on the dead-letter topic: keyed by its id, Avro value."""
    return str(record["dead_letter_id"]).encode(), avro.encode(avro.DEAD_LETTER, record)
