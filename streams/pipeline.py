"""The Faust application: topics, tables and agents of one Touchline worker.

Stages are chained through Kafka, each a thin agent around a pure core:

    raw --ingest thread--> internal.ingested --identity--> internal.person-ops
        --features--> internal.featured --triggers--> triggers.fired

with public outputs touchpoints.enriched, identity.changes, members.features
and touchpoints.dead-letter. Internal records carry many events each (one
partition's worth), so Faust's per-message cost is paid per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.clock import Clock, SystemClock
from streams.ingest.service import IngestService
from streams.settings import Settings
from streams.topics import ALL_TOPICS, TopicSpec


@dataclass
class Pipeline:
    """What every agent module needs: settings, clock, topics and the app."""

    app: faust.App
    settings: Settings
    clock: Clock
    topics: dict[str, Any]
    reference: Any = None  # streams.reference.view.ReferenceData over the reference GlobalTables

    def topic(self, spec: TopicSpec) -> Any:
        return self.topics[spec.suffix]

    def on_revoked(self, forget: Callable[[int], Any]) -> None:
        """Call ``forget(partition)`` for each partition this worker loses, so an
        in-memory index over a table is rebuilt on its next use."""

        @self.app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
            for tp in revoked:
                forget(tp.partition)

    def table(self, name: str) -> Any:
        # Keys and values are JSON in the changelog (Faust's default without a model type).
        return self.app.Table(name, default=None, partitions=self.settings.partitions)


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
    from streams.reference.tables import register as register_reference
    from streams.sessions.agents import register as register_sessions
    from streams.triggers.agents import register as register_triggers

    pipeline.reference = register_reference(pipeline)
    _REFERENCES[id(app)] = pipeline.reference
    register_identity(pipeline)
    register_features(pipeline)
    register_triggers(pipeline)
    register_sessions(pipeline)
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
