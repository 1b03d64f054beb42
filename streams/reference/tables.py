"""Reference data as tables in a Faust worker: ``register(p)`` -> ``ReferenceData``.

Choice: a Faust **GlobalTable** per kind whose changelog topic *is* the
compacted reference topic (``reference.stores``, ``.products``,
``.campaigns``, ``.spend``). Every worker holds every key; Faust reads the topic
from the beginning before the agents start (so an agent never sees half a
catalog at startup) and keeps reading it afterwards as a standby, so a
``touchline load`` while the workers run reaches every worker within a moment.
Values stay the framed Avro bytes the loader wrote; ``ReferenceData`` decodes on
read and caches the decoded record until the bytes change. Agents never write
these tables; only the loader writes the topics.

One workaround. faust-streaming 0.15.3's partition assignor looks a global
table's changelog up by its *default* name (``<app id>-<table>-changelog``,
``PartitionAssignor._global_table_standby_assignments``), not by the topic
given as ``changelog_topic``. With a custom changelog topic the leader's
assignment raises ``KeyError`` inside the group join, which aiokafka swallows:
the worker never gets any partition and every agent stalls (seen on the
embedded Tansu broker, 2026-11). ``_ExternalGlobalTable`` overrides that one
method to return the real topic name. With it, verified on Tansu with one and
two workers: records loaded before start are there when the worker is up,
records loaded later arrive while it runs (``tests/test_reference.py`` checks
this on a real worker). If a Faust upgrade changes the assignor, that test
tells; the fallback is ``reader.ReferenceReader`` (a confluent-kafka thread
reading the topics from the beginning), which exposes the same API and is
what processes without Faust (sink, tools) use.

Using it in an agent module::

    ref = register(p)        # at registration time, once per app
    ...
    product = ref.product("P00001")           # dict or None
    stores = ref.stores_in("Shanghai")
    running = ref.campaigns_on(day_of(event_time_ms))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.tables.globaltable import GlobalTable

from streams.reference.rows import KINDS
from streams.reference.view import ReferenceData

if TYPE_CHECKING:
    from streams.pipeline import Pipeline
    from streams.topics import TopicSpec


class _ExternalGlobalTable(GlobalTable):
    """A GlobalTable whose changelog is an existing topic written by someone else (see module doc)."""

    def _changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())


def table_name(kind: str) -> str:
    return f"reference-{kind}"


def external_global_table(p: Pipeline, spec: TopicSpec, name: str, help: str) -> Any:
    """A GlobalTable of raw bytes over the compacted topic ``spec`` (see module doc), added to the app:
    every worker holds every key, read before the agents start and kept up to date afterwards.
    Also the product sales summaries' (streams/triggers/sales_agent.py)."""
    app, settings = p.app, p.settings
    # Our own Topic object (same name as p.topic(spec)) so that, if the topic
    # is missing, Faust declares it compacted rather than with delete policy.
    topic = app.topic(spec.name(settings), partitions=spec.partitions(settings), compacting=True,
                      key_serializer="raw", value_serializer="raw")
    return app.tables.add(_ExternalGlobalTable(
        app, name=name, default=None, partitions=spec.partitions(settings),
        changelog_topic=topic, key_type=bytes, value_type=bytes,  # raw bytes, decoded by the reader
        beacon=app.tables.beacon, is_global=True,
        # Apply every record as it arrives, and keep reading all partitions
        # although the writer is outside this consumer group.
        standby_buffer_size=1, recovery_buffer_size=1, synchronize_all_active_partitions=True,
        help=help,
    ))


def register(p: Pipeline) -> ReferenceData:
    """Add the four reference GlobalTables to the app; return the lookups over them."""
    sources: dict[str, Any] = {}
    for kind in KINDS.values():
        sources[kind.name] = external_global_table(
            p, kind.topic, table_name(kind.name),
            f"reference {kind.name} (read-only, from {kind.topic.name(p.settings)})")
    return ReferenceData(sources)
