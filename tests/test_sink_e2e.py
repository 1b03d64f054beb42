"""The ClickHouse sink on the real embedded stack: lossless and exact under faults.

Faults: the sink SIGKILLed at random points while batches are written, an
outage staged through the sink's fault seam (TOUCHLINE_SINK_FAULT_FAILED_INSERTS),
records delivered again (a worker republishing after its crash), and a
ClickHouse server that is not there at all (a closed http:// port).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.kafka.clients import producer
from streams.processes import free_port, scrape_total
from streams.simulate.producer import produce, send_clock_ticks
from streams.simulate.traffic import SimConfig, Traffic, generate
from streams.sink import query as ch
from streams.sink.rows import TABLES
from streams.topics import ENRICHED
from tests.conftest import T0, Stack, encoded, touchpoint

pytestmark = pytest.mark.e2e

# Every KPI table, aggregated to its grain; persons-free ones compare across runs.
RUN_INDEPENDENT = {
    "events_hourly": "SELECT hour, channel, store_id, event_type, campaign, sum(events), round(sum(revenue), 2), "
                     "sum(items) FROM kpi_events_hourly GROUP BY ALL ORDER BY ALL",
    "events_minute": "SELECT minute, channel, event_type, sum(events), round(sum(revenue), 2) "
                     "FROM kpi_events_minute GROUP BY ALL ORDER BY ALL",
    "dead_letters": "SELECT hour, reason, sum(dead_letters) FROM kpi_dead_letters_hourly GROUP BY ALL ORDER BY ALL",
    "stored": "SELECT (SELECT count() FROM touchpoints_enriched), (SELECT count() FROM dead_letters), "
              "(SELECT count() FROM triggers)",
}
# The views' numbers against the same numbers recomputed from the deduplicated base table.
VIEW_VS_BASE = [
    ("SELECT hour, channel, event_type, sum(events), uniqExactMerge(persons), uniqExactMerge(member_persons) "
     "FROM kpi_events_hourly GROUP BY ALL ORDER BY ALL",
     "SELECT toStartOfHour(event_time) AS hour, channel, event_type, count(), uniqExact(person_id), "
     "uniqExactIf(person_id, member_id IS NOT NULL) FROM touchpoints_enriched FINAL GROUP BY ALL ORDER BY ALL"),
    ("SELECT count(), sum(orders), round(sum(revenue), 2) FROM "
     "(SELECT person_id, sum(orders) AS orders, sum(revenue) AS revenue FROM kpi_persons GROUP BY person_id)",
     "SELECT uniqExact(person_id), countIf(event_type = 'order_completed'), "
     "round(sumIf(ifNull(revenue, 0), event_type = 'order_completed'), 2) FROM touchpoints_enriched FINAL"),
]


def _traffic() -> Traffic:
    return generate(SimConfig(seed=21, events=1500, persons=60, days=1))


def _rows(stack: Stack, sql: str) -> list[list[Any]]:
    return ch.rows(stack.settings, sql, open_directly=False)


def _wait_stored(stack: Stack, traffic: Traffic, timeout_s: float = 180.0) -> None:
    """Until ClickHouse holds every distinct event and dead letter of the traffic (exact counts: repeats
    are never inserted, so more than expected fails too)."""
    t = traffic.truth
    want = [t.events_valid_distinct, sum(t.malformed_by_reason.values()), t.abandoned_carts]
    deadline = time.monotonic() + timeout_s
    got: list[Any] = []
    while time.monotonic() < deadline:
        assert not stack.supervisor.check_alive(), f"died; logs in {stack.supervisor.log_dir}"
        try:
            got = _rows(stack, RUN_INDEPENDENT["stored"])[0]
        except ch.SinkNotRunning:
            got = []
        if got == want:
            return
        assert not got or all(g <= w for g, w in zip(got, want, strict=True)), f"more rows than sent: {got} > {want}"
        time.sleep(0.3)
    raise AssertionError(f"ClickHouse holds {got}, expected {want} (events, dead letters, triggers)")


def _finish(stack: Stack, traffic: Traffic) -> None:
    send_clock_ticks(stack.settings, traffic.truth.end_time_ms + int(stack.settings.cart_abandon_delay_s * 1000) + 1)
    _wait_stored(stack, traffic)


def _kpis(stack: Stack) -> dict[str, Any]:
    return {name: _rows(stack, sql) for name, sql in RUN_INDEPENDENT.items()}


def _assert_views_match_base(stack: Stack) -> None:
    for view_sql, base_sql in VIEW_VS_BASE:
        assert _rows(stack, view_sql) == _rows(stack, base_sql), view_sql


def test_sink_killed_and_clickhouse_failing_leave_kpis_equal_to_a_fault_free_run(stack_factory) -> None:
    traffic = _traffic()

    calm = stack_factory(workers=2)
    produce(calm.settings, traffic)
    _finish(calm, traffic)
    expected = _kpis(calm)
    _assert_views_match_base(calm)
    assert expected["stored"] == [[traffic.truth.events_valid_distinct, sum(traffic.truth.malformed_by_reason.values()),
                                   traffic.truth.abandoned_carts]]

    # Every sink process fails its first 4 inserts (the fault seam), and is SIGKILLed three times at
    # random moments while the traffic is being written.
    faulty = stack_factory(workers=2, sink_fault_failed_inserts=4)
    rng = random.Random(5)
    half = len(traffic.records) // 2
    produce(faulty.settings, Traffic(traffic.records[:half], traffic.truth))
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.5))  # a random point in the sink's work, not a wait for a result
        [sink] = [c for c in faulty.supervisor.children if c.name == "sink"]
        faulty.supervisor.kill(sink)
        faulty.supervisor.start_sink()
    produce(faulty.settings, Traffic(traffic.records[half:], traffic.truth))
    _finish(faulty, traffic)
    [sink] = [c for c in faulty.supervisor.children if c.name == "sink"]
    assert sink.port is not None
    assert scrape_total(sink.port, "touchline_sink_insert_retries_total{") >= 4  # the outage happened
    assert _kpis(faulty) == expected
    _assert_views_match_base(faulty)

    # A worker republishing what it already published: the sink recognises every record.
    enriched = _read_all(faulty, ENRICHED.name(faulty.settings))
    p = producer(faulty.settings)
    for key, value, partition in enriched:
        p.produce(ENRICHED.name(faulty.settings), key=key, value=value, partition=partition)
    assert p.flush(10) == 0
    table = TABLES[ENRICHED].name
    deadline = time.monotonic() + 60
    while scrape_total(sink.port, f'touchline_sink_duplicate_rows_total{{table="{table}"}}') < len(enriched):
        assert time.monotonic() < deadline, "the sink did not see the republished records"
        time.sleep(0.2)
    assert _kpis(faulty) == expected
    _assert_views_match_base(faulty)


def _scrape(port: int, series: str) -> float:
    """A child's metric, or 0 while its /metrics is not up yet."""
    try:
        return scrape_total(port, series)
    except OSError:
        return 0.0


