"""confluent-kafka client configuration and topic administration."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings
from streams.topics import ALL_TOPICS, TopicSpec

# Group joins wait about one session timeout, so short timeouts keep joins and
# takeovers short (a dead member is noticed after session.timeout.ms).
_GROUP_TIMEOUTS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def producer(settings: Settings, **extra: Any) -> Producer:
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "none",
        "acks": "all",
        **extra,
    }
    return Producer(conf)


def consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
        **_GROUP_TIMEOUTS,
        **extra,
    }
    return Consumer(conf)


def create_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create any missing topics; return the names created. Idempotent."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = []
    for spec in specs:
        name = spec.name(settings)
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if spec.compacted else {}
        if spec.kept_forever:
            config["retention.ms"] = "-1"
        wanted.append(NewTopic(name, spec.partitions(settings), settings.replication_factor, config=config))
    if not wanted:
        return []
    for future in admin.create_topics(wanted, operation_timeout=10).values():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return [t.topic for t in wanted]
