"""The sink process: sink topics into ClickHouse in batches, committed after the insert.

One consumer reads every topic of ``streams.sink.rows.TABLES``. Rows are cut
into a batch by size or by time (injectable clock); a single writer thread
inserts it while the consumer keeps reading the next, and the batch's Kafka
offsets are committed only after ClickHouse accepted every table of it. A
failed insert (or an unreachable server) is retried with backoff, never
skipped; while it is stuck, a full buffer stops the reading (backpressure).

Replays (a crash between insert and commit, a worker republishing after its
own crash) deliver rows again. Before inserting into a table with
materialized views, the writer looks up which keys of the batch are stored
already and inserts only the others, so the KPI views count each record once.
The look-up and the insert run together inside the retry loop, so an insert
that reached ClickHouse but whose answer was lost is not repeated.

Erasures (``privacy.erasures`` records of kind erase; streams/sink/erasure.py):
the writer writes the batch holding the record without the erased persons'
rows, deletes every stored row of theirs, then writes the audit row, before the
batch's offsets are committed; every later row of theirs is dropped before it
is inserted. The erased persons are read back from the audit table before the
first batch is written, so a restarted sink keeps dropping them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, TopicPartition

from streams import avro, metrics
from streams.clock import Clock, SystemClock
from streams.kafka import clients
from streams.settings import Settings
from streams.sink import erasure
from streams.sink.erasure import AUDIT_COLUMNS, AUDIT_TABLE, PERSON_TABLES, Erased, Erasure
from streams.sink.rows import TABLES, Table
from streams.topics import PRIVACY_ERASURES

log = logging.getLogger(__name__)
LOOKUP_CHUNK = 1000  # keys per look-up query: 1000 uuids stay far below ClickHouse's 256 KiB max_query_size


class Writer(Protocol):
    """What the sink needs from ClickHouse; the fault seam wraps it."""

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def stored_keys(self, table: Table, keys: list[str], time_range: tuple[Any, Any] | None) -> set[Any]: ...

    def count(self, table: str, where: str) -> int: ...

    def delete(self, table: str, where: str) -> None: ...

    def erasures(self) -> list[tuple[str, list[str], list[str]]]: ...

    def column(self, sql: str) -> list[Any]: ...


class ClickHouseWriter:
    """A ClickHouse client made on first use (and again after a failure), with
    the migrations applied, shared with the read-only query endpoint."""

    def __init__(self, dsn: str, connect: Callable[[str], Any] | None = None, cluster: str = "") -> None:
        self.dsn = dsn
        self.cluster = cluster  # migrations in the cluster form (TOUCHLINE_CLICKHOUSE_CLUSTER)
        self._connect = connect
        self._client: Any = None
        self.lock = threading.Lock()  # chDB: one engine, used by the writer and the query endpoint

    def client(self) -> Any:
        if self._client is None:
            from streams.sink.clickhouse import connect, migrate

            client = (self._connect or connect)(self.dsn)
            migrate(client, self.cluster)
            self._client = client
        return self._client

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        with self.lock:
            try:
                return fn(self.client())
            except Exception:
                if not self.dsn.startswith("chdb://"):
                    self._client = None  # a server may have gone: reconnect next time
                raise

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._run(lambda c: c.insert(table, rows, column_names=columns))

    def stored_keys(self, table: Table, keys: list[str], time_range: tuple[Any, Any] | None) -> set[Any]:
        sql = f"SELECT {table.key} FROM {table.name} WHERE {table.key} IN %(keys)s"
        params: dict[str, Any] = {"keys": keys}
        if time_range is not None and table.time_column:
            # parameters travel with whole seconds: widen so the sub-second ends stay inside
            sql += (f" AND {table.time_column} BETWEEN %(lo)s - INTERVAL 1 SECOND"
                    f" AND %(hi)s + INTERVAL 1 SECOND")
            params.update(lo=time_range[0], hi=time_range[1])
        def look_up(chunk: dict[str, Any]) -> Callable[[Any], Any]:
            return lambda client: client.query(sql, parameters=chunk).result_rows

        found: set[Any] = set()
        for i in range(0, len(keys), LOOKUP_CHUNK):  # keeps each query under max_query_size
            found.update(r[0] for r in self._run(look_up({**params, "keys": keys[i:i + LOOKUP_CHUNK]})))
        return found

    def _rows(self, sql: str) -> list[Any]:
        """The rows of a query."""
        return self._run(lambda c: c.query(sql).result_rows)

    def count(self, table: str, where: str) -> int:
        """Rows of ``table`` matching ``where`` (every stored version)."""
        return int(self._rows(erasure.count_statement(table, where))[0][0])

    def delete(self, table: str, where: str) -> None:
        """Delete ``table``'s rows matching ``where``; returns once no replica holds them."""
        sql = erasure.delete_statement(table, where, self.cluster)
        self._run(lambda c: c.command(sql))

    def erasures(self) -> list[tuple[str, list[str], list[str]]]:
        """(request id, persons, identifier hashes) of every audited erasure."""
        sql = f"SELECT request_id, persons, identifier_hashes FROM {AUDIT_TABLE}"
        return [(r[0], list(r[1]), list(r[2])) for r in self._rows(sql)]

    def column(self, sql: str) -> list[Any]:
        """The first column of a query's rows."""
        return [r[0] for r in self._rows(sql)]

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A read-only query (ClickHouse refuses writes under readonly=1)."""
        from streams.sink.clickhouse import readonly_query

        return self._run(lambda c: readonly_query(c, sql))


class FailingWriter:
    """The fault seam: the first ``failures`` inserts and deletes raise as if ClickHouse
    were down, then everything goes through to the real writer."""

    def __init__(self, inner: Writer, failures: int) -> None:
        self.inner = inner
        self.remaining = failures

    def _fail(self) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            raise ConnectionError(f"injected ClickHouse outage ({self.remaining} more failures to come)")

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._fail()
        self.inner.insert(table, columns, rows)

    def stored_keys(self, table: Table, keys: list[str], time_range: tuple[Any, Any] | None) -> set[Any]:
        return self.inner.stored_keys(table, keys, time_range)

    def delete(self, table: str, where: str) -> None:
        self._fail()
        self.inner.delete(table, where)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def writer_for(settings: Settings, inner: Writer) -> Writer:
    """The writer the sink uses: the real one, behind the fault seam when it is set."""
    if settings.sink_fault_failed_inserts > 0:
        return FailingWriter(inner, settings.sink_fault_failed_inserts)
    return inner


@dataclass
class Batch:
    rows: dict[Table, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    size: int = 0
    erasures: list[Erasure] = field(default_factory=list)  # in Kafka order, handled after the rows


def new_rows(table: Table, rows: list[list[Any]], stored: Callable[[list[str], tuple[Any, Any] | None], set[Any]]
             ) -> list[list[Any]]:
    """The rows of a batch to insert into an insert-once table: the first row of
    each key, unless ClickHouse holds that key already."""
    k = table.columns.index(table.key)
    first: dict[Any, list[Any]] = {}
    for row in rows:
        first.setdefault(row[k], row)
    if not first:
        return []
    time_range = None
    if table.time_column:
        t = table.columns.index(table.time_column)
        times = [row[t] for row in first.values()]
        time_range = (min(times), max(times))
    known = stored(list(first), time_range)
    return [row for key, row in first.items() if key not in known]


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
        self.by_topic = {spec.name(settings): table for spec, table in TABLES.items()}
        self.erasure_topic = PRIVACY_ERASURES.name(settings)
        self.erased: Erased | None = None  # the writer thread's, read from the audit table before the first write
        self._key_resolved = False  # whether the identifier key was looked up (once, when first needed)

    def run(self) -> None:
        s = self.settings
        consumer = clients.consumer(s, s.group("sink"), **{"client.id": "touchline-sink"})
        consumer.subscribe([*self.by_topic, self.erasure_topic])
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-writer")
        executor.submit(self._warm_up)  # runs before the first write (one writer thread)
        avro.preload()
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
        if m.topic() == self.erasure_topic:
            self._add_erasure(batch, m)
            return
        table = self.by_topic[m.topic()]
        value = m.value()
        if value is None:  # a tombstone on a compacted topic
            row = table.tombstone(m.key().decode(errors="replace"), m.offset()) if table.tombstone and m.key() else None
            if row is not None:
                batch.rows[table].append(row)
                batch.size += 1
            return
        record = self._decode(m, "record")
        if record is None:
            return
        batch.rows[table].append(table.build(record, m.offset()))
        batch.size += 1

    @staticmethod
    def _decode(m: Any, what: str) -> Any:
        """The decoded value of ``m``, or None (logged) when it does not decode."""
        try:
            _, record = avro.decode(m.value())
        except avro.WireFormatError as exc:
            log.error("skipping undecodable %s %s/%d/%d: %s", what, m.topic(), m.partition(), m.offset(), exc)
            return None
        return record

    def _add_erasure(self, batch: Batch, m: Any) -> None:
        """A privacy.erasures record: kind erase is handled when its batch is written; suppress
        is ingest's (its offset is committed with the batch)."""
        if m.value() is None:
            return
        record = self._decode(m, "erasure")
        if record is None:
            return
        e = erasure.erasure_of(record)
        if e is not None:
            batch.erasures.append(e)
            batch.size += 1

    def _retry(self, label: str, fn: Callable[[], Any], what: str = "") -> Any:
        """``fn()``, retried with backoff until it succeeds (a few tries once stopping); failures and
        retries are counted under ``label``, logged as ``what`` (default: ``label``)."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                metrics.SINK_FAILURES.labels(label).inc()
                attempt += 1
                if self.stop_event.is_set() and attempt > 3:
                    raise
                log.warning("%s failed (attempt %d), retrying: %s", what or label, attempt, exc)
                metrics.SINK_RETRIES.labels(label).inc()
                self.retry_sleep(min(0.1 * 2**attempt, 5.0))

    def _warm_up(self) -> None:
        """At start, not on the first batch: connect, apply the migrations and read the audit table
        (retried like a write), and import pandas, which clickhouse-connect imports on its first
        insert to tell DataFrames apart. The first records then cost what every record costs."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            pass
        if self.erased is None:
            self.erased = self._retry(AUDIT_TABLE, self._load_erased)

    def _load_erased(self) -> Erased:
        erased = Erased()
        erased.load(self.writer.erasures())
        return erased

    def _identifier_key(self) -> Callable[[str], str] | None:
        """How ``touchline erase`` hashes an identifier (its suppression key), once this installation
        has an identifier salt. Looked up once, when the first erased identifier hash is held (not at
        start: the workers may create the salt after the sink started; a hash implies a salt by then)."""
        from streams.deadletter.sealing import configured_salt
        from streams.privacy.core import suppression_key

        salt = configured_salt(self.settings)
        # memoised: every identity_assignments tombstone is hashed while any identifier is erased
        return None if salt is None else lru_cache(maxsize=1 << 16)(partial(suppression_key, salt=salt))

    def _write(self, batch: Batch) -> None:
        if self.erased is None:
            self.erased = self._retry(AUDIT_TABLE, self._load_erased)
        erased = self.erased
        for e in batch.erasures:  # the batch's own rows of these persons are not written either
            erased.add(e)
        if erased.hashes and not self._key_resolved:
            erased.identifier_key, self._key_resolved = self._identifier_key(), True
        for table, rows in batch.rows.items():
            kept = erased.keep(table.columns, rows)
            if len(kept) < len(rows):
                log.info("dropped %d row(s) of erased persons bound for %s", len(rows) - len(kept), table.name)
            todo = self._insert(table, kept)
            metrics.SINK_RECORDS.labels(table.name).inc(len(rows))
            metrics.SINK_DUPLICATES.labels(table.name).inc(len(kept) - len(todo))
        for e in batch.erasures:
            if e.request_id in erased.requests:
                log.info("erasure %s is audited already: nothing more to delete", e.request_id)
                continue
            self._retry(AUDIT_TABLE, partial(self._erase, e, erased))
            erased.requests.add(e.request_id)

    def _erase(self, e: Erasure, erased: Erased) -> None:
        """Count, delete, then audit (the audit row last: whoever sees it sees no erased row).
        Retried whole: a second pass counts what the first left, and the audit row is written once."""
        counts: dict[str, int] = {}
        if e.persons:
            identifiers = []  # the stored tombstones of the request's identifiers (none to match without a key)
            if e.identifier_hashes and erased.identifier_key is not None:
                stored = self.writer.column(erasure.tombstones_statement())
                identifiers = erased.erased_identifiers(stored, e.identifier_hashes)
            for table in PERSON_TABLES:
                where = erasure.where(table, e.persons, identifiers)
                counts[table] = self.writer.count(table, where)
                if counts[table]:
                    self.writer.delete(table, where)
        self.writer.insert(AUDIT_TABLE, AUDIT_COLUMNS, [erasure.audit_row(e, self.clock.now_ms(), counts)])
        log.info("erasure %s: %d person(s), rows deleted %s", e.request_id, len(e.persons), counts)

    def _insert(self, table: Table, rows: list[list[Any]]) -> list[list[Any]]:
        """Insert ``rows`` (the new ones of an insert-once table), retried until ClickHouse takes them;
        returns the rows inserted."""
        started = 0.0

        def attempt() -> list[list[Any]]:
            nonlocal started
            started = time.perf_counter()  # the seconds metric times the attempt that succeeded
            todo = rows
            if table.insert_once:
                todo = new_rows(table, rows, partial(self.writer.stored_keys, table))
            if todo:
                self.writer.insert(table.name, table.columns, todo)
            return todo

        todo: list[list[Any]] = self._retry(table.name, attempt, f"insert into {table.name}")
        metrics.SINK_INSERT_SECONDS.labels(table.name).observe(time.perf_counter() - started)
        metrics.SINK_BATCH_ROWS.labels(table.name).observe(len(todo))
        metrics.SINK_ROWS.labels(table.name).inc(len(todo))
        return todo
