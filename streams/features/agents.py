"""Features agent: keep each person's counters, follow merges, publish snapshots."""

from __future__ import annotations

import time
from typing import Any

from streams import avro, metrics, redelivery
from streams.features import counters
from streams.pipeline import Pipeline, deliver
from streams.topics import FEATURED, MEMBER_FEATURES, PERSON_OPS, partition_for


def register(p: Pipeline) -> None:
    table = p.table("member-features", persons="features")  # keyed by person id
    processing = metrics.EVENT_PROCESSING_SECONDS.labels("features")
    timer = metrics.StageTimer("features")
    n = p.settings.partitions
    ops_topic, featured_topic = p.topic(PERSON_OPS), p.topic(FEATURED)
    snapshots_topic = p.topic(MEMBER_FEATURES)

    @p.app.agent(ops_topic, name="features")
    async def features(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)
            touched, moves = _apply(batch, table, n)
            # Moves first: a person merged away leaves the table only once the broker holds
            # its counters for the survivor, so a crash in between cannot lose them.
            await timer.outside(deliver([
                (ops_topic, None, avro.encode(avro.PERSON_BATCH, {
                    "batch_id": f"{batch['batch_id']}/move", "source_partition": -1,
                    "watermark_ms": 0, "source_offset": -1, "ops": ops}), dest)
                for dest, ops in moves.items()
            ]))
            for person, state in touched.items():
                if state is None:
                    if person in table:
                        del table[person]
                    snapshots_topic.send_soon(key=person.encode(), value=None)
                else:
                    table[person] = state
                    snapshots_topic.send_soon(
                        key=person.encode(), value=avro.encode(avro.MEMBER_FEATURES, counters.snapshot(state))
                    )
            metrics.FEATURE_UPDATES.inc(len(touched))
            featured_topic.send_soon(value=event.value, partition=part)
            metrics.observe_many(processing, metrics.event_delays(batch["ops"], int(time.time() * 1000)))
            timer.stop()


def _apply(
    batch: dict[str, Any], table: Any, n: int,
) -> tuple[dict[str, dict[str, Any] | None], dict[int, list[dict[str, Any]]]]:
    """Apply one batch of person ops; return touched states (None: merged away) and moves."""
    touched: dict[str, dict[str, Any] | None] = {}
    moves: dict[int, list[dict[str, Any]]] = {}
    claims = redelivery.Claims(batch)  # a redelivered batch is skipped person by person

    def state_of(person: str) -> dict[str, Any]:
        current = touched.get(person)
        if current is None:
            current = table.get(person) or counters.empty(person)
            touched[person] = current
        return current

    for op in batch["ops"]:
        person = op["person_id"]
        if op["kind"] == "event":
            state = state_of(person)
            if claims.new(person, state):
                counters.apply_event(state, op["event"])
            # A redelivered batch still touches the person: the snapshot is sent again, in case
            # the crash came between the state's changelog record and the snapshot.
        elif op["kind"] == "merge":
            # This partition owns the person being merged away: hand its
            # counters to the survivor's partition, then forget it.
            gone = touched.get(person) or table.get(person)
            touched[person] = None
            if gone is not None:
                into = op["other_person"]
                moves.setdefault(partition_for(into, n), []).append(
                    {"kind": "absorb", "person_id": into, "event": None, "other_person": person,
                     "absorbed": counters.snapshot(gone)}
                )
        elif op["kind"] == "absorb":
            counters.absorb(state_of(person), op["absorbed"])
    return touched, moves
