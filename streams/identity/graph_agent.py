"""Identity-graph agent: the sharded identity graph (streams/identity/shards.py) on Faust.

The identity agent hands every accepted event to the home of its strongest
identifier on ``internal.identity-graph``; this agent handles the messages of
its partitions in order, with two tables keyed by identifier: ``identity-groups``
(roots and pointers) and ``identity-assign`` (each identifier's current person,
also published, compacted, on ``identity.assignments``). Every merge, split,
conflict and newly shared identifier it finds goes on ``identity.changes``
(resolver ``graph``).

Erasure: ``shards.forget_message`` (sent here by ``touchline erase``) travels
like the other messages; a step that deletes its record or its identifier's
assignment (``Step.delete``, ``Step.unassign``, and ``unassign`` messages) has
the key removed from the table after the batch's outputs are delivered, a
deleted assignment published as a tombstone (value None) on the compacted
identity.assignments.

One record of the topic carries many messages for one partition, so Faust's
per-message cost is paid per batch. A batch's table writes are held back until
every message it sends and every assignment it publishes is acknowledged by the
broker: a crash then loses at most writes, and the redelivered batch, whose
steps are idempotent, sends the same again (see the module above).

While the events' persons still come from the route-key resolver
(streams/identity/links.py), this graph runs beside it: the assignments are the
identity graph's clustering, sharded, and what lookups and the oracle test read.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from streams import avro, metrics
from streams.identity import shards
from streams.identity.graph import Rules, identifiers_of
from streams.pipeline import HeldWrites, Pipeline, deliver
from streams.topics import IDENTITY_ASSIGNMENTS, IDENTITY_CHANGES, IDENTITY_WORK, partition_for


def encode_batch(msgs: Iterable[dict[str, Any]]) -> bytes:
    return avro.encode(avro.IDENTITY_WORK, {"msgs": [json.dumps(m, separators=(",", ":")) for m in msgs]})


def event_messages(touchpoints: Iterable[dict[str, Any]], rules: Rules, n: int) -> dict[int, list[dict[str, Any]]]:
    """The messages that place these events in the graph, by destination partition."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for tp in touchpoints:
        ids = identifiers_of(tp, rules)
        if ids:
            out[partition_for(ids[0], n)].append(shards.event_message(tp["event_id"], tp["event_time_ms"], ids))
    return out


def register(p: Pipeline) -> None:
    rules = p.settings.identity_rules()
    groups = p.table("identity-groups")  # identifier -> root {"g", "own"} or pointer {"p"}
    # identifier -> {"person", "member", "root"}; its keys count as touchline_persons{stage="identity-graph"}
    assigned = p.table("identity-assign", persons="identity-graph")
    n = p.settings.partitions
    work, assignments, changes = p.topic(IDENTITY_WORK), p.topic(IDENTITY_ASSIGNMENTS), p.topic(IDENTITY_CHANGES)
    clock = p.clock
    timer = metrics.StageTimer("identity-graph")

    @p.app.agent(work, name="identity-graph")
    async def identity_graph(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            msgs = [json.loads(m) for m in avro.decode_as(avro.IDENTITY_WORK, event.value)["msgs"]]
            records, assigns = HeldWrites(groups), HeldWrites(assigned)  # deletes: an erasure
            out: dict[int, list[dict[str, Any]]] = defaultdict(list)
            published: list[tuple[Any, bytes | None, bytes | None, int | None]] = []
            changed: Counter[str] = Counter()
            now_ms = clock.now_ms()  # dates a change only when no event time reached it
            for msg in msgs:
                key = msg["to"]
                if msg["k"] == "unassign":
                    _unassign(key, assigns, published, assignments)
                    continue
                if msg["k"] == "assign":
                    new = shards.assign_step(assigns.get(key), msg, rules)
                    if new is not None:
                        assigns[key] = new
                        published.append((assignments, key.encode(), avro.encode(avro.IDENTITY_ASSIGNMENT, {
                            "identifier": key, "person_id": new["person"], "member_id": new["member"],
                            "root": new["root"]}), None))
                    continue
                step = shards.step(records.get(key), msg, rules)
                for m in step.sends:
                    out[partition_for(m["to"], n)].append(m)
                if step.delete:
                    records.delete(key)
                elif step.write is not None:
                    records[key] = step.write
                if step.unassign:
                    _unassign(key, assigns, published, assignments)
                for record in shards.change_records(step, now_ms):
                    changed[record["kind"]] += 1
                    published.append((changes, record["into_person"].encode() or record["from_person"].encode(),
                                      avro.encode(avro.IDENTITY_CHANGE, record), None))
            sends = [(work, None, encode_batch(ms), dest) for dest, ms in sorted(out.items())]
            await timer.outside(deliver([*sends, *published]))
            records.flush()
            assigns.flush()
            for kind, count in changed.items():
                metrics.IDENTITY_GRAPH_CHANGES.labels(kind).inc(count)
            timer.stop()


def _unassign(key: str, assigns: HeldWrites,
              published: list[tuple[Any, bytes | None, bytes | None, int | None]], topic: Any) -> None:
    """Delete an erased identifier's assignment (after the batch's outputs) and publish its
    tombstone (``shards.unassign_step``)."""
    if shards.unassign_step(assigns.get(key)):
        assigns.delete(key)
        published.append((topic, key.encode(), None, None))
