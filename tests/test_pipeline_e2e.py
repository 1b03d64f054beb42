"""End to end on the real embedded broker, two Faust workers and the chDB sink."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from streams.deadletter.sealing import Sealer
from streams.tally import TopicReader
from tests.conftest import T0, encoded, touchpoint

pytestmark = pytest.mark.e2e
MIN = 60_000


def _cart(cart_id: str) -> dict[str, object]:
    return {"cart_id": cart_id, "product_id": "sku-1", "price": 399.0, "quantity": 1}


def _wait_until_triggers_stream_time(stack, t_ms: int, timeout_s: float = 60.0) -> None:
    """Until every partition of the triggers stage has applied stream time t_ms (workers' /metrics)."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        for worker in (c for c in stack.supervisor.children if c.name.startswith("worker")):
            text = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10).read().decode()
            for line in text.splitlines():
                if line.startswith("touchline_stream_time_seconds{") and 'stage="triggers"' in line:
                    part = line.split('partition="')[1].split('"')[0]
                    seen[part] = max(seen.get(part, 0.0), float(line.split()[-1]))
        if len(seen) == stack.settings.partitions and min(seen.values()) >= t_ms / 1000:
            return
        time.sleep(0.1)
    raise AssertionError(f"triggers stream time never reached {t_ms}: {seen}")


def test_journeys_stitch_identity_and_fire_one_cart_abandon(stack_factory) -> None:
    stack = stack_factory(workers=2)
    anon = {"anonymous_id": "cookie-abandon"}
    abandoner = [
        touchpoint("a1", "page_viewed", T0, identifiers=anon),
        touchpoint("a2", "product_viewed", T0 + 1 * MIN, identifiers=anon, properties={"product_id": "sku-1"}),
        touchpoint("a3", "login", T0 + 2 * MIN, identifiers={**anon, "member_id": "M100"}),
        touchpoint("a4", "product_added", T0 + 3 * MIN, identifiers=anon, properties=_cart("cart-A")),
    ]
    anon2 = {"anonymous_id": "cookie-buyer"}
    buyer = [
        touchpoint("b1", "page_viewed", T0, identifiers=anon2),
        touchpoint("b2", "login", T0 + 1 * MIN, identifiers={**anon2, "member_id": "M200"}),
        touchpoint("b3", "product_added", T0 + 2 * MIN, identifiers=anon2, properties=_cart("cart-B")),
        touchpoint("b4", "checkout_started", T0 + 4 * MIN, identifiers=anon2, properties=_cart("cart-B")),
        touchpoint("b5", "order_completed", T0 + 5 * MIN, identifiers=anon2,
                   properties={"cart_id": "cart-B", "order_id": "o-1", "revenue": 399.0}),
    ]
    stack.produce([encoded(e) for e in abandoner + buyer])
    delay = int(stack.settings.cart_abandon_delay_s * 1000)
    due = T0 + 3 * MIN + delay

    # Test clock one millisecond short of cart-A's due time: nothing may fire yet.
    stack.tick(due - 1)
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda t: len(t.event_ids) == 9)
    _wait_until_triggers_stream_time(stack, due - 1)
    reader.poll(timeout=1.0)
    assert reader.tally.triggers == {}

    stack.tick(due + 1)  # just past it
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == 9 and len(t.triggers) >= 1)
    reader.poll(timeout=1.0)
    reader.close()

    # One person holds both identifiers: the anonymous person merged into the member.
    member_person = tally.person_of_event["a3"]
    assert {tally.final_person(tally.person_of_event[e]) for e in ("a1", "a2", "a3", "a4")} == {member_person}
    assert tally.person_of_event["a4"] == member_person  # enriched after login carries the member's person
    assert tally.person_of_event["a1"] != member_person  # as resolved when processed: anonymous then
    assert tally.merged_into[tally.person_of_event["a1"]] == member_person

    fired = list(tally.triggers.values())
    assert [(t["rule"], t["correlation_key"], t["person_id"], t["member_id"]) for t in fired] == [
        ("cart_abandon", "cart-A", member_person, "M100")]
    assert fired[0]["due_at_ms"] == T0 + 3 * MIN + delay

    sink = next(c for c in stack.supervisor.children if c.name == "sink")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=10).read().decode()
        if 'touchline_sink_rows_written_total{table="triggers"} 1.0' in scraped:
            break
        time.sleep(0.2)
    assert 'touchline_sink_rows_written_total{table="triggers"} 1.0' in scraped
    stack.stop_sink()  # flushes its last batch and releases chDB
    rows = stack.query("SELECT event_id, person_id FROM touchpoints_enriched FINAL ORDER BY event_id")
    assert [r[0] for r in rows] == ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4", "b5"]
    assert dict(rows)["a4"] == member_person
    assert stack.query("SELECT rule, correlation_key FROM triggers FINAL") == [["cart_abandon", "cart-A"]]
    merges = sorted([[tally.person_of_event["a1"], member_person], [tally.person_of_event["b1"], tally.person_of_event["b2"]]],
                    key=lambda r: r[1])
    assert stack.query("SELECT from_person, into_person FROM identity_changes FINAL WHERE resolver = 'route' "
                       "ORDER BY into_person") == merges
    # The identity graph found the same two merges (each cookie was seen before its login), and
    # nothing else: no split, conflict or shared identifier in these journeys.
    assert stack.query("SELECT kind, from_person, into_person FROM identity_changes FINAL WHERE resolver = 'graph' "
                       "ORDER BY into_person") == [["merge", *m] for m in merges]