def _read_all(stack: Stack, topic: str) -> list[tuple[bytes | None, bytes, int]]:
    from streams.deadletter.inspect import read_to_end

    return [(m.key(), m.value(), m.partition()) for m in read_to_end(stack.settings, topic)]


def test_sink_retries_a_clickhouse_server_that_is_not_there_and_commits_nothing(stack_factory) -> None:
    closed = free_port()  # nothing listens here
    stack = stack_factory(workers=1, clickhouse_url=f"http://default:@127.0.0.1:{closed}/default")
    stack.produce([encoded(touchpoint(f"c{i}", "page_viewed", T0 + i, identifiers={"anonymous_id": "cookie-c"})) for i in range(5)])
    [sink] = [c for c in stack.supervisor.children if c.name == "sink"]
    assert sink.port is not None
    deadline = time.monotonic() + 90
    while _scrape(sink.port, "touchline_sink_insert_retries_total{") < 3:
        assert time.monotonic() < deadline, f"no retries; logs in {stack.supervisor.log_dir}"
        assert sink.proc.poll() is None, f"the sink exited; logs in {stack.supervisor.log_dir}"
        time.sleep(0.2)
    assert sink.proc.poll() is None  # still alive, still retrying
    assert scrape_total(sink.port, "touchline_sink_rows_written_total{") == 0
    consumer = Consumer({"bootstrap.servers": stack.settings.kafka_bootstrap,
                         "group.id": stack.settings.group("sink"), "enable.auto.commit": False})
    try:
        parts = [TopicPartition(spec.name(stack.settings), p)
                 for spec in TABLES for p in range(spec.partitions(stack.settings))]
        committed = consumer.committed(parts, timeout=10)
    finally:
        consumer.close()
    assert all(tp.offset < 0 for tp in committed), [tp for tp in committed if tp.offset >= 0]
