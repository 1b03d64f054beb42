"""The sink process: output topics into ClickHouse in batches, committed after the insert.

One consumer reads the enriched, identity-change, trigger and dead-letter
topics. Rows are cut into a batch by size or by time (injectable clock); a
single writer thread inserts it while the consumer keeps reading the next,
and the batch's Kafka offsets are committed only after ClickHouse accepted
every table of it. A failed insert is retried with backoff, never skipped;
while it is stuck, a full buffer stops the reading (backpressure). Because
tables collapse rows on their deterministic ids, a replay after a crash
between insert and commit leaves the results unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, TopicPartition

from streams import avro, metrics
from streams.clock import Clock, SystemClock
from streams.kafka import clients
from streams.settings import Settings
from streams.sink.rows import TABLES
from streams.topics import DEAD_LETTERS, ENRICHED, IDENTITY_CHANGES, TRIGGERS

log = logging.getLogger(__name__)
SINK_TOPICS = (ENRICHED, IDENTITY_CHANGES, TRIGGERS, DEAD_LETTERS)


class Writer(Protocol):
    """The sink's fault seam: anything that can insert rows into a table."""

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None: ...


class ClickHouseWriter:
    def __init__(self, client: Any) -> None:
        self.client = client

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.client.insert(table, rows, column_names=columns)


@dataclass
class Batch:
    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    size: int = 0


class Sink:
    def __init__(
        self, settings: Settings, writer: Writer, clock: Clock | None = None,
        retry_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.clock = clock or SystemClock()
        self.retry_sleep = retry_sleep
        self.stop_event = threading.Event()
        self.columns = {table: cols for table, cols, _ in TABLES.values()}

    def run(self) -> None:
        s = self.settings
        consumer = clients.consumer(s, s.group("sink"), **{"client.id": "touchline-sink"})
        consumer.subscribe([spec.name(s) for spec in SINK_TOPICS])
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-writer")
        in_flight: tuple[Future[None], Batch] | None = None
        batch = Batch()
        last_cut = self.clock.now_ms()
        interval_ms = int(s.sink_flush_interval_s * 1000)

        def settle(wait: bool) -> None:
            nonlocal in_flight
            if in_flight is None or (not wait and not in_flight[0].done()):
                return
            future, done_batch = in_flight
            future.result()  # the writer retries until it succeeds or we stop
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in done_batch.offsets.items()],
                asynchronous=False,
            )
            in_flight = None

        try:
            while not self.stop_event.is_set():
                for m in consumer.consume(5000, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("sink consume error: %s", err)
                        continue
                    self._add(batch, m)
                settle(wait=False)
                now = self.clock.now_ms()
                # A batch of only undecodable records still has offsets to commit.
                if batch.offsets and (batch.size >= s.sink_batch_rows or now - last_cut >= interval_ms):
                    settle(wait=True)  # one insert at a time: backpressure
                    in_flight = (executor.submit(self._write, batch), batch)
                    batch, last_cut = Batch(), now
            settle(wait=True)
            if batch.offsets:
                in_flight = (executor.submit(self._write, batch), batch)
                settle(wait=True)
        finally:
            executor.shutdown(wait=True)
            consumer.close()

    def _add(self, batch: Batch, m: Any) -> None:
        batch.offsets[(m.topic(), m.partition())] = m.offset() + 1
        try:
            name, record = avro.decode(m.value())
        except avro.WireFormatError as exc:
            log.error("skipping undecodable record %s/%d/%d: %s", m.topic(), m.partition(), m.offset(), exc)
            return
        table, _, build = TABLES[name]
        batch.rows[table].append(build(record))
        batch.size += 1

    def _write(self, batch: Batch) -> None:
        for table, rows in batch.rows.items():
            attempt = 0
            while True:
                started = time.perf_counter()
                try:
                    self.writer.insert(table, self.columns[table], rows)
                    break
                except Exception as exc:
                    metrics.SINK_FAILURES.labels(table).inc()
                    attempt += 1
                    if self.stop_event.is_set() and attempt > 3:
                        raise
                    log.warning("insert into %s failed (attempt %d), retrying: %s", table, attempt, exc)
                    self.retry_sleep(min(0.1 * 2**attempt, 5.0))
            metrics.SINK_INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
            metrics.SINK_ROWS.labels(table).inc(len(rows))
