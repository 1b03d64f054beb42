"""The touchpoint contract: examples per schema version, compatibility between
versions, the JSON form, and schema ids from a registry (confluent's mock://)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema
from fastavro.validation import validate

from streams import avro
from streams.ingest.validate import Policy, Rejected, clean
from streams.topics import ALL_TOPICS
from streams.touchpoint import jsonform, record
from streams.touchpoint.normalise import HASH_PREFIX
from streams.touchpoint.taxonomy import EVENT_TYPES, FAMILY_OF

POLICY = Policy(salt=b"test-salt")


def _bytes_fields(value: Any, schema: Any, named: dict[str, Any]) -> Any:
    """JSON cannot hold bytes: example files spell them as strings (Avro's JSON convention)."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if schema == "bytes" or (isinstance(schema, dict) and schema.get("type") == "bytes"):
        return value.encode("latin-1") if isinstance(value, str) else value
    if isinstance(schema, list):
        for branch in schema:
            if branch != "null" and value is not None:
                return _bytes_fields(value, branch, named)
        return value
    if isinstance(schema, dict) and schema.get("type") == "record" and isinstance(value, dict):
        return {**value, **{f["name"]: _bytes_fields(value[f["name"]], f["type"], named)
                            for f in schema["fields"] if f["name"] in value}}
    if isinstance(schema, dict) and schema.get("type") == "array" and isinstance(value, list):
        return [_bytes_fields(v, schema["items"], named) for v in value]
    return value


def examples() -> list[tuple[str, int, Path]]:
    out = []
    for folder in sorted(avro.EXAMPLES_DIR.glob("*/v*")):
        for path in sorted(folder.glob("*.json")):
            out.append((folder.parent.name, int(folder.name[1:]), path))
    return out


def version_schema(name: str, version: int) -> Any:
    found = dict(avro.versions(name)).get(version)
    assert found is not None, f"{name} has no frozen version {version}"
    return parse_schema(found, named_schemas={})


def load_example(name: str, version: int, path: Path) -> dict[str, Any]:
    parsed = version_schema(name, version)
    return _bytes_fields(json.loads(path.read_text()), parsed, parsed["__named_schemas"])


def latest_examples(name: str) -> list[dict[str, Any]]:
    """The examples of ``name``'s latest frozen version, as the decoder returns them (defaults filled)."""
    latest = avro.versions(name)[-1][0]
    paths = sorted((avro.EXAMPLES_DIR / name / f"v{latest}").glob("*.json"))
    return [avro.decode_as(name, avro.encode(name, load_example(name, latest, p))) for p in paths]


def write_with(parsed: Any, datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "version", "path"), examples(), ids=lambda v: getattr(v, "name", str(v)))
def test_every_example_is_valid_for_its_version_and_read_by_the_current_schema(name: str, version: int, path: Path) -> None:
    parsed = version_schema(name, version)
    datum = load_example(name, version, path)
    assert validate(datum, parsed, raise_errors=True)
    framed = avro.MAGIC.to_bytes(1, "big") + avro.fixed_id(parsed).to_bytes(4, "big") + write_with(parsed, datum)
    got_name, got = avro.decode(framed)
    assert got_name == name
    for field, value in datum.items():  # what the old version wrote survives in the current reading
        if not isinstance(value, dict) and field in got:
            assert got[field] == value, field


def test_each_new_version_reads_data_written_by_the_previous_one() -> None:
    checked = 0
    for name in avro.all_contract_names():
        history = avro.versions(name)
        for (old_v, old), (_new_v, new) in zip(history, history[1:], strict=False):
            old_parsed = parse_schema(old, named_schemas={})
            new_parsed = parse_schema(new, named_schemas={})
            for path in sorted((avro.EXAMPLES_DIR / name / f"v{old_v}").glob("*.json")):
                data = write_with(old_parsed, load_example(name, old_v, path))
                fastavro.schemaless_reader(io.BytesIO(data), old_parsed, new_parsed)
                checked += 1
    assert checked >= 3  # Touchpoint v1 -> v2 at least


def test_the_latest_frozen_version_is_the_current_schema() -> None:
    """Changing a schema without `touchline schemas --freeze` fails here."""
    for name in avro.all_contract_names():
        history = avro.versions(name)
        assert history, f"{name} was never frozen: run `touchline schemas --freeze`"
        assert history[-1][1] == avro.inlined(name), f"{name} changed since v{history[-1][0]}: freeze a new version"


