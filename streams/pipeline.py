"""The Faust application: topics, tables and agents of one Touchline worker.

Stages are chained through Kafka, each a thin agent around a pure core:

    raw --ingest thread--> internal.ingested --identity--> internal.person-ops
        --features--> internal.featured --triggers--> triggers.fired
    internal.person-ops --product-sales--> products.sales (read whole by every worker, for triggers)

with public outputs touchpoints.enriched, identity.changes, members.features
and touchpoints.dead-letter. Internal records carry many events each (one
partition's worth), so Faust's per-message cost is paid per batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.clock import Clock, SystemClock
from streams.ingest.service import IngestService
from streams.kafka import faust_fetch, faust_flush, faust_offsets
from streams.metrics import LAG_INTERVAL_S
from streams.settings import Settings
from streams.topics import ALL_TOPICS, TopicSpec, partition_for

STATE_INTERVAL_S = 10.0  # persons and state bytes are sampled at most this often
STATE_SAMPLE_VALUES = 64  # values JSON-encoded per table partition and sample, for the mean size
STATE_MAX_LOOP_SHARE = 0.05  # the state sample waits longer when counting keys takes longer than this share


@dataclass
class WatchedTable:
    """A Faust table whose size the worker reports (touchline_state_bytes, touchline_persons)."""

    table: Any
    partition_of: Callable[[Any], int]  # the partition (of the table's changelog) holding a key
    persons: str | None = None  # stage label of touchline_persons when each key is one person


@dataclass
class Pipeline:
    """What every agent module needs: settings, clock, topics and the app."""

    app: faust.App
    settings: Settings
    clock: Clock
    topics: dict[str, Any]
    reference: Any = None  # streams.reference.view.ReferenceData over the reference GlobalTables
    sales: Any = None  # streams.triggers.sales_agent.SalesView over the products.sales GlobalTable
    watched: dict[str, WatchedTable] = field(default_factory=dict)  # tables sampled for state metrics
    # erasure (streams/privacy/agent.py): each stage's eraser(partition, ErasureWork record) deletes
    # what its tables hold of the request on that partition
    erasers: list[Callable[[int, dict[str, Any]], None]] = field(default_factory=list)

    def topic(self, spec: TopicSpec) -> Any:
        return self.topics[spec.suffix]

    def on_revoked(self, forget: Callable[[int], Any]) -> None:
        """Call ``forget(partition)`` for each partition this worker loses, so an
        in-memory index over a table is rebuilt on its next use."""

        @self.app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
            for tp in revoked:
                forget(tp.partition)

    def table(self, name: str, partition_of: Callable[[Any], int] | None = None,
              persons: str | None = None) -> Any:
        """A changelogged table, watched for the state metrics.

        ``partition_of(key)`` is the partition that holds a key; the default,
        ``partition_for(key)``, is right for tables keyed by what their stage is
        partitioned by (route key, person id). ``persons``: the stage label under
        which the table's entries count as ``touchline_persons``.
        """
        # Keys and values are JSON in the changelog (Faust's default without a model type).
        table = self.app.Table(name, default=None, partitions=self.settings.partitions)
        n = self.settings.partitions
        self.watched[name] = WatchedTable(
            table, partition_of or (lambda key: partition_for(str(key), n)), persons,
        )
        return table


class HeldWrites(dict):  # type: ignore[type-arg]
    """Writes to a table held back until ``flush`` (after the batch's outputs are delivered);
    reads see them over the table's values. ``delete`` holds back a deletion the same way: the
    key reads as absent until it is written again."""

    def __init__(self, table: Any) -> None:
        super().__init__()
        self.table = table
        self.deleted: set[Any] = set()  # keys deleted by ``delete`` (and not written since)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default if key in self.deleted else self.table.get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.deleted.discard(key)
        super().__setitem__(key, value)

    def delete(self, key: Any) -> None:
        """Delete ``key`` (from the table at ``flush``); reads see it absent from now on."""
        self.pop(key, None)
        self.deleted.add(key)

    def flush(self, removed: Iterable[Any] = ()) -> None:
        """Write the held values, after deleting the ``removed`` and ``delete``d keys from the table."""
        for key in [*removed, *self.deleted]:
            if key in self.table:
                del self.table[key]
        for key, value in self.items():
            self.table[key] = value


class PersonEntries(HeldWrites):
    """One person batch's entries in a person-keyed stage (features, triggers): held writes over
    the stage's table, plus the persons the batch merges away. A merged-away person's entry is
    handed to the survivor's partition as an op of the stage's own kind, and the person leaves
    the table (``flush(removed=gone)``) only after that op is delivered."""

    def __init__(self, table: Any, partition: int, partitions: int, empty: Callable[[str, int], Any]) -> None:
        super().__init__(table)
        self.partition, self.partitions, self.empty = partition, partitions, empty
        self.gone: set[str] = set()
        self.moves: dict[int, list[dict[str, Any]]] = {}  # survivor's partition -> hand-over ops

    def entry_of(self, person: str) -> Any:
        """The person's entry (new if the table has none), held: written back after the batch's outputs."""
        current = self.get(person) or self.empty(person, self.partition)
        self[person] = current
        self.gone.discard(person)
        return current

    def leave(self, op: dict[str, Any], kind: str, handed_over: Callable[[Any], str]) -> None:
        """A merge op naming a person this partition owns: hand its entry to the survivor's partition
        (an op of ``kind`` carrying ``handed_over(entry)``), then forget it."""
        person = op["person_id"]
        leaving = self.pop(person, None) or self.get(person)
        if leaving is not None and person not in self.gone:
            into = op["other_person"]
            self.moves.setdefault(partition_for(into, self.partitions), []).append(
                {"kind": kind, "person_id": into, "event": None, "other_person": person,
                 "absorbed_state": handed_over(leaving)})
        self.gone.add(person)

    def erase(self, person: str) -> None:
        """An erase op (streams/privacy/agent.py): the person leaves the table with nothing handed on."""
        self.pop(person, None)
        self.gone.add(person)

    def move_batches(self, batch: dict[str, Any], suffix: str) -> list[tuple[int, dict[str, Any]]]:
        """The hand-over ops as person batches, by destination partition (not stamped: the
        survivor's entry folds each in once, streams/redelivery.py ``absorb_once``)."""
        return [(dest, {"batch_id": f"{batch['batch_id']}/{suffix}", "source_partition": -1,
                        "watermark_ms": 0, "source_offset": -1, "ops": ops})
                for dest, ops in self.moves.items()]


async def deliver(sends: Sequence[tuple[Any, bytes | None, bytes | None, int | None]]) -> None:
    """Send (topic, key, value, partition) records and wait until the broker holds every one.

    For outputs that a state write then records as done (a closed session, a fired trigger,
    features handed to a merge survivor): written with ``send_soon``, the state's changelog
    record could reach the broker while the output is still buffered, and a crash in between
    would lose the output for good (the redelivered batch finds the work done). Waiting first
    means a crash can only lose the state write, and the redelivered batch does the work again
    under the same deterministic ids.
    """
    futures = [await topic.send(key=key, value=value, partition=partition, force=True)
               for topic, key, value, partition in sends]
    if futures:
        await asyncio.gather(*futures)


_REFERENCES: dict[int, Any] = {}


def reference_of(app: faust.App) -> Any:
    """The reference-data lookups (streams.reference.view.ReferenceData) of an app made by create_app."""
    return _REFERENCES[id(app)]


def create_app(settings: Settings, clock: Clock | None = None) -> faust.App:
    if not settings.kafka_bootstrap:
        raise SystemExit(
            "TOUCHLINE_KAFKA_BOOTSTRAP is not set: start a broker with `touchline broker` "
            "or run the whole pipeline with `touchline run`"
        )
    faust_offsets.install()  # partitions nothing was committed for restart at their beginning
    faust_flush.install()  # offsets are committed only once every table write is on the broker
    faust_fetch.install(settings.kafka_fetch_wait_ms)  # Faust's own 1.5 s fetch wait, per hop
    worker_dir = settings.data_path / "faust" / f"worker-{settings.worker_id}"
    worker_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topic_prefix,  # app id: names consumer group and changelog topics
        broker=f"kafka://{settings.kafka_bootstrap}",
        store=settings.store,
        datadir=str(worker_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
        consumer_auto_offset_reset="earliest",
        web_port=settings.web_port + settings.worker_id,
        web_bind="0.0.0.0",
        web_in_thread=False,
        table_standby_replicas=0,
        producer_linger=0.005,
        # Faust refuses to recover a changelog partition whose locally recorded offset is past the
        # changelog's end (meant for a RocksDB file outliving its topic). With the memory store that
        # offset is what this same process read moments ago; against the end the embedded broker
        # reports (see streams/kafka/faust_offsets.py) the check failed on healthy tables.
        recovery_consistency_check=not settings.store.startswith("memory"),
    )
    topics = {
        spec.suffix: app.topic(
            spec.name(settings), partitions=spec.partitions(settings),
            key_serializer="raw", value_serializer="raw",
        )
        for spec in ALL_TOPICS
    }
    pipeline = Pipeline(app, settings, clock or SystemClock(), topics)

    from streams.features.agents import register as register_features
    from streams.identity.agents import register as register_identity
    from streams.identity.graph_agent import register as register_identity_graph
    from streams.privacy.agent import register as register_erasure
    from streams.reference.tables import register as register_reference
    from streams.sessions.agents import register as register_sessions
    from streams.triggers.agents import register as register_triggers
    from streams.triggers.sales_agent import register as register_sales

    pipeline.reference = register_reference(pipeline)
    _REFERENCES[id(app)] = pipeline.reference
    register_identity(pipeline)
    register_identity_graph(pipeline)
    register_features(pipeline)
    pipeline.sales = register_sales(pipeline)
    register_triggers(pipeline)
    register_sessions(pipeline)
    register_erasure(pipeline)
    _register_ingest(pipeline)
    _register_views(pipeline)
    return app


def _register_ingest(p: Pipeline) -> None:
    ingest = IngestService(p.settings, p.clock, p.settings.worker_id)

    @p.app.service
    class IngestThread(Service):
        async def on_start(self) -> None:
            ingest.start()

        async def on_stop(self) -> None:
            await self.loop.run_in_executor(None, ingest.stop)

        @Service.timer(1.0)
        async def _watch(self) -> None:
            if ingest.error is not None:
                raise RuntimeError("ingest loop died") from ingest.error


def _register_views(p: Pipeline) -> None:
    @p.app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    _register_samplers(p)


def _register_samplers(p: Pipeline) -> None:
    """Timers that set the gauges no agent sets per batch: consumer lag, persons, state bytes."""
    app = p.app
    group = app.conf.id  # Faust's consumer group is the app id
    lag_series: set[tuple[str, ...]] = set()
    state_series: set[tuple[str, ...]] = set()
    persons_series: set[tuple[str, ...]] = set()
    next_state_at = 0.0

    @app.timer(LAG_INTERVAL_S)
    async def sample_consumer_lag() -> None:
        lags: dict[tuple[str, ...], float] = {
            (group, topic, str(partition)): lag for (topic, partition), lag in faust_consumer_lag(app).items()
        }
        _publish(metrics.CONSUMER_LAG, lags, lag_series)

    @app.timer(STATE_INTERVAL_S)
    async def sample_state() -> None:
        nonlocal next_state_at
        if time.monotonic() < next_state_at:
            return
        started = time.monotonic()
        try:
            actives = app.assignor.assigned_actives()
        except Exception:  # not assigned yet
            return
        state: dict[tuple[str, ...], float] = {}
        persons: dict[tuple[str, ...], float] = {}
        for name, watched in list(p.watched.items()):
            topic = watched.table.changelog_topic.get_topic_name()
            held = {tp.partition for tp in actives if tp.topic == topic}
            sizes = await table_sizes(watched.table, watched.partition_of, held)
            for partition, (count, size) in sizes.items():
                state[(name, str(partition))] = size
                if watched.persons is not None:
                    persons[(watched.persons, str(partition))] = count
        _publish(metrics.STATE_BYTES, state, state_series)
        _publish(metrics.PERSONS, persons, persons_series)
        elapsed = time.monotonic() - started
        next_state_at = started + elapsed / STATE_MAX_LOOP_SHARE


def _publish(gauge: Any, samples: dict[tuple[str, ...], float], published: set[tuple[str, ...]]) -> None:
    """Set a gauge's series to ``samples`` (labels -> value), remove the series ``published``
    (what the last call set) holds and ``samples`` no longer has, and remember the new set."""
    for labels, value in samples.items():
        gauge.labels(*labels).set(value)
    for labels in published - samples.keys():
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
    published.clear()
    published.update(samples)


def faust_consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """Lag of every assigned partition of the agents' source topics: the high watermark
    the consumer last fetched minus the offset Faust committed (or 0 before any commit)."""
    try:
        consumer = app.consumer
        assigned = consumer.assignment()
    except Exception:  # consumer not started yet
        return {}
    sources = {name for agent in app.agents.values() for name in agent.get_topic_names()}
    committed = getattr(consumer, "_committed_offset", {})  # Faust's own: group offsets, then its commits
    lags = {}
    for tp in assigned:
        if tp.topic not in sources:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # revoked meanwhile
            continue
        if high is None or high < 0:  # nothing fetched yet
            continue
        lags[(tp.topic, tp.partition)] = metrics.lag_records(high, committed.get(tp))
    return lags


async def table_sizes(
    table: Any, partition_of: Callable[[Any], int], partitions: set[int], chunk: int = 5000,
) -> dict[int, tuple[int, int]]:
    """partition -> (entries, approximate bytes) of a table, for the given partitions.

    Counts every key; the bytes are the entry count times the mean JSON size
    (key + value) of the first STATE_SAMPLE_VALUES entries of the partition. Yields
    to the event loop every ``chunk`` keys.
    """
    counts = dict.fromkeys(partitions, 0)
    sampled = {part: [0, 0] for part in partitions}  # bytes, entries
    for i, key in enumerate(list(table.keys())):
        if i and not i % chunk:
            await asyncio.sleep(0)
        part = partition_of(key)
        if part not in counts:
            continue
        counts[part] += 1
        sample = sampled[part]
        if sample[1] < STATE_SAMPLE_VALUES:
            value = table.get(key)
            sample[0] += len(json.dumps(key, default=str)) + len(json.dumps(value, default=str))
            sample[1] += 1
    return {
        part: (count, round(count * sampled[part][0] / sampled[part][1]) if sampled[part][1] else 0)
        for part, count in counts.items()
    }
