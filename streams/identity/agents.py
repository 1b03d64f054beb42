"""Identity agent: resolve each ingested touchpoint to a person (thin shell)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from streams import avro, metrics, streamtime
from streams.identity import graph_agent
from streams.identity.dedup import Dedup
from streams.identity.links import Merge, Resolution, resolve
from streams.pipeline import HeldWrites, Pipeline
from streams.reference.enrich import enrich
from streams.topics import (
    ENRICHED,
    IDENTITY_CHANGES,
    IDENTITY_WORK,
    INGESTED,
    PERSON_OPS,
    partition_for,
)


def register(p: Pipeline) -> None:
    links = p.table("identity-links", persons="identity")  # keyed by route key
    # Per identity partition: latest stream time heard from each raw partition.
    clocks = p.table("identity-clocks", partition_of=int)
    # One entry per ingested batch: the event ids it introduced (streams/identity/dedup.py).
    seen = p.table("identity-dedup", partition_of=lambda key: int(str(key).split("|", 1)[0]))
    n = p.settings.partitions
    dedup = Dedup(int(p.settings.dedup_window_s * 1000), p.settings.dedup_max_ids)

    p.on_revoked(dedup.forget)

    def erase(part: int, work: dict[str, Any]) -> None:
        """An erasure: the route links of the identifiers homed here, and the recorded decisions
        naming any of the request's persons."""
        for ident in work["identifiers"]:
            if ident in links:
                del links[ident]
        if not dedup.loaded(part):
            dedup.load(part, seen.items())
        for key, value in dedup.scrub(part, set(work["erased_persons"])):
            seen[key] = value

    p.erasers.append(erase)
    enriched_topic, changes_topic = p.topic(ENRICHED), p.topic(IDENTITY_CHANGES)
    ops_topic, graph_topic = p.topic(PERSON_OPS), p.topic(IDENTITY_WORK)
    rules = p.settings.identity_rules()
    reference = p.reference
    clock = p.clock
    processing = metrics.EVENT_PROCESSING_SECONDS.labels("identity")
    timer = metrics.StageTimer("identity")

    @p.app.agent(p.topic(INGESTED), name="identity")
    async def identity(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.INGESTED_BATCH, event.value)
            by_person_part: dict[int, list[dict[str, Any]]] = defaultdict(list)
            now_ms = clock.now_ms()  # observation only: when it was processed
            watermark, moved = streamtime.advance_at(clocks, part, batch["raw_times"], n, event.message.offset)
            if not dedup.loaded(part):  # first batch since start or reassignment
                dedup.load(part, seen.items())
            items = batch["events"]
            admitted = dedup.admit(
                part, batch["batch_id"], [i["touchpoint"]["event_id"] for i in items],
                [i["touchpoint"]["event_time_ms"] for i in items], watermark,
            )
            for key in admitted.expired:
                seen.pop(key, None)
            kept = []
            for item, keep in zip(items, admitted.keep, strict=True):
                if keep:
                    kept.append(item)
                else:
                    tp = item["touchpoint"]
                    metrics.INGEST_OUTCOMES.labels(tp["channel"], tp["type"], "duplicate", "").inc()
            touchpoints = [i["touchpoint"] if reference is None else enrich(i["touchpoint"], reference)
                           for i in kept]
            replayed = _replay(admitted.effects, len(kept))
            if replayed is None:
                # Decide now, against links buffered in `pending`: the batch's effects reach the
                # changelog before the link changes they rest on (streams/identity/dedup.py).
                pending = HeldWrites(links)
                resolutions = [resolve(tp, item["route_key"], pending) for tp, item in zip(touchpoints, kept, strict=True)]
                merges = [r.merge for r in resolutions if r.merge is not None]
                entry = dedup.record(part, batch["batch_id"], _effects(resolutions))
                if entry is not None:
                    seen[entry[0]] = entry[1]
                pending.flush()
            else:
                resolutions, merges = replayed
            for tp, item, res in zip(touchpoints, kept, resolutions, strict=True):
                enriched = {
                    "person_id": res.person_id, "member_id": res.member_id, "processed_at_ms": now_ms,
                    "raw_partition": item["raw_partition"], "raw_offset": item["raw_offset"], "touchpoint": tp,
                }
                enriched_topic.send_soon(
                    key=res.person_id.encode(), value=avro.encode(avro.ENRICHED, enriched)
                )
                by_person_part[partition_for(res.person_id, n)].append(
                    {"kind": "event", "person_id": res.person_id, "event": enriched,
                     "other_person": None, "absorbed": None}
                )
            for merge in merges:
                _publish_merge(changes_topic, merge)
                by_person_part[partition_for(merge.from_person, n)].append(
                    {"kind": "merge", "person_id": merge.from_person, "event": None,
                     "other_person": merge.into_person, "absorbed": None}
                )
            # The identity graph (streams/identity/graph_agent.py) gets every kept event; a
            # redelivered batch sends them again, which the graph's evidence absorbs unchanged.
            for dest, msgs in sorted(graph_agent.event_messages(touchpoints, rules, n).items()):
                graph_topic.send_soon(value=graph_agent.encode_batch(msgs), partition=dest)
            metrics.observe_many(processing, metrics.event_delays(
                [op for ops in by_person_part.values() for op in ops], now_ms))
            metrics.DUPLICATES.inc(admitted.keep.count(False))
            metrics.DEDUP_IDS.labels(str(part)).set(dedup.size(part))
            if watermark:  # 0: a redelivered batch, whose own time is not known (streamtime.advance_at)
                metrics.STREAM_TIME.labels("identity", str(part)).set(watermark)
            targets = range(n) if moved else sorted(by_person_part)
            for dest in targets:
                out = {
                    "batch_id": f"{batch['batch_id']}/{part}", "source_partition": part,
                    "watermark_ms": watermark, "source_offset": event.message.offset,
                    "ops": by_person_part.get(dest, []),
                }
                ops_topic.send_soon(value=avro.encode(avro.PERSON_BATCH, out), partition=dest)
            timer.stop()


def _effects(resolutions: list[Resolution]) -> dict[str, Any]:
    """A batch's decisions as JSON: each kept event's (person, member) and the merges made."""
    return {
        "p": [[r.person_id, r.member_id] for r in resolutions],
        "m": [[m.from_person, m.into_person, m.route_key, m.member_id, m.event_id, m.event_time_ms]
              for r in resolutions if (m := r.merge) is not None],
    }


def _replay(effects: Any, kept: int) -> tuple[list[Resolution], list[Merge]] | None:
    """The recorded decisions of a redelivered batch, or None to decide now."""
    if not effects or len(effects["p"]) != kept:
        return None
    return [Resolution(p, m) for p, m in effects["p"]], [Merge(*m) for m in effects["m"]]


def _publish_merge(topic: Any, m: Merge) -> None:
    change_id = hashlib.blake2b(f"merge|{m.from_person}|{m.into_person}".encode(), digest_size=16).hexdigest()
    record = {
        "change_id": change_id, "kind": "merge", "from_person": m.from_person,
        "into_person": m.into_person, "reason": "identify event linked route key to member",
        "identifiers": [m.route_key, f"member_id:{m.member_id}"],
        "evidence_event_id": m.event_id, "event_time_ms": m.event_time_ms,
        "into_persons": [m.into_person], "evidence_event_ids": [m.event_id], "resolver": "route",
    }
    topic.send_soon(key=m.into_person.encode(), value=avro.encode(avro.IDENTITY_CHANGE, record))
    metrics.MERGES.inc()