def test_every_public_topic_contract_has_examples_of_its_latest_version() -> None:
    for spec in (s for s in ALL_TOPICS if not s.internal):
        latest = avro.versions(spec.schema)[-1][0]
        assert list((avro.EXAMPLES_DIR / spec.schema / f"v{latest}").glob("*.json")), spec.schema


def current_touchpoints() -> list[dict[str, Any]]:
    return [load_example(avro.TOUCHPOINT, 2, p) for p in sorted((avro.EXAMPLES_DIR / avro.TOUCHPOINT / "v2").glob("*.json"))]


def test_touchpoint_examples_cover_the_taxonomy_and_pass_ingestion() -> None:
    tps = current_touchpoints()
    assert {t["type"] for t in tps} == set(EVENT_TYPES)
    for tp in tps:
        full = avro.decode_as(avro.TOUCHPOINT, avro.encode(avro.TOUCHPOINT, tp))
        cleaned = clean(full, POLICY)
        assert not isinstance(cleaned, Rejected), (tp["type"], cleaned)
        assert record.props(cleaned) == full["properties"][FAMILY_OF[tp["type"]]]
        for kind in ("phone", "email"):
            if full["identifiers"][kind] is not None:
                assert cleaned["identifiers"][kind].startswith(HASH_PREFIX)


def test_v1_flat_properties_move_into_the_family_record() -> None:
    parsed = version_schema(avro.TOUCHPOINT, 1)
    old = load_example(avro.TOUCHPOINT, 1, avro.EXAMPLES_DIR / avro.TOUCHPOINT / "v1" / "product_added.json")
    framed = b"\x00" + avro.fixed_id(parsed).to_bytes(4, "big") + write_with(parsed, old)
    cleaned = clean(avro.decode_as(avro.TOUCHPOINT, framed), POLICY)
    assert not isinstance(cleaned, Rejected)
    cart = record.props(cleaned)
    assert (cart["cart_id"], cart["product_id"], cart["price"], cart["quantity"]) == ("cart-88a1", "P00017", 899.0, 1)
    assert cleaned["properties"]["cart_id"] is None  # the deprecated flat field is emptied


def test_json_form_round_trips_every_example() -> None:
    for tp in current_touchpoints():
        full = avro.decode_as(avro.TOUCHPOINT, avro.encode(avro.TOUCHPOINT, tp))
        assert jsonform.from_json(jsonform.to_json(full), received_ms=0) == full, tp["type"]


@pytest.mark.parametrize(("event", "reason", "needle"), [
    ([1, 2], "invalid_json", "JSON object"),
    ({"type": "page_viewed"}, "missing_field", "event_id"),
    ({"event_id": "e", "type": "page_viewed", "channel": "web"}, "missing_field", "timestamp"),
    ({"event_id": "e", "type": "page_viewed", "timestamp": "yesterday", "channel": "web"}, "invalid_field", "ISO-8601"),
    ({"event_id": "e", "type": "page_viewed", "timestamp": 1, "channel": "web", "colour": "red"}, "unknown_field", "colour"),
    ({"event_id": "e", "type": "page_viewed", "timestamp": 1, "channel": "web", "properties": {"price": 1}},
     "unknown_field", "custom event"),
    ({"event_id": "e", "type": "product_added", "timestamp": 1, "channel": "web",
      "properties": {"cart_id": "k", "product_id": "p", "quantity": "2"}}, "invalid_field", "properties.quantity"),
    ({"event_id": "e", "type": "product_added", "timestamp": 1, "channel": "web", "properties": {"cart_id": "k"}},
     "missing_field", "properties.product_id"),
])
def test_json_form_errors_name_the_field(event: Any, reason: str, needle: str) -> None:
    with pytest.raises(jsonform.JsonEventError) as err:
        jsonform.from_json(event, received_ms=0)
    assert err.value.reason == reason and needle in err.value.message


def test_segment_style_events_are_understood() -> None:
    tp = jsonform.from_json({
        "messageId": "m-1", "type": "track", "event": "Product Added", "timestamp": "2026-11-11T20:00:00+08:00",
        "channel": "web", "anonymousId": "c-1", "userId": "M1",
        "properties": {"cart_id": "k", "product_id": "p", "price": 299},
    }, received_ms=5)
    assert (tp["event_id"], tp["type"], tp["event_time_ms"], tp["receive_time_ms"]) == ("m-1", "product_added", 1794398400000, 5)
    assert (tp["identifiers"]["anonymous_id"], tp["identifiers"]["member_id"]) == ("c-1", "M1")
    assert record.props(tp)["price"] == 299.0
    naive = jsonform.from_json({"messageId": "m-2", "type": "page", "timestamp": "2026-11-11T20:00:00",
                                "channel": "web", "anonymousId": "c-1"}, received_ms=0)
    assert naive["type"] == "page_viewed" and naive["event_time_ms"] == 1794398400000  # naive = Asia/Shanghai
    other = jsonform.from_json({"messageId": "m-3", "type": "track", "event": "Wishlist Added", "timestamp": 1,
                                "channel": "app", "anonymousId": "c-1", "properties": {"sku": "a", "n": 2}}, received_ms=0)
    assert other["type"] == "custom"
    assert record.props(other) == {"event_name": "Wishlist Added", "attributes": {"sku": "a", "n": 2}}


