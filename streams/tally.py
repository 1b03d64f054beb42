"""Counting what the pipeline has published, by reading its output topics.

Used by ``touchline run`` for live progress and the topic half of its summary,
and by the end-to-end tests. It reads every partition from the beginning
without a consumer group, and counts distinct ids, so repeats never inflate it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.identity.links import final_person
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, ENRICHED, IDENTITY_CHANGES, TRIGGERS


@dataclass
class Tally:
    enriched_records: Counter[str] = field(default_factory=Counter)  # per event id: >1 only on redelivery
    person_of_event: dict[str, str] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # trigger id -> its decision
    trigger_records: Counter[str] = field(default_factory=Counter)  # per trigger id: >1 only on redelivery
    dead_letter_records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def event_ids(self) -> KeysView[str]:
        """The distinct event ids on the enriched topic (a live, set-like view)."""
        return self.enriched_records.keys()

    @property
    def dead_letters(self) -> dict[str, str]:
        """dead_letter_id -> reason."""
        return {dead_letter_id: r["reason"] for dead_letter_id, r in self.dead_letter_records.items()}

    def add(self, name: str, r: dict[str, Any]) -> None:
        if name == avro.ENRICHED:
            tp = r["touchpoint"]
            self.enriched_records[tp["event_id"]] += 1
            self.person_of_event[tp["event_id"]] = r["person_id"]
        elif name == avro.IDENTITY_CHANGE and r["kind"] == "merge" and r["resolver"] == "route":
            self.merged_into[r["from_person"]] = r["into_person"]
        elif name == avro.TRIGGER:
            self.triggers[r["trigger_id"]] = r
            self.trigger_records[r["trigger_id"]] += 1
        elif name == avro.DEAD_LETTER:
            self.dead_letter_records[r["dead_letter_id"]] = r

    def of_rule(self, rule: str) -> list[dict[str, Any]]:
        """The trigger records of one rule (every final decision: fire, holdout, suppressed)."""
        return [r for r in self.triggers.values() if r["rule"] == rule]

    def final_person(self, person: str) -> str:
        return final_person(self.merged_into, person)

    @property
    def persons(self) -> int:
        return len({self.final_person(p) for p in self.person_of_event.values()})


TALLY_TOPICS = (ENRICHED, IDENTITY_CHANGES, TRIGGERS, DEAD_LETTERS)


class TopicReader:
    def __init__(self, settings: Settings) -> None:
        self.tally = Tally()
        self.records_read = 0
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"touchline-tally-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
        })
        self.consumer.assign([
            TopicPartition(spec.name(settings), p, OFFSET_BEGINNING)
            for spec in TALLY_TOPICS
            for p in range(spec.partitions(settings))
        ])

    def poll(self, max_records: int = 10000, timeout: float = 0.2) -> int:
        n = 0
        for m in self.consumer.consume(max_records, timeout=timeout):
            if m.error() is not None or m.value() is None:
                continue
            name, record = avro.decode(m.value())
            self.tally.add(name, record)
            n += 1
        self.records_read += n
        return n

    def close(self) -> None:
        self.consumer.close()
