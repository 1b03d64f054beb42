"""Avro contracts from ``schemas/`` and the Confluent wire format.

Every record Touchline writes is ``0x00 | schema id (4 bytes, big-endian) |
Avro body``: the framing Confluent's serializers use, so any Schema Registry
aware consumer can read Touchline's topics.

Schema ids. Without a registry (``TOUCHLINE_SCHEMA_REGISTRY_URL`` empty), a
schema's id is derived from its parsing canonical form, so every process (and
every run) agrees on it without talking to anybody. With a registry, each
contract is registered under the subject of its full name (Confluent's
RecordNameStrategy) through confluent-kafka's registry client, and ids are the
registry's.

Versions. ``schemas/<full name>.avsc`` is the current version; every released
version is frozen, fully inlined, in ``schemas/versions/<full name>/v<N>.avsc``
(``touchline schemas --freeze`` adds one when a schema changed). Records
written with any earlier version are still read: the writer's version is found
by its id and resolved to the current schema (new fields take their defaults).
Example payloads of each version live in ``schemas/examples/<full name>/v<N>/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

MAGIC = 0
_HEADER = struct.Struct(">bI")

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
VERSIONS_DIR = SCHEMA_DIR / "versions"
EXAMPLES_DIR = SCHEMA_DIR / "examples"

# Contract names used in code. Each must exist as schemas/<name>.avsc.
TOUCHPOINT = "com.touchline.touchpoint.Touchpoint"
ENRICHED = "com.touchline.touchpoint.EnrichedTouchpoint"
DEAD_LETTER = "com.touchline.deadletter.DeadLetter"
IDENTITY_CHANGE = "com.touchline.identity.IdentityChange"
MEMBER_FEATURES = "com.touchline.features.MemberFeatures"
TRIGGER = "com.touchline.triggers.Trigger"
INGESTED_BATCH = "com.touchline.internal.IngestedBatch"
PERSON_BATCH = "com.touchline.internal.PersonBatch"
PERSON_OP = "com.touchline.internal.PersonOp"  # an item of PersonBatch.ops
STORE = "com.touchline.reference.Store"
PRODUCT = "com.touchline.reference.Product"
CAMPAIGN = "com.touchline.reference.Campaign"
SPEND = "com.touchline.reference.Spend"
IMPORT_LEDGER = "com.touchline.imports.ImportLedgerEntry"
SESSION = "com.touchline.sessions.Session"
IDENTITY_WORK = "com.touchline.internal.IdentityWork"
PRODUCT_SALES = "com.touchline.internal.ProductSales"
IDENTITY_ASSIGNMENT = "com.touchline.identity.IdentityAssignment"
ERASURE = "com.touchline.privacy.Erasure"
ERASURE_WORK = "com.touchline.internal.ErasureWork"


class WireFormatError(ValueError):
    """Bytes that are not a Confluent-framed record of a known schema."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Contract:
    name: str
    schema_id: int  # the deterministic id; see writer_id() for the id actually written
    parsed: Any  # fastavro parsed schema


def fixed_id(parsed: Any) -> int:
    canonical = to_parsing_canonical_form(parsed)
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF


@cache
def contract(name: str) -> Contract:
    parsed = load_schema(str(SCHEMA_DIR / f"{name}.avsc"))
    return Contract(name, fixed_id(parsed), parsed)


def all_contract_names() -> list[str]:
    return sorted(p.name[: -len(".avsc")] for p in SCHEMA_DIR.glob("*.avsc"))


