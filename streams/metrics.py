"""Every Prometheus metric Touchline exports, declared once.

Workers serve them at ``/metrics`` on their Faust web port; the sink on
``TOUCHLINE_SINK_METRICS_PORT``; the HTTP collector on ``TOUCHLINE_COLLECTOR_PORT``.
Counters are incremented per batch, not per event, to keep the hot path cheap.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RAW_RECORDS = Counter("touchline_raw_records_total", "Records read from the raw topic (ticks excluded)")
EVENTS_INGESTED = Counter(
    "touchline_events_ingested_total", "Touchpoints accepted by ingestion", ["channel"]
)
INGEST_OUTCOMES = Counter(
    "touchline_ingest_outcomes_total",
    "Raw records by outcome (accepted, dead_letter, duplicate), channel, event type and dead-letter reason",
    ["channel", "type", "outcome", "reason"],
)
DEDUP_IDS = Gauge("touchline_dedup_event_ids", "Event ids held by the duplicate filter", ["partition"])
DEAD_LETTERS = Counter("touchline_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
CLOCK_TICKS = Counter("touchline_clock_ticks_total", "Clock-tick control records applied")
DUPLICATES = Counter("touchline_duplicates_dropped_total", "Touchpoints dropped as repeats of an event id")
MERGES = Counter("touchline_identity_merges_total", "Persons merged into another person")
FEATURE_UPDATES = Counter("touchline_feature_updates_total", "Person feature snapshots written")
TRIGGERS_FIRED = Counter("touchline_triggers_fired_total", "Triggers fired", ["rule"])
STAGE_BATCH_SECONDS = Histogram(
    "touchline_stage_batch_seconds", "Time to process one batch record", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STREAM_TIME = Gauge("touchline_stream_time_ms", "Event-time watermark per stage and partition", ["stage", "partition"])
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
