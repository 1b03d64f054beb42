"""Erasure agent: a partition's share of an erasure request (thin shell over streams/privacy/core.py).

One ``internal.erasure`` record names the persons and identifiers homed on its
partition. The agent

- has each stage that keys tables on this partition erase what they hold
  (``Pipeline.erasers``): the identity agent deletes the routing resolver's
  links of those identifiers and forgets the recorded decisions naming the
  persons (streams/identity/dedup.py);
- sends each identifier's home in the identity graph a ``forget`` message
  (streams/identity/shards.py), which removes the erased identifiers' evidence
  and assignments there and at their group's root;
- sends the persons one ``erase`` op on ``internal.person-ops``: the features
  agent drops their features (tombstone on ``members.features``) and passes the
  op on through ``internal.featured``, where the triggers agent drops their
  pending waits and decisions and the sessions agent their open sessions,
  without closing them.

``touchline erase`` sends this only once no event of the person can still be
on its way (suppressed at ingest, pipeline drained), so nothing re-creates what
is deleted. Every step is idempotent: a redelivered record deletes nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from streams import avro, metrics
from streams.identity import graph_agent, shards
from streams.pipeline import Pipeline, deliver
from streams.topics import ERASURE_WORK, IDENTITY_WORK, PERSON_OPS, partition_for


def erase_ops(request_id: str, partition: int, persons: list[str]) -> dict[str, Any]:
    """The person batch that erases ``persons`` (all homed on ``partition``) in the person stages."""
    return {"batch_id": f"erase/{request_id}/{partition}", "source_partition": -1, "watermark_ms": 0,
            "source_offset": -1, "ops": [
                {"kind": "erase", "person_id": person, "event": None, "other_person": None,
                 "absorbed_state": None, "features": None} for person in persons]}


def register(p: Pipeline) -> None:
    n = p.settings.partitions
    ops_topic, graph_topic = p.topic(PERSON_OPS), p.topic(IDENTITY_WORK)

    @p.app.agent(p.topic(ERASURE_WORK), name="erasure")
    async def erasure(stream: Any) -> None:
        async for event in stream.events():
            part = event.message.partition
            work = avro.decode_as(avro.ERASURE_WORK, event.value)
            sends: list[tuple[Any, bytes | None, bytes | None, int | None]] = []
            forgets: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for ident in work["identifiers"]:
                forgets[partition_for(ident, n)].append(shards.forget_message(ident, work["erased_identifiers"]))
            sends += [(graph_topic, None, graph_agent.encode_batch(msgs), dest) for dest, msgs in forgets.items()]
            if work["persons"]:
                sends.append((ops_topic, None, avro.encode(avro.PERSON_BATCH, erase_ops(
                    work["request_id"], part, work["persons"])), part))
            await deliver(sends)
            for erase in p.erasers:
                erase(part, work)
            metrics.ERASED.labels("identifiers").inc(len(work["identifiers"]))
            metrics.ERASED.labels("persons").inc(len(work["persons"]))