def inlined(name: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The schema of ``name`` as one self-contained JSON document (named types
    defined at first use), as frozen in versions/ and sent to a registry."""
    seen: set[str] = set()

    def expand(node: Any) -> Any:
        if isinstance(node, str):
            if "." in node and node not in seen and (schema_dir / f"{node}.avsc").is_file():
                seen.add(node)
                return expand(json.loads((schema_dir / f"{node}.avsc").read_text()))
            return node
        if isinstance(node, list):
            return [expand(n) for n in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and "name" in node:
                ns = node.get("namespace")
                seen.add(f"{ns}.{node['name']}" if ns and "." not in node["name"] else node["name"])
            out = dict(node)
            for key in ("type", "items", "values"):
                if key in out:
                    out[key] = expand(out[key])
            if "fields" in out:
                out["fields"] = [dict(f, type=expand(f["type"])) for f in out["fields"]]
            return out
        return node

    return expand(json.loads((schema_dir / f"{name}.avsc").read_text()))


def versions(name: str) -> list[tuple[int, dict[str, Any]]]:
    """Frozen versions of a contract, oldest first: (version number, inlined schema)."""
    out = []
    for path in (VERSIONS_DIR / name).glob("v*.avsc"):
        out.append((int(path.stem[1:]), json.loads(path.read_text())))
    return sorted(out, key=lambda v: v[0])


def freeze(schema_dir: Path = SCHEMA_DIR, versions_dir: Path = VERSIONS_DIR) -> list[str]:
    """Write a new version file for every schema whose canonical form changed."""
    written = []
    for path in sorted(schema_dir.glob("*.avsc")):
        name = path.name[: -len(".avsc")]
        current = inlined(name, schema_dir)
        folder = versions_dir / name
        existing = sorted(folder.glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
        if existing and json.loads(existing[-1].read_text()) == current:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"v{int(existing[-1].stem[1:]) + 1 if existing else 1}.avsc"
        target.write_text(json.dumps(current, indent=2) + "\n")
        written.append(str(target.relative_to(versions_dir.parent)))
    return written


@dataclass(frozen=True)
class _Writer:
    name: str
    parsed: Any
    current: bool  # True: the current version, read without resolution


@cache
def _writers_by_id() -> dict[int, _Writer]:
    """Every version of every contract by its deterministic id."""
    by_id: dict[int, _Writer] = {}
    for name in all_contract_names():
        for _, schema in versions(name):
            parsed = parse_schema(schema, named_schemas={})
            by_id[fixed_id(parsed)] = _Writer(name, parsed, False)
        c = contract(name)
        by_id[c.schema_id] = _Writer(name, c.parsed, True)
    return by_id


def preload() -> None:
    """Parse every contract and each of its earlier versions now, at a process's start, rather
    than when the first record is decoded (a one-off cost of about a second of CPU)."""
    _writers_by_id()


class Registry:
    """Schema ids from a Confluent Schema Registry (any URL confluent-kafka's
    client accepts, including ``mock://`` for tests)."""

    def __init__(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self.client = SchemaRegistryClient.new_client({"url": url})
        self._ids: dict[str, int] = {}
        self._writers: dict[int, _Writer] = {}
        self._lock = threading.Lock()

    def id_for(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            from confluent_kafka.schema_registry import Schema

            with self._lock:
                found = self.client.register_schema(name, Schema(json.dumps(inlined(name)), "AVRO"))
                self._ids[name] = found
                self._writers[found] = _Writer(name, contract(name).parsed, True)
        return found

    def writer(self, schema_id: int) -> _Writer | None:
        found = self._writers.get(schema_id)
        if found is None:
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            try:
                schema = json.loads(self.client.get_schema(schema_id).schema_str or "{}")
            except SchemaRegistryError:
                return None
            name = schema["name"] if "." in schema["name"] else f"{schema.get('namespace')}.{schema['name']}"
            if name not in all_contract_names():
                return None
            parsed = parse_schema(schema, named_schemas={})
            current = fixed_id(parsed) == contract(name).schema_id
            found = _Writer(name, contract(name).parsed if current else parsed, current)
            with self._lock:
                self._writers[schema_id] = found
        return found


_registry: Registry | None = None


def use_registry(url: str) -> None:
    """Take schema ids from this registry from now on (empty: fixed ids)."""
    global _registry
    _registry = Registry(url) if url else None


def writer_id(name: str) -> int:
    return _registry.id_for(name) if _registry is not None else contract(name).schema_id


def encode(name: str, record: dict[str, Any]) -> bytes:
    c = contract(name)
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, writer_id(name)))
    fastavro.schemaless_writer(buf, c.parsed, record)
    return buf.getvalue()


def append_items(name: str, data: bytes, item_name: str, items: list[dict[str, Any]]) -> bytes:
    """The framed ``name`` record ``data``, whose last field is an array of ``item_name`` records,
    with ``items`` added at the end of that array. Written by the current schema, the record is
    not decoded: Avro ends an array with a zero-count block, so the items go in as one more block
    before it (``encode`` of the whole record gives bytes that decode the same). A record of an
    older writer schema is decoded and encoded again."""
    if not items:
        return data
    if _HEADER.unpack_from(data)[1] != writer_id(name) or data[-1:] != b"\x00":
        record = decode_as(name, data)
        field = contract(name).parsed["fields"][-1]["name"]
        return encode(name, {**record, field: [*record[field], *items]})
    buf = io.BytesIO()
    buf.write(data[:-1])
    fastavro.schemaless_writer(buf, "long", len(items))
    item = contract(item_name).parsed
    for record in items:
        fastavro.schemaless_writer(buf, item, record)
    buf.write(b"\x00")
    return buf.getvalue()


def _writer(schema_id: int) -> _Writer | None:
    if _registry is not None:
        # Records written with fixed ids before a registry was configured still read.
        return _registry.writer(schema_id) or _writers_by_id().get(schema_id)
    return _writers_by_id().get(schema_id)


def decode(data: bytes | None, expect: str | None = None) -> tuple[str, dict[str, Any]]:
    """Decode framed bytes; raise WireFormatError with a dead-letter reason."""
    if data is None or len(data) < _HEADER.size:
        raise WireFormatError("not_wire_format", f"{0 if data is None else len(data)} bytes, need a 5-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("not_wire_format", f"magic byte {magic}, expected {MAGIC}")
    writer = _writer(schema_id)
    if writer is None:
        raise WireFormatError("unknown_schema", f"schema id {schema_id} is not a Touchline contract")
    if expect is not None and writer.name != expect:
        raise WireFormatError("wrong_schema", f"got {writer.name}, this topic carries {expect}")
    buf = io.BytesIO(data)
    buf.seek(_HEADER.size)
    try:
        reader = None if writer.current else contract(writer.name).parsed
        record = fastavro.schemaless_reader(buf, writer.parsed, reader)
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
