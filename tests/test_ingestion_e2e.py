"""Ingestion on the running pipeline: duplicates across a worker kill, and a
fuzz of malformed input that must never kill a worker or lose a record."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import parse_schema
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streams import avro
from streams.deadletter.inspect import read_to_end
from streams.ingest.validate import route_key
from streams.processes import scrape_total
from streams.tally import TopicReader
from streams.topics import ENRICHED, INGESTED, RAW, partition_for
from streams.touchpoint.taxonomy import CHANNELS, EVENT_TYPES, JUNK_VALUES
from tests.conftest import T0, encoded, touchpoint

pytestmark = pytest.mark.e2e
MIN = 60_000


def _committed_up_to_end(settings: Any, topic: str, partitions: int) -> bool:
    """True once the Faust app's group has committed every record of ``topic``."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.topic_prefix,
                  "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
        return all(ends[p] == 0 or committed[p] >= ends[p] for p in range(partitions))
    finally:
        c.close()


def test_a_duplicate_sent_after_workers_are_killed_is_still_dropped(stack_factory) -> None:
    stack = stack_factory(workers=2, sink=False)
    original = touchpoint("dup-1", "page_viewed", T0, identifiers={"anonymous_id": "c-dup"})
    others = [touchpoint(f"o{i}", "page_viewed", T0 + i, identifiers={"anonymous_id": f"c{i}"}) for i in range(20)]
    stack.produce([encoded(original)] + [encoded(e) for e in others])
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda t: len(t.event_ids) == 21)
    deadline = time.monotonic() + 60
    changelog = f"{stack.settings.topic_prefix}-identity-dedup-changelog"
    while not (_committed_up_to_end(stack.settings, INGESTED.name(stack.settings), stack.settings.partitions)
               and any(b"dup-1" in (m.value() or b"") for m in read_to_end(stack.settings, changelog))):
        assert time.monotonic() < deadline, "identity never committed its input and its duplicate filter"
        reader.poll()
    for child in list(stack.supervisor.children):  # no goodbye: the dedup state must come from the changelog
        stack.supervisor.kill(child)
    worker = stack.supervisor.start_worker(0)
    after = touchpoint("after-1", "page_viewed", T0 + MIN, identifiers={"anonymous_id": "c-after"})
    stack.produce([encoded(original), encoded(after)])  # a producer retry of dup-1, then news
    tally = stack.wait_for(reader, lambda t: "after-1" in t.event_ids)
    deadline = time.monotonic() + 120
    while scrape_total(worker.port, 'touchline_ingest_outcomes_total{channel="web",outcome="duplicate"') < 1:
        reader.poll()
        assert time.monotonic() < deadline, ("the resend was never counted as a duplicate; enriched records of "
                                             f"dup-1: {reader.tally.enriched_records['dup-1']}")
    reader.poll()
    reader.close()
    assert tally.enriched_records["dup-1"] == 1
    assert scrape_total(worker.port, "touchline_duplicates_dropped_total") == 1


# --------------------------------------------------------------------------- fuzz

FUZZ_RECORDS = 10_000
TOUCHPOINT_V2 = avro.contract(avro.TOUCHPOINT).parsed


def _valid(i: int, t: int = T0, prefix: str = "ok") -> dict[str, Any]:
    return touchpoint(f"{prefix}-{i}", "page_viewed", t, identifiers={"anonymous_id": f"c-{i % 50}"})


def _frame(body: bytes, schema_id: int | None = None) -> bytes:
    sid = avro.contract(avro.TOUCHPOINT).schema_id if schema_id is None else schema_id
    return b"\x00" + sid.to_bytes(4, "big") + body


def _with_wrong_types() -> Any:
    """Touchpoint's writer schema with event_time_ms as a string: bytes framed as a Touchpoint."""
    schema = json.loads(json.dumps(avro.inlined(avro.TOUCHPOINT)))
    for f in schema["fields"]:
        if f["name"] == "event_time_ms":
            f["type"] = "string"
    return parse_schema(schema, named_schemas={})


WRONG_TYPES = _with_wrong_types()
KNOWN_IDS = {c.schema_id for c in avro.iter_contracts()}


