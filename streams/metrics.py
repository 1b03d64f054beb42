"""Every Prometheus metric Touchline exports, declared once.

Workers serve them at ``/metrics`` on their Faust web port; the sink on
``TOUCHLINE_SINK_METRICS_PORT``; the HTTP collector on ``TOUCHLINE_COLLECTOR_PORT``.
Counters are incremented per batch, not per event, to keep the hot path cheap.

Naming (checked by tests/test_metric_names.py): every name starts with
``touchline_``, counters end in ``_total``, times are in seconds and sizes in
bytes (``_seconds``, ``_bytes``), and no label carries a person, member, event
or other unbounded id. Labels are bounded: channel, type, reason, stage, rule,
table, topic, partition (bounded by the partition count) and the like.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

T = TypeVar("T")

LAG_INTERVAL_S = 5.0  # touchline_consumer_lag_records is sampled this often (workers' agents and ingest loops)

RAW_RECORDS = Counter("touchline_raw_records_total", "Records read from the raw topic (ticks excluded)")
EVENTS_INGESTED = Counter(
    "touchline_events_ingested_total", "Touchpoints accepted by ingestion", ["channel"]
)
INGEST_OUTCOMES = Counter(
    "touchline_ingest_outcomes_total",
    "Raw records by outcome (accepted, dead_letter, duplicate, suppressed: an erased person's), channel, event type and dead-letter reason",
    ["channel", "type", "outcome", "reason"],
)
DEDUP_IDS = Gauge("touchline_dedup_event_ids", "Event ids held by the duplicate filter", ["partition"])
DEAD_LETTERS = Counter("touchline_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
CLOCK_TICKS = Counter("touchline_clock_ticks_total", "Clock-tick control records applied")
DUPLICATES = Counter("touchline_duplicates_dropped_total", "Touchpoints dropped as repeats of an event id")
ERASED = Counter(
    "touchline_erased_keys_total",
    "Persons and identifiers whose state a worker erased on an erasure request (touchline erase), by kind",
    ["kind"],
)
MERGES = Counter("touchline_identity_merges_total", "Persons merged into another person")
IDENTITY_GRAPH_CHANGES = Counter(
    "touchline_identity_graph_changes_total",
    "Changes the identity graph made to its clustering: merge, split, conflict (a link refused), shared "
    "(an identifier found to be shared)", ["kind"],
)
FEATURE_UPDATES = Counter("touchline_feature_updates_total", "Person feature snapshots written")
REFIT_SWEPT = Counter("touchline_feature_refit_swept_total",
                      "Persons snapshotted again because the purchase-model parameters changed (a refit)")
TRIGGERS_FIRED = Counter("touchline_triggers_fired_total", "Trigger records published on triggers.fired: final decisions (fire, holdout, suppressed)",
    ["rule"],
)
TRIGGER_DECISIONS = Counter(
    "touchline_trigger_decisions_total",
    "Trigger decisions by rule, outcome (fire, holdout, suppressed, deferred) and reason (suppressed: why; "
    "otherwise empty); a deferred decision is counted again when decided",
    ["rule", "outcome", "reason"],
)
STAGE_BATCH_SECONDS = Histogram(
    "touchline_stage_batch_seconds", "Time to process one batch record", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STAGE_CPU_SECONDS = Counter(
    "touchline_stage_cpu_seconds_total",
    "CPU seconds of the thread running a stage while in the stage's own code (Faust's consumer, "
    "producer and scheduling, and the sink, are not in any stage)",
    ["stage"],
)


class StageTimer:
    """Times one stage's batches: wall seconds per batch (touchline_stage_batch_seconds) and the
    CPU seconds of its thread while it runs the stage's own code (touchline_stage_cpu_seconds_total).
    One per agent or thread; an await that lets other stages run goes through ``outside``."""

    def __init__(self, stage: str) -> None:
        self.batch = STAGE_BATCH_SECONDS.labels(stage)  # both series exist (at 0) from the start
        self.cpu = STAGE_CPU_SECONDS.labels(stage)
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def _count_cpu(self) -> None:
        self.cpu.inc(time.thread_time() - self._cpu)

    async def outside(self, awaitable: Awaitable[T]) -> T:
        """Await without counting the CPU other coroutines use meanwhile."""
        self._count_cpu()
        try:
            return await awaitable
        finally:
            self._cpu = time.thread_time()

    def stop(self) -> None:
        self._count_cpu()
        self.batch.observe(time.perf_counter() - self._wall)


_STREAM_TIME_SECONDS = Gauge(
    "touchline_stream_time_seconds", "Event-time watermark per stage and partition, as Unix time in seconds",
    ["stage", "partition"],
)
SINK_ROWS = Counter("touchline_sink_rows_written_total", "Rows inserted into ClickHouse", ["table"])
SINK_FAILURES = Counter("touchline_sink_insert_failures_total", "Failed ClickHouse inserts (retried)", ["table"])
SINK_INSERT_SECONDS = Histogram("touchline_sink_insert_seconds", "Duration of one ClickHouse insert", ["table"])
SINK_BATCH_ROWS = Histogram(
    "touchline_sink_batch_rows", "Rows per ClickHouse insert", ["table"],
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
)
SINK_RETRIES = Counter("touchline_sink_insert_retries_total", "ClickHouse inserts retried after a failure", ["table"])
SINK_RECORDS = Counter(
    "touchline_sink_records_stored_total",
    "Sink-topic records ClickHouse holds after their batch: inserted now, or stored before (replays)", ["table"],
)
SINK_DUPLICATES = Counter(
    "touchline_sink_duplicate_rows_total", "Rows not inserted because ClickHouse already held their id (replays)",
    ["table"],
)
COLLECTOR_REQUESTS = Counter(
    "touchline_collector_requests_total", "Requests to the HTTP collector by source and response status",
    ["source", "status"],
)
COLLECTOR_EVENTS = Counter(
    "touchline_collector_events_total",
    "Events the HTTP collector acknowledged, by source, channel, type, outcome (accepted, dead_letter) and reason",
    ["source", "channel", "type", "outcome", "reason"],
)
COLLECTOR_REQUEST_SECONDS = Histogram(
    "touchline_collector_request_seconds", "Time to answer a batch, Kafka acknowledgement included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONSUMER_LAG = Gauge(
    "touchline_consumer_lag_records",
    "Records not yet processed: the partition's high watermark minus the group's committed offset, "
    "per partition the process is assigned (sampled every few seconds)",
    ["group", "topic", "partition"],
)
EVENT_PROCESSING_SECONDS = Histogram(
    "touchline_event_processing_seconds",
    "Wall-clock time an event was processed by a stage minus its event time (0 when the event time is ahead); "
    "meaningful for live traffic only: history imports and simulated clocks land in the top bucket",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)
TRIGGER_LATENCY_SECONDS = Histogram(
    "touchline_trigger_latency_seconds",
    "Wall-clock time a trigger was published minus its due time (0 when published before it); "
    "meaningful with TOUCHLINE_CLOCK=wall only",
    ["rule"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
PERSONS = Gauge(
    "touchline_persons",
    "Persons held in state per stage and partition (identity: route keys linked to a person; "
    "features: persons with a profile; triggers: persons with trigger state)",
    ["stage", "partition"],
)
STATE_BYTES = Gauge(
    "touchline_state_bytes",
    "Approximate size of a Faust table per partition: entries times the mean JSON size of a sample of them",
    ["table", "partition"],
)


class _StreamTime:
    """``STREAM_TIME.labels(stage, partition).set(t_ms)``: the code keeps stream time in
    milliseconds; the gauge exports seconds (``touchline_stream_time_seconds``)."""

    class _Child:
        def __init__(self, child: Any) -> None:
            self._child = child

        def set(self, t_ms: float) -> None:
            self._child.set(t_ms / 1000)

    def labels(self, stage: str, partition: str) -> _StreamTime._Child:
        return self._Child(_STREAM_TIME_SECONDS.labels(stage, partition))


STREAM_TIME = _StreamTime()


def observe_many(child: Any, amounts: Sequence[float]) -> None:
    """``child.observe(a)`` for every amount of a batch, taking each bucket's lock once.

    ``child`` is a labelled Histogram. Uses prometheus_client's histogram fields
    when they are there (one bisect per value), and falls back to ``observe``.
    """
    if not amounts:
        return
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            child.observe(amount)
        return
    total.inc(sum(amounts))
    for index, n in _Tally(bisect_left(bounds, a) for a in amounts).items():
        buckets[index].inc(n)


def event_delays(ops: list[dict[str, Any]], now_ms: int) -> list[float]:
    """Seconds from each event op's event time to ``now_ms`` (0 when ahead), for EVENT_PROCESSING_SECONDS."""
    return [
        max(0, now_ms - op["event"]["touchpoint"]["event_time_ms"]) / 1000
        for op in ops if op["kind"] == "event"
    ]


def lag_records(high_watermark: int, committed: int | None, low_watermark: int = 0) -> int:
    """Records between a group's committed offset and the partition's end.

    ``committed`` None: the group has committed nothing there, so it starts at the
    low watermark (``auto.offset.reset=earliest``).
    """
    start = committed if committed is not None and committed >= 0 else max(low_watermark, 0)
    return max(0, high_watermark - start)
