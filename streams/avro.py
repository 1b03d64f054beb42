"""Avro contracts from ``schemas/`` and the Confluent wire format.

Every record Touchline writes is ``0x00 | schema id (4 bytes, big-endian) |
Avro body``: the framing Confluent's serializers use, so any Schema Registry
aware consumer can read Touchline's topics. Without a registry, a schema's id
is derived from its parsing canonical form, so every process (and every run)
agrees on it without talking to anybody.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema, to_parsing_canonical_form

MAGIC = 0
_HEADER = struct.Struct(">bI")

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

# Contract names used in code. Each must exist as schemas/<name>.avsc.
TOUCHPOINT = "com.touchline.touchpoint.Touchpoint"
ENRICHED = "com.touchline.touchpoint.EnrichedTouchpoint"
DEAD_LETTER = "com.touchline.deadletter.DeadLetter"
IDENTITY_CHANGE = "com.touchline.identity.IdentityChange"
MEMBER_FEATURES = "com.touchline.features.MemberFeatures"
TRIGGER = "com.touchline.triggers.Trigger"
INGESTED_BATCH = "com.touchline.internal.IngestedBatch"
PERSON_BATCH = "com.touchline.internal.PersonBatch"


class WireFormatError(ValueError):
    """Bytes that are not a Confluent-framed record of a known schema."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Contract:
    name: str
    schema_id: int
    parsed: Any  # fastavro parsed schema


@cache
def contract(name: str) -> Contract:
    parsed = load_schema(str(SCHEMA_DIR / f"{name}.avsc"))
    canonical = to_parsing_canonical_form(parsed)
    schema_id = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF
    return Contract(name, schema_id, parsed)


def all_contract_names() -> list[str]:
    return sorted(p.name[: -len(".avsc")] for p in SCHEMA_DIR.glob("*.avsc"))


@cache
def _contracts_by_id() -> dict[int, Contract]:
    return {c.schema_id: c for c in (contract(n) for n in all_contract_names())}


def encode(name: str, record: dict[str, Any]) -> bytes:
    c = contract(name)
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, c.schema_id))
    fastavro.schemaless_writer(buf, c.parsed, record)
    return buf.getvalue()


def decode(data: bytes | None, expect: str | None = None) -> tuple[str, dict[str, Any]]:
    """Decode framed bytes; raise WireFormatError with a dead-letter reason."""
    if data is None or len(data) < _HEADER.size:
        raise WireFormatError("not_wire_format", f"{0 if data is None else len(data)} bytes, need a 5-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("not_wire_format", f"magic byte {magic}, expected {MAGIC}")
    writer = _contracts_by_id().get(schema_id)
    if writer is None:
        raise WireFormatError("unknown_schema", f"schema id {schema_id} is not a Touchline contract")
    if expect is not None and writer.name != expect:
        raise WireFormatError("wrong_schema", f"got {writer.name}, this topic carries {expect}")
    buf = io.BytesIO(data)
    buf.seek(_HEADER.size)
    try:
        record = fastavro.schemaless_reader(buf, writer.parsed, None)
    except Exception as exc:  # fastavro raises many types on garbage
        raise WireFormatError("avro_decode_error", f"{type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data):
        raise WireFormatError("avro_decode_error", f"{len(data) - buf.tell()} trailing bytes")
    return writer.name, record  # type: ignore[return-value]


def decode_as(name: str, data: bytes) -> dict[str, Any]:
    return decode(data, expect=name)[1]


def iter_contracts() -> Iterator[Contract]:
    for name in all_contract_names():
        yield contract(name)