@st.composite
def malformed(draw: Any) -> tuple[bytes, str | None]:
    """(record bytes, the dead-letter reason it must get, or None if its outcome is not predictable)."""
    kind = draw(st.sampled_from([
        "random", "truncated", "unknown_schema", "wrong_schema", "wrong_types", "missing_field",
        "absurd_future", "absurd_past", "junk_ids", "unknown_channel", "unknown_type", "bitflip",
    ]))
    i = draw(st.integers(0, 10**9))
    good = _valid(i)
    data = avro.encode(avro.TOUCHPOINT, good)
    if kind == "random":
        raw = draw(st.binary(min_size=0, max_size=64))
        return (raw, "not_wire_format") if len(raw) < 5 or raw[0] != 0 else (raw, None)
    if kind == "truncated":
        return data[: draw(st.integers(5, len(data) - 1))], "avro_decode_error"
    if kind == "unknown_schema":
        sid = draw(st.integers(0, 2**31 - 1).filter(lambda s: s not in KNOWN_IDS))
        return _frame(data[5:], sid), "unknown_schema"
    if kind == "wrong_schema":
        return avro.encode(avro.DEAD_LETTER, {
            "dead_letter_id": "x", "reason": "r", "detail": "d", "source_topic": "t", "source_partition": 0,
            "source_offset": 0, "failed_at_ms": 0, "payload_size": 0, "key_id": "k", "nonce": b"", "payload_encrypted": b""}), "wrong_schema"
    if kind == "wrong_types":
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, WRONG_TYPES, {**good, "event_time_ms": draw(st.text(max_size=20))})
        return _frame(buf.getvalue()), None
    if kind == "missing_field":
        bad = touchpoint(f"mf-{i}", "product_added", T0, identifiers={"anonymous_id": "c1"},
                         properties={"cart_id": "", "product_id": "p"})
        return avro.encode(avro.TOUCHPOINT, bad), "missing_field"
    if kind == "absurd_future":
        t = draw(st.integers(T0 + 2 * 86_400_000, 2**62))
        return avro.encode(avro.TOUCHPOINT, {**good, "event_time_ms": t}), "event_time_future"
    if kind == "absurd_past":
        t = draw(st.integers(-(2**62), T0 - 400 * 86_400_000))
        return avro.encode(avro.TOUCHPOINT, {**good, "event_time_ms": t}), "event_time_too_old"
    if kind == "junk_ids":
        junk = draw(st.sampled_from(sorted(JUNK_VALUES)))
        ids = {k: (junk if v is not None else None) for k, v in good["identifiers"].items()} | {"device_id": junk}
        return avro.encode(avro.TOUCHPOINT, {**good, "identifiers": ids}), "no_identifier"
    if kind == "unknown_channel":
        ch = draw(st.text(min_size=1, max_size=12).filter(lambda c: c not in CHANNELS))
        return avro.encode(avro.TOUCHPOINT, {**good, "channel": ch}), "unknown_channel"
    if kind == "unknown_type":
        t = draw(st.text(min_size=1, max_size=12).filter(lambda c: c not in EVENT_TYPES))
        return avro.encode(avro.TOUCHPOINT, {**good, "type": t}), "unknown_event_type"
    pos = draw(st.integers(5, len(data) - 1))  # bitflip: may still decode; only accounted for
    flipped = bytearray(data)
    flipped[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(flipped), None


@pytest.mark.timeout(900)
def test_ten_thousand_malformed_inputs_are_all_accounted_for_and_no_worker_dies(stack_factory) -> None:
    stack = stack_factory(workers=2, sink=False)
    records: list[tuple[bytes, str | None]] = []

    # Hypothesis draws the inputs batch by batch (one example holds only so much data);
    # they all go to partition 0 of the raw topic, so a record's offset is its position.
    @settings(max_examples=100, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(st.lists(malformed(), min_size=60, max_size=120))
    def feed(batch: list[tuple[bytes, str | None]]) -> None:
        stack.produce([(None, value) for value, _ in batch], partition=0)
        records.extend(batch)

    while len(records) < FUZZ_RECORDS:
        feed()
    oversize = avro.encode(avro.TOUCHPOINT, touchpoint("big-1", "custom", T0, identifiers={"anonymous_id": "c1"},
                           properties={"event_name": "blob", "attributes": {"x": "y" * 70_000}}))
    records.append((oversize, "oversize"))
    # Their ids are out of the fuzz's reach (it draws "ok-<any number>", then flips bits), so
    # the resends below are the only records after the fuzz that may come out as duplicates.
    valid = [avro.encode(avro.TOUCHPOINT, _valid(FUZZ_RECORDS + i, T0 + i, prefix="valid")) for i in range(200)]
    resends = valid[:50]
    stack.produce([(None, value) for value in [oversize, *valid, *resends]], partition=0)
    stream = [r for r, _ in records] + valid + resends
    sent_ids: list[str | None] = []
    for value in stream:  # the event id a record carries, if it decodes at all
        try:
            sent_ids.append(avro.decode_as(avro.TOUCHPOINT, value)["event_id"])
        except avro.WireFormatError:
            sent_ids.append(None)

    ports = [c.port for c in stack.supervisor.children]
    reader = TopicReader(stack.settings)
    enriched = Consumer({"bootstrap.servers": stack.settings.kafka_bootstrap, "group.id": f"fuzz-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    enriched.subscribe([ENRICHED.name(stack.settings)])
    raw_topic = RAW.name(stack.settings)
    # Each enriched record, by the raw (partition, offset) it came from: its event id, and the
    # identity partition its route key sends it to (where duplicates of an event id are dropped).
    enriched_at: dict[tuple[int, int], tuple[str, int]] = {}

    def duplicates() -> float:
        return sum(scrape_total(p, "touchline_duplicates_dropped_total") for p in ports)

    def outcome(i: int, dead: set[tuple[int, int]], first_enriched: dict[str | None, int]) -> str | None:
        if (0, i) in dead:
            return "dead_letter"
        if (0, i) in enriched_at:
            return "accepted"
        if first_enriched.get(sent_ids[i], i) < i:
            return "duplicate"  # not itself enriched or dead-lettered; an earlier offset with its id was
        return None

    deadline = time.monotonic() + 300
    while True:
        reader.poll()
        for m in enriched.consume(5000, timeout=0.2):
            if m.error() is None:
                r = avro.decode_as(avro.ENRICHED, m.value())
                key = route_key(r["touchpoint"]["identifiers"])
                assert key is not None, r
                enriched_at[(r["raw_partition"], r["raw_offset"])] = (
                    r["touchpoint"]["event_id"], partition_for(key, stack.settings.partitions))
        dead = {(r["source_partition"], r["source_offset"]) for r in reader.tally.dead_letter_records.values()
                if r["source_topic"] == raw_topic}
        first_enriched: dict[str | None, int] = {}
        for i in range(len(stream)):  # the earliest enriched offset carrying each event id
            if (0, i) in enriched_at and sent_ids[i] is not None:
                first_enriched.setdefault(sent_ids[i], i)
        outcomes = Counter(outcome(i, dead, first_enriched) for i in range(len(stream)))
        if outcomes[None] == 0 and duplicates() >= outcomes["duplicate"]:
            break
        assert not stack.supervisor.check_alive(), "a worker died"
        assert time.monotonic() < deadline, outcomes
    reader.close()
    enriched.close()
    assert stack.supervisor.check_alive() == []
    # Every input is accounted for by its own raw offset (the loop ends only when none is
    # unaccounted), and no record is both enriched and dead-lettered.
    assert not dead & set(enriched_at)
    # No event is enriched twice: not twice on one identity partition, where repeated ids are
    # dropped, and no two identical records at all. (A fuzzed record can carry another's id with
    # other identifiers; routed elsewhere it is a different event to the pipeline.)
    assert len(enriched_at) == len(set(enriched_at.values())), Counter(enriched_at.values()).most_common(5)
    assert len({stream[i] for _, i in enriched_at}) == len(enriched_at)
    dropped = {i for i in range(len(stream)) if outcome(i, dead, first_enriched) == "duplicate"}
    # After the fuzz, exactly the deliberate resends are dropped and every valid record is enriched
    # from its own offset; within the fuzz, every byte-identical repeat of an enriched record
    # (Hypothesis repeats examples) is dropped.
    resent_offsets = set(range(len(stream) - len(resends), len(stream)))
    assert {i for i in dropped if i >= len(records)} == resent_offsets
    assert all(outcome(i, dead, first_enriched) == "accepted" for i in range(len(records), len(records) + len(valid)))
    enriched_bytes: set[bytes] = set()
    repeats = set()
    for i, value in enumerate(stream):
        if value in enriched_bytes:
            repeats.add(i)
        if (0, i) in enriched_at:
            enriched_bytes.add(value)
    assert repeats <= dropped, sorted(repeats - dropped)[:20]
    assert resent_offsets <= repeats
    assert duplicates() >= outcomes["duplicate"]  # more only if ingest re-read a slice after a rebalance
    # Every predictable input got its reason, found by its raw offset.
    by_offset = {r["source_offset"]: r["reason"] for r in reader.tally.dead_letter_records.values()}
    expected = {i: reason for i, (_, reason) in enumerate(records) if reason is not None}
    assert {i: by_offset.get(i) for i in expected} == expected
    assert {f"valid-{FUZZ_RECORDS + i}" for i in range(200)} <= {event_id for event_id, _ in enriched_at.values()}
    assert outcomes["duplicate"] >= len(resends)
    print("fuzz:", len(stream), "records;", dict(outcomes), Counter(by_offset.values()))


# --------------------------------------------------------------------------- personal data

PHONE_SPELLINGS = ("13957246813", "+86 139 5724 6813", "139-5724-6813", "0086 13957246813")
EMAIL_SPELLINGS = ("Wang.Fang.Pii@Example.COM", " wang.fang.pii@example.com ")
NEEDLES = ("57246813", "5724 6813", "5724-6813", "wang.fang.pii", "Wang.Fang.Pii")


def test_raw_phones_and_emails_reach_no_topic_after_ingestion_and_no_clickhouse_table(stack_factory) -> None:
    from confluent_kafka.admin import AdminClient

    stack = stack_factory(workers=1, sink=True)
    events = []
    for i, phone in enumerate(PHONE_SPELLINGS):
        events.append(touchpoint(f"pii-p{i}", "service_consulted", T0 + i, channel="customer_service",
                                 identifiers={"phone": phone}, properties={"topic": "delivery"}))
        events.append(touchpoint(f"pii-l{i}", "login", T0 + i, identifiers={"anonymous_id": f"c-pii-{i}", "phone": phone,
                                                                             "member_id": "M-PII"}))
    for i, email in enumerate(EMAIL_SPELLINGS):
        events.append(touchpoint(f"pii-e{i}", "message_opened", T0 + 10 + i, channel="email",
                                 identifiers={"email": email}, properties={"message_id": f"m{i}"}))
    stack.produce([encoded(e) for e in events])
    reader = TopicReader(stack.settings)
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == len(events))
    reader.close()
    # One person per phone however it was typed, and one per email: the hashes link.
    persons_by_phone = {tally.person_of_event[f"pii-p{i}"] for i in range(len(PHONE_SPELLINGS))}
    assert len(persons_by_phone) == 1
    assert len({tally.person_of_event[f"pii-e{i}"] for i in range(len(EMAIL_SPELLINGS))}) == 1

    sink = next(c for c in stack.supervisor.children if c.name == "sink")
    deadline = time.monotonic() + 90
    while scrape_total(sink.port, 'touchline_sink_records_stored_total{table="touchpoints_enriched"}') < len(events):
        assert time.monotonic() < deadline, "the sink never wrote the events"
    stack.stop_sink()  # chDB: one process at a time opens the database

    # Every byte of every topic but the raw one (the input itself, before ingestion).
    admin = AdminClient({"bootstrap.servers": stack.settings.kafka_bootstrap})
    raw = RAW.name(stack.settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(stack.settings.topic_prefix) and t != raw]
    assert len(topics) >= 8
    blob = bytearray()
    for t in topics:  # read_to_end: the embedded broker's high watermark can stop short of the last batch
        for m in read_to_end(stack.settings, t):
            blob += (m.key() or b"") + (m.value() or b"")
    assert len(blob) > 1000
    for needle in NEEDLES:
        assert needle.encode() not in blob, needle
        assert needle.lower().encode() not in blob.lower(), needle

    # Every column of every table, except aggregate states (KPI tables: hashes of person ids, not values).
    columns = dict(stack.query(
        "SELECT table, groupArray(name) FROM system.columns WHERE database = currentDatabase() "
        "AND type NOT LIKE 'AggregateFunction%' GROUP BY table"))
    assert "touchpoints_enriched" in columns
    dump = json.dumps([stack.query(f"SELECT {', '.join(cols)} FROM {t}") for t, cols in columns.items()],
                      default=str).lower()
    assert "pii-p0" in dump  # the rows are there ...
    for needle in NEEDLES:
        assert needle.lower() not in dump, needle  # ... without the personal data


def _enriched_touchpoints(stack: Any, count: int) -> dict[str, dict[str, Any]]:
    """The touchpoints on the stack's enriched topic by event id, once ``count`` distinct ones arrived."""
    consumer = Consumer({"bootstrap.servers": stack.settings.kafka_bootstrap, "group.id": f"out-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([ENRICHED.name(stack.settings)])
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 90
    try:
        while len(out) < count:
            assert time.monotonic() < deadline, sorted(out)
            assert not stack.supervisor.check_alive()
            for m in consumer.consume(100, timeout=0.5):
                if m.error() is None:
                    r = avro.decode_as(avro.ENRICHED, m.value())
                    out[r["touchpoint"]["event_id"]] = r["touchpoint"]
    finally:
        consumer.close()
    return out


def test_reference_tables_fill_what_touchpoints_leave_out(stack_factory, tmp_path) -> None:
    from streams.reference.loader import load
    from streams.simulate.reference import generate_reference, write_reference_files

    stack = stack_factory(workers=1, sink=False)
    files = write_reference_files(tmp_path / "reference")
    for kind in ("stores", "products"):
        assert load(stack.settings, files[kind], kind).loaded > 0
    ref = generate_reference()
    product, store = ref["products"][0], ref["stores"][0]
    viewed = touchpoint("ref-1", "product_viewed", T0, identifiers={"anonymous_id": "c-ref"},
                        properties={"product_id": product["product_id"]})
    visited = touchpoint("ref-2", "store_visited", T0 + 1, channel="store_pos", identifiers={"pos_card": "C-ref"},
                         store_id=store["store_id"])
    own = touchpoint("ref-3", "product_viewed", T0 + 2, identifiers={"anonymous_id": "c-ref"},
                     properties={"product_id": product["product_id"], "category": "as/sent", "price": 1.0})
    stack.produce([encoded(viewed), encoded(visited), encoded(own)])
    enriched = _enriched_touchpoints(stack, 3)
    from streams.touchpoint.record import props

    assert (props(enriched["ref-1"])["category"], props(enriched["ref-1"])["price"]) == (
        product["category_path"], product["price"])
    assert enriched["ref-2"]["context"]["city"] == store["city"]
    assert (props(enriched["ref-3"])["category"], props(enriched["ref-3"])["price"]) == ("as/sent", 1.0)  # never overwritten


def test_every_event_type_goes_in_through_kafka_and_comes_out_enriched_with_the_same_content(stack_factory) -> None:
    from streams.ingest.service import policy_from
    from streams.ingest.validate import clean
    from tests.test_schemas import current_touchpoints

    stack = stack_factory(workers=1, sink=False)
    examples = [avro.decode_as(avro.TOUCHPOINT, avro.encode(avro.TOUCHPOINT, tp)) for tp in current_touchpoints()]
    stack.produce([encoded(tp) for tp in examples])
    out = _enriched_touchpoints(stack, len(examples))
    policy = policy_from(stack.settings)  # the stack's own salt
    assert {tp["type"] for tp in examples} == set(EVENT_TYPES)
    for tp in examples:
        assert out[tp["event_id"]] == clean(tp, policy), tp["type"]
