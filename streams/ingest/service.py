"""The ingest loop: confluent-kafka batches from the raw topic, validated and routed.

It runs as a thread inside each Faust worker and reads the raw topic through
its own consumer group, in batches, because Faust pays a CPU cost per message
(measured in the team's stack notes, ../shared/STACK.md): internal records carry
a partition's batch, so the agents pay it once per batch, not once per event.
For each consumed slice it writes one IngestedBatch record per identity
partition, the dead letters, flushes, and only then commits the raw offsets:
a crash replays the slice (at-least-once); downstream drops repeats by event id.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, TopicPartition

from streams import avro, metrics
from streams.clock import Clock, SystemClock
from streams.deadletter import records as dead_letters
from streams.deadletter.sealing import Sealer, identifier_salt
from streams.ingest.batcher import IngestBatcher, RawRecord
from streams.ingest.validate import Policy
from streams.kafka import clients
from streams.privacy.core import Suppressions
from streams.privacy.feed import SuppressionFeed
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, INGESTED, RAW

log = logging.getLogger(__name__)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        salt=identifier_salt(settings), default_country=settings.default_country_code,
        max_record_bytes=settings.max_record_bytes,
        max_future_skew_ms=int(settings.max_future_skew_s * 1000),
        max_event_age_ms=int(settings.max_event_age_s * 1000),
    )


class IngestService:
    def __init__(self, settings: Settings, clock: Clock | None = None, worker_id: int = 0) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.worker_id = worker_id
        self.suppressions = Suppressions(identifier_salt(settings))
        self.batcher = IngestBatcher(
            settings.partitions, self.clock, settings.clock == "manual",
            int(settings.allowed_lateness_s * 1000), policy=policy_from(settings),
            suppressions=self.suppressions,
        )
        self.sealer = Sealer.from_settings(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owned: set[int] = set()
        # Raw partition -> the group's committed offset (None: nothing committed yet).
        self._committed: dict[int, int | None] = {}
        self._lag_at = 0.0
        self._timer = metrics.StageTimer("ingest")
        self._sent_times: dict[str, int] = {}
        self._seq = 0
        # Batch ids must never repeat across restarts: the identity stage's
        # duplicate filter tells a redelivered batch from a new one by its id.
        self._run_id = uuid.uuid4().hex[:12]
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name="touchline-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # surfaced by the worker's health check
            self.error = exc
            log.exception("ingest loop failed")

    def run(self) -> None:
        s = self.settings
        raw, ingested, dlq = RAW.name(s), INGESTED.name(s), DEAD_LETTERS.name(s)
        consumer = clients.consumer(s, s.group("ingest"), **{"client.id": f"ingest-{self.worker_id}"})
        producer = clients.producer(s)
        feed = SuppressionFeed(s, self.suppressions)

        def on_assign(c: Any, parts: list[TopicPartition]) -> None:
            self._owned |= {p.partition for p in parts}

        def on_revoke(c: Any, parts: list[TopicPartition]) -> None:
            producer.flush()
            self._owned -= {p.partition for p in parts}
            for p in parts:
                self._committed.pop(p.partition, None)
                try:
                    metrics.CONSUMER_LAG.remove(s.group("ingest"), raw, str(p.partition))
                except KeyError:
                    pass

        consumer.subscribe([raw], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(s.ingest_batch_size, timeout=0.1)
                records = []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("raw consume error: %s", err)
                        continue
                    ts_type, ts = m.timestamp()
                    records.append(RawRecord(
                        m.partition(), m.offset(), m.value(), m.headers(),  # type: ignore[arg-type]
                        ts if ts_type != TIMESTAMP_NOT_AVAILABLE and ts > 0 else None,
                    ))
                if time.monotonic() >= self._lag_at:
                    self._sample_lag(consumer, raw)
                    self._lag_at = time.monotonic() + metrics.LAG_INTERVAL_S
                if not records and s.clock == "manual":
                    continue
                if records:  # erasures suppressed before this slice keep its events out
                    feed.refresh()
                self._process(records, producer, ingested, dlq, raw)
                if records:
                    producer.flush()
                    for tp in consumer.commit(asynchronous=False) or []:
                        if tp.offset >= 0 and tp.error is None:
                            self._committed[tp.partition] = tp.offset
                else:
                    producer.poll(0)
        finally:
            producer.flush(10)
            consumer.close()
            feed.close()

    def _sample_lag(self, consumer: Any, raw: str) -> None:
        """touchline_consumer_lag_records of the owned raw partitions: the high watermark
        librdkafka last fetched minus the offset this group committed."""
        group = self.settings.group("ingest")
        unknown = sorted(p for p in self._owned if p not in self._committed)
        if unknown:  # just assigned: ask the group coordinator once
            try:
                for tp in consumer.committed([TopicPartition(raw, p) for p in unknown], timeout=5):
                    if tp.error is None:
                        self._committed[tp.partition] = tp.offset if tp.offset >= 0 else None
            except KafkaException as exc:
                log.debug("committed offsets of %s unavailable: %s", raw, exc)
        for p in sorted(self._owned):
            if p not in self._committed:
                continue
            low, high = consumer.get_watermark_offsets(TopicPartition(raw, p), cached=True)
            if high < 0:  # nothing fetched from this partition yet
                continue
            metrics.CONSUMER_LAG.labels(group, raw, str(p)).set(metrics.lag_records(high, self._committed[p], low))

    def _process(self, records: list[RawRecord], producer: Any, ingested: str, dlq: str, raw: str) -> None:
        self._timer.start()
        routed = self.batcher.route(records)
        times = self.batcher.stream_times(self._owned)
        time_moved = times != self._sent_times
        now_ms = self.clock.now_ms()
        for dead in routed.dead:
            r = dead.record
            record = dead_letters.build(
                self.sealer, reason=dead.reason, detail=dead.detail, topic=raw,
                partition=r.partition, offset=r.offset, payload=r.value,
                # The raw record's own timestamp where it has one: a replay after a crash then
                # rebuilds the very same dead letter, which the sink stores once.
                failed_at_ms=r.timestamp_ms or now_ms,
            )
            key, value = dead_letters.encode(record)
            producer.produce(dlq, key=key, value=value)
            metrics.DEAD_LETTERS.labels(dead.reason).inc()
        # Every identity partition hears about time moving, even with no events for it.
        targets = range(self.settings.partitions) if time_moved else sorted(routed.by_partition)
        for dest in targets:
            self._seq += 1
            batch = {
                "batch_id": f"ingest-{self.worker_id}-{self._run_id}-{self._seq}",
                "raw_times": times,
                "events": routed.by_partition.get(dest, []),
            }
            producer.produce(ingested, partition=dest, value=avro.encode(avro.INGESTED_BATCH, batch))
        self._sent_times = times
        metrics.RAW_RECORDS.inc(len(records) - routed.ticks)
        metrics.CLOCK_TICKS.inc(routed.ticks)
        for channel, n in routed.channels.items():
            metrics.EVENTS_INGESTED.labels(channel).inc(n)
        for labels, n in routed.outcomes.items():
            metrics.INGEST_OUTCOMES.labels(*labels).inc(n)
        self._timer.stop()