def test_malformed_bytes_go_to_dead_letters_and_the_worker_keeps_running(stack_factory) -> None:
    stack = stack_factory(workers=1, sink=False)
    good_before = touchpoint("g1", "page_viewed", T0, identifiers={"anonymous_id": "c1"})
    bad_channel = touchpoint("x1", "page_viewed", T0, channel="fax", identifiers={"anonymous_id": "c2"})
    junk_ids = touchpoint("x2", "page_viewed", T0, identifiers={"anonymous_id": "undefined"})
    good_after = touchpoint("g2", "page_viewed", T0 + MIN, identifiers={"anonymous_id": "c1"})
    stack.produce([
        encoded(good_before), (b"k", b"\x00\x01"), (b"k", b"{\"json\": true}"), encoded(bad_channel),
        encoded(junk_ids), (b"k", b"\x00" + (12345).to_bytes(4, "big") + b"zz"), encoded(good_after),
    ], partition=0)
    reader = TopicReader(stack.settings)
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == 2 and len(t.dead_letters) == 5)
    reader.close()
    assert sorted(tally.dead_letters.values()) == [
        "no_identifier", "not_wire_format", "not_wire_format", "unknown_channel", "unknown_schema"]
    assert tally.event_ids == {"g1", "g2"}
    # The original bytes travel sealed: unreadable on the topic, recoverable with the key.
    sealer = Sealer.from_settings(stack.settings)
    two_bytes = next(r for r in tally.dead_letter_records.values() if r["payload_size"] == 2)
    assert two_bytes["payload_encrypted"] != b"\x00\x01"
    assert sealer.open(two_bytes["nonce"], two_bytes["payload_encrypted"], two_bytes["dead_letter_id"].encode()) == b"\x00\x01"
    assert two_bytes["reason"] == "not_wire_format" and two_bytes["source_partition"] == 0
    assert stack.supervisor.check_alive() == []
    worker = stack.supervisor.children[0]
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10).read().decode()
    assert 'touchline_dead_letters_total{reason="not_wire_format"} 2.0' in scraped
    assert 'touchline_events_ingested_total{channel="web"} 2.0' in scraped
    assert ('touchline_ingest_outcomes_total{channel="web",outcome="accepted",reason="",type="page_viewed"} 2.0'
            in scraped)
    assert ('touchline_ingest_outcomes_total{channel="unknown",outcome="dead_letter",reason="unknown_channel",'
            'type="page_viewed"} 1.0' in scraped)


def _two_record_batches(broker: Any, name: str, batches: tuple[int, ...] = (5, 3)) -> str:
    """A new one-partition topic holding record batches of these sizes (default: offsets 0-4,
    then 5-7)."""
    import uuid

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for batch in batches:
        for _ in range(batch):
            p.produce(topic, value=b"x", partition=0)
        assert p.flush(10) == 0
    return topic


def test_the_embedded_broker_reports_the_high_watermark_at_the_start_of_the_last_batch(broker) -> None:
    """Why streams/pipeline.py turns Faust's recovery consistency check off with the memory store: the
    broker's high watermark is the first offset of a partition's last record batch plus one, so a table
    that has read every changelog record looks ahead of its changelog. If this fails, the broker is
    fixed and the check can come back."""
    from confluent_kafka import Consumer, TopicPartition

    topic = _two_record_batches(broker, "hw")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 6)
        c.assign([TopicPartition(topic, 0, 0)])
        offsets: list[int] = []
        deadline = time.monotonic() + 30
        while len(offsets) < 8 and time.monotonic() < deadline:
            offsets += [m.offset() for m in c.consume(10, timeout=0.5) if m.error() is None]
        assert offsets == list(range(8))  # every record is there, past the reported end
    finally:
        c.close()


def test_a_partition_with_nothing_committed_is_sought_back_to_its_start(broker) -> None:
    """streams/kafka/faust_offsets.py: records fetched before Faust "seeks stream partitions to
    committed offsets" are read again only if the seek moves the position back. aiokafka's own
    seek_to_committed leaves a partition without a commit where the fetch left it (records
    skipped); the replacement Faust uses puts it back at the beginning."""
    import asyncio
    import uuid

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from streams.kafka.faust_offsets import seek_to_committed_or_start

    topic = f"seek-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[int, int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for _ in range(6):
                await producer.send_and_wait(topic, b"x", partition=0)
        finally:
            await producer.stop()
        tp = TopicPartition(topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=topic,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            read = 0
            for _ in range(60):  # fetched but not processed, nothing committed: a worker's first seconds
                read += sum(len(v) for v in (await consumer.getmany(timeout_ms=500)).values())
                if read >= 6:
                    break
            fetched = await consumer.position(tp)
            await consumer.seek_to_committed()
            upstream = await consumer.position(tp)
            await seek_to_committed_or_start(consumer)
            return fetched, upstream, await consumer.position(tp)
        finally:
            await consumer.stop()

    fetched, upstream, fixed = asyncio.run(scenario())
    assert (fetched, upstream) == (6, 6)  # aiokafka's seek left the six records behind
    assert fixed == 0


def test_changelog_ends_are_measured_exactly_for_table_recovery(broker) -> None:
    """streams/kafka/faust_offsets.py: Faust recovers a table up to the end offset it is given and
    never applies what lies beyond. The embedded broker under-reports the end (the previous test);
    the end Faust is given includes the whole last record batch."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka.faust_offsets import exact_end_offsets

    topic, empty = _two_record_batches(broker, "end"), _two_record_batches(broker, "empty", batches=())

    async def ends() -> tuple[dict, dict]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, 0), TopicPartition(empty, 0)]
            return dict(await consumer.end_offsets(tps)), await exact_end_offsets(consumer, tps)
        finally:
            await consumer.stop()

    reported, exact = asyncio.run(ends())
    assert reported[TopicPartition(topic, 0)] == 6  # what Faust alone would recover up to
    assert exact == {TopicPartition(topic, 0): 8, TopicPartition(empty, 0): 0}
