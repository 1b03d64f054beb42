"""``touchline erase --identifier type:value``: erase a person, end to end.

Steps, in this order (each waits for the one before):

1. **Suppress the identifier**: an ``Erasure`` record of kind ``suppress`` on
   ``privacy.erasures``. Ingest reads that topic to its end before each slice
   (streams/privacy/feed.py), so from then on no event carrying it enters.
2. **Drain**: wait until ingest has committed past the raw topic's end as of
   now, then until the workers have committed past the ends of their input
   topics, round after round, until a round finds nothing new was written
   (or ``DRAIN_ROUNDS`` rounds: a stage's output is the next one's input).
   Nothing the person did before the suppression is still on its way.
3. **Find the person**: every identifier the identity graph gives them (the
   lookup of ``touchline profile``, once the sink has stored the assignments
   written so far), and every person id those identifiers ever stood for
   (streams/privacy/core.py ``persons_of``). Suppress them all; drain again.
4. **Erase worker state**: each partition gets the persons and identifiers it
   holds on ``internal.erasure`` (streams/privacy/agent.py); drain again.
5. **Erase ClickHouse rows and audit**: an ``erase`` record; the sink deletes
   the persons' rows, keeps any later row of theirs out, and writes the audit
   row to ``privacy_erasures``, which this command waits for and prints.

What stays: aggregate counts without personal data (the hourly KPI tables,
product sales), the suppression list (salted hashes) and the audit log (salted
hashes and person ids), and, until their retention runs out, records already
on non-compacted topics (raw, enriched, sessions, triggers, dead letters: Kafka
does not delete single records; dead letters keep only encrypted originals).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams import avro
from streams.identity.profile import lookup, stored_form
from streams.kafka import clients
from streams.metrics import lag_records
from streams.privacy.core import persons_of, suppression_key, work_by_partition
from streams.settings import Settings
from streams.sink.query import quote, rows
from streams.topics import (
    ALL_TOPICS,
    ERASURE_WORK,
    IDENTITY_ASSIGNMENTS,
    PRIVACY_ERASURES,
    RAW,
    TopicSpec,
)

DRAIN_ROUNDS = 8
# what the workers' agents consume: the internal topics other than the compacted ones every worker
# reads whole (products.sales), which no group commits
WORKER_INPUTS = tuple(s for s in ALL_TOPICS if s.internal and not s.compacted)


class EraseError(RuntimeError):
    """The erasure could not be completed (a stage did not catch up in time)."""


class _Offsets:
    """High watermarks of topics and committed offsets of consumer groups, without joining any."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumers: dict[str, Consumer] = {}

    def _consumer(self, group: str) -> Consumer:
        if group not in self._consumers:
            self._consumers[group] = clients.consumer(self.settings, group)
        return self._consumers[group]

    def ends(self, specs: tuple[TopicSpec, ...], deadline: float) -> dict[tuple[str, int], int]:
        """One past the last record of each partition. The embedded broker reports the high watermark
        as the first offset of the partition's last record batch plus one, so that batch is read from
        there to find its last offset (on Kafka this reads the one last record)."""
        c = self._consumer(self.settings.group("erase-reader"))
        out, tails = {}, []
        for spec in specs:
            for p in range(spec.partitions(self.settings)):
                tp = TopicPartition(spec.name(self.settings), p)
                low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
                out[(tp.topic, p)] = high
                if high > low:  # a last record to read
                    tails.append(TopicPartition(tp.topic, p, high - 1))
        if not tails:
            return out
        c.assign(tails)
        pending = {(tp.topic, tp.partition) for tp in tails}
        while pending:
            if time.monotonic() > deadline:
                raise EraseError(f"could not read the last records of {sorted(pending)[:4]}")
            for m in c.consume(1000, 0.2):
                topic, part, offset = m.topic(), m.partition(), m.offset()
                if m.error() is None and topic is not None and part is not None and offset is not None:
                    out[(topic, part)] = max(out[(topic, part)], offset + 1)
                    pending.discard((topic, part))
        c.unassign()
        return out

    def behind(self, group: str, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Partitions where ``group`` has not committed up to ``ends`` yet, with what is left."""
        wanted = [TopicPartition(t, p) for (t, p), high in ends.items() if high > 0]
        if not wanted:
            return {}
        left = {}
        for tp in self._consumer(group).committed(wanted, timeout=10):
            if n := lag_records(ends[(tp.topic, tp.partition)], tp.offset):
                left[(tp.topic, tp.partition)] = n
        return left

    def close(self) -> None:
        for c in self._consumers.values():
            c.close()


def _wait(offsets: _Offsets, group: str, ends: dict[tuple[str, int], int], deadline: float, what: str) -> None:
    while True:
        left = offsets.behind(group, ends)
        if not left:
            return
        if time.monotonic() > deadline:
            raise EraseError(f"{what}: group {group} still behind on {sorted(left.items())[:4]}")
        time.sleep(0.2)


def drain(settings: Settings, offsets: _Offsets, deadline: float) -> int:
    """Wait until nothing ingested before now is still on its way through the workers; return the
    rounds it took (see the module doc)."""
    _wait(offsets, settings.group("ingest"), offsets.ends((RAW,), deadline), deadline, "ingest")
    group = settings.topic_prefix  # the Faust app id names the workers' group
    previous: dict[tuple[str, int], int] | None = None
    for round_ in range(1, DRAIN_ROUNDS + 1):
        ends = offsets.ends(WORKER_INPUTS, deadline)
        if ends == previous:
            return round_ - 1
        _wait(offsets, group, ends, deadline, "workers")
        previous = ends
    return DRAIN_ROUNDS


def erase(settings: Settings, identifier: str, reason: str = "", timeout_s: float = 300.0,
          progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Erase the person holding ``identifier`` (``type:value`` as a user types it); return the audit row."""
    from streams.deadletter.sealing import identifier_salt

    salt = identifier_salt(settings)
    stored = stored_form(identifier, salt, settings.default_country_code)
    request_id = uuid.uuid4().hex
    requested_at_ms = int(time.time() * 1000)
    deadline = time.monotonic() + timeout_s
    producer = clients.producer(settings)
    offsets = _Offsets(settings)
    failures: list[str] = []

    def produce(topic: str, value: bytes, partition: int = 0) -> None:
        producer.produce(topic, key=request_id.encode(), value=value, partition=partition,
                         on_delivery=lambda err, msg: failures.append(str(err)) if err else None)
        producer.flush(30)
        if failures:
            raise EraseError(f"could not write to {topic}: {failures[0]}")

    def record(kind: str, ids: list[str], persons: list[str]) -> None:
        produce(PRIVACY_ERASURES.name(settings), avro.encode(avro.ERASURE, {
            "request_id": request_id, "kind": kind, "requested_at_ms": requested_at_ms,
            "identifier_hashes": sorted(suppression_key(i, salt) for i in ids), "persons": persons,
            "reason": reason}))

    def query(sql: str) -> list[list[Any]]:
        return rows(settings, sql, open_directly=False)

    try:
        record("suppress", [stored], [])
        progress(f"suppressed {stored.split(':', 1)[0]}:… (request {request_id})")
        rounds = drain(settings, offsets, deadline)
        progress(f"pipeline drained ({rounds} rounds)")
        _wait(offsets, settings.group("sink"), offsets.ends((IDENTITY_ASSIGNMENTS,), deadline), deadline, "sink")
        found = lookup(query, stored)
        ids = sorted({stored, *(found["identifiers"] if found else [])})
        persons = persons_of(ids)
        record("suppress", ids, [])
        drain(settings, offsets, deadline)
        progress(f"{len(ids)} identifiers and {len(persons)} person ids suppressed")
        for part, work in sorted(work_by_partition(request_id, persons, ids, settings.partitions).items()):
            produce(ERASURE_WORK.name(settings), avro.encode(avro.ERASURE_WORK, work), part)
        drain(settings, offsets, deadline)
        progress("worker state erased")
        record("erase", ids, persons)
        while True:
            audit = query("SELECT request_id, requested_at, erased_at, rows_deleted FROM privacy_erasures FINAL "
                          f"WHERE request_id = {quote(request_id)}")
            if audit:
                break
            if time.monotonic() > deadline:
                raise EraseError("the sink did not record the erasure in time (is it running?)")
            time.sleep(0.2)
        rid, requested_at, erased_at, deleted = audit[0]
        return {"request_id": rid, "requested_at": requested_at, "erased_at": erased_at,
                "identifiers": len(ids), "persons": len(persons), "rows_deleted": deleted}
    except KafkaException as exc:
        raise EraseError(str(exc)) from exc
    finally:
        offsets.close()


def main(settings: Settings, identifier: str, reason: str, timeout_s: float) -> dict[str, Any]:
    summary = erase(settings, identifier, reason, timeout_s, progress=lambda line: print(f"touchline erase: {line}"))
    print(json.dumps(summary, indent=2, default=str))
    return summary