def test_schema_registry_ids_through_confluents_client() -> None:
    tp = current_touchpoints()[0]
    fixed = avro.encode(avro.TOUCHPOINT, tp)
    avro.use_registry("mock://touchline-test")
    try:
        registry = avro._registry
        assert registry is not None
        framed = avro.encode(avro.TOUCHPOINT, tp)
        schema_id = int.from_bytes(framed[1:5], "big")
        registered = registry.client.get_schema(schema_id)
        assert json.loads(registered.schema_str or "") == avro.inlined(avro.TOUCHPOINT)
        assert registry.client.get_latest_version(avro.TOUCHPOINT).schema_id == schema_id  # RecordNameStrategy
        assert avro.decode_as(avro.TOUCHPOINT, framed) == avro.decode_as(avro.TOUCHPOINT, fixed)
        # A schema registered by someone else (an older producer) is fetched by id and resolved.
        v1 = avro.versions(avro.TOUCHPOINT)[0][1]
        from confluent_kafka.schema_registry import Schema

        old_id = registry.client.register_schema(avro.TOUCHPOINT, Schema(json.dumps(v1), "AVRO"))
        old = load_example(avro.TOUCHPOINT, 1, avro.EXAMPLES_DIR / avro.TOUCHPOINT / "v1" / "order_completed.json")
        data = b"\x00" + old_id.to_bytes(4, "big") + write_with(parse_schema(v1, named_schemas={}), old)
        assert avro.decode_as(avro.TOUCHPOINT, data)["properties"]["order_id"] == "O-1"
        with pytest.raises(avro.WireFormatError) as err:
            avro.decode(b"\x00" + (999_999).to_bytes(4, "big") + b"\x02")
        assert err.value.reason == "unknown_schema"
    finally:
        avro.use_registry("")
    assert avro.encode(avro.TOUCHPOINT, tp) == fixed  # back to fixed ids


def _merge_op(person: str, into: str) -> dict[str, Any]:
    return {"kind": "merge", "person_id": person, "event": None, "other_person": into, "absorbed_state": None,
            "features": None}


def test_items_appended_to_a_framed_batch_read_as_the_batch_encoded_with_them() -> None:
    """avro.append_items (the features stage adds its snapshots' ops to the batch it read): the bytes
    read back as encoding the whole batch with the ops added; nothing to add keeps the bytes."""
    batch = {"batch_id": "b/0", "source_partition": 1, "watermark_ms": 5, "source_offset": 7,
             "ops": [_merge_op("p-a", "p-b"), _merge_op("p-c", "p-b")]}
    extra = [{**_merge_op("p-b", "p-d"), "kind": "features", "features": '{"x": 1}'}]
    raw = avro.encode(avro.PERSON_BATCH, batch)
    whole = avro.decode_as(avro.PERSON_BATCH, avro.encode(avro.PERSON_BATCH, {**batch, "ops": batch["ops"] + extra}))
    assert avro.decode_as(avro.PERSON_BATCH, avro.append_items(avro.PERSON_BATCH, raw, avro.PERSON_OP, extra)) == whole
    assert avro.append_items(avro.PERSON_BATCH, raw, avro.PERSON_OP, []) is raw
    # Written by an older version of the schema: decoded and encoded again, the same result.
    [(_, first)] = avro.versions(avro.PERSON_BATCH)[:1]
    parsed = parse_schema(first, named_schemas={})
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", avro.MAGIC, avro.fixed_id(parsed)))
    fastavro.schemaless_writer(buf, parsed, batch)
    old = buf.getvalue()
    assert avro.decode_as(avro.PERSON_BATCH, avro.append_items(avro.PERSON_BATCH, old, avro.PERSON_OP, extra)) == {
        **avro.decode_as(avro.PERSON_BATCH, old), "ops": avro.decode_as(avro.PERSON_BATCH, old)["ops"] + extra}
