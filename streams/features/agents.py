"""Features agent: each person's profile (streams/features/profile.py), merges, published snapshots.

A thin shell around the pure parts: ``member`` (the table entry, absorb and the
publishing rule) over ``profile``. Per batch of person ops it applies events
(a batch this person's entry has applied before is skipped, streams/redelivery.py),
hands a merged-away person's entry to the survivor's partition as an absorb op,
folds absorbs in with ``profile.merge``, and takes snapshots at the batch's
stream time (``feature-clocks``, the minimum over identity partitions of their
watermarks, as sessions and triggers do). Persons whose next lifecycle boundary
stream time has reached get a snapshot too, so ``at_risk`` and ``lapsed`` are
published without a new event. Snapshots carry P(alive) and expected purchases for
the BG/NBD parameters of TOUCHLINE_PURCHASE_MODEL_PARAMS as loaded when the batch
is processed (streams/features/purchase_model.py: looked at again on the worker's
clock, so a refit is picked up without a restart), and the person's city store from
the store reference table as this worker holds it when the batch is processed
(``p.reference``; a store opening reaches a person with their next snapshot). After a
refit, persons with an order whose published outlook is of older parameters are swept
into the following batches (member.RefitSweep) and published again.

The batch goes on to internal.featured (sessions, triggers) with the snapshots
published after it appended as ``features`` ops.

Outputs first: absorb ops, snapshots and tombstones reach the broker before the
table entries that record them as done, so a crash can lose only the entry writes
and the redelivered batch produces the same records again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from streams import avro, metrics, redelivery, streamtime
from streams.features import member, profile
from streams.features.config import FeatureSettings
from streams.pipeline import PersonEntries, Pipeline, deliver
from streams.topics import FEATURED, MEMBER_FEATURES, PERSON_OPS


def register(p: Pipeline) -> None:
    table = p.table("member-features", persons="features")  # keyed by person id
    clocks = p.table("feature-clocks", partition_of=int)
    cfg = p.settings.feature_settings()
    purchase_model = p.settings.purchase_model(p.clock)  # re-read when a refit replaces the file
    processing = metrics.EVENT_PROCESSING_SECONDS.labels("features")
    timer = metrics.StageTimer("features")
    n = p.settings.partitions
    ops_topic, featured_topic = p.topic(PERSON_OPS), p.topic(FEATURED)
    snapshots_topic = p.topic(MEMBER_FEATURES)
    # which persons to look at when time moves: those with a lifecycle boundary ahead, by when
    index = streamtime.DueIndex(table, lambda entry: member.next_due(entry, cfg))
    p.on_revoked(index.forget)
    # after a refit, the persons whose published purchase outlook is of older parameters
    sweep = member.RefitSweep(table)
    p.on_revoked(sweep.forget)

    @p.app.agent(ops_topic, name="features")
    async def features(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)
            stream_time = streamtime.advance_person_batch(clocks, part, batch, n)
            metrics.STREAM_TIME.labels("features", str(part)).set(stream_time)
            entries = PersonEntries(table, part, n, member.empty)
            _apply(batch, entries, cfg)
            gone = entries.gone
            index.hold_due(part, stream_time, entries, gone)
            model = purchase_model.params()
            metrics.REFIT_SWEPT.inc(len(sweep.hold(part, member.model_mark(model), entries, gone)))
            sends: list[tuple[Any, bytes | None, bytes | None, int | None]] = [
                (ops_topic, None, avro.encode(avro.PERSON_BATCH, moved), dest)
                for dest, moved in entries.move_batches(batch, "move")
            ]
            sends += [(snapshots_topic, person.encode(), None, None) for person in gone]
            snapshots: list[dict[str, Any]] = []
            stores = p.reference.all("stores") if p.reference is not None else []
            for person, entry in entries.items():
                rec = member.refresh(entry, stream_time, cfg, model, stores)
                if rec is not None:
                    snapshots.append(rec)
                    sends.append((snapshots_topic, person.encode(), avro.encode(avro.MEMBER_FEATURES, rec), None))
                index.update(part, person, entry)
            # Moves and snapshots first: a person merged away leaves the table only once the broker
            # holds its state for the survivor, and an entry records a snapshot as published only
            # once the broker holds it.
            await timer.outside(deliver(sends))
            for person in gone:
                index.drop(part, person)
            entries.flush(removed=gone)
            metrics.FEATURE_UPDATES.inc(len(snapshots))
            featured_topic.send_soon(value=_featured(event.value, batch, snapshots), partition=part)
            metrics.observe_many(processing, metrics.event_delays(batch["ops"], int(time.time() * 1000)))
            timer.stop()


def _featured(raw: bytes, batch: dict[str, Any], snapshots: list[dict[str, Any]]) -> bytes:
    """The batch for the stages after features (internal.featured): its ops, absorbs without the
    feature state they carried (no later stage reads it), then one ``features`` op per snapshot
    published after it, so the triggers stage reads each person's features as of this batch.
    ``raw`` is the batch as read: without absorbs its bytes are kept and the snapshots' ops
    appended (``avro.append_items``), not the whole batch encoded again."""
    features = [{"kind": "features", "person_id": rec["person_id"], "event": None, "other_person": None,
                 "absorbed_state": None, "features": json.dumps(rec)} for rec in snapshots]
    if not any(op["kind"] == "absorb" for op in batch["ops"]):
        return avro.append_items(avro.PERSON_BATCH, raw, avro.PERSON_OP, features)
    ops = [{**op, "absorbed_state": None} if op["kind"] == "absorb" else op for op in batch["ops"]]
    return avro.encode(avro.PERSON_BATCH, {**batch, "ops": [*ops, *features]})


def _apply(batch: dict[str, Any], entries: PersonEntries, cfg: FeatureSettings) -> None:
    """Apply one batch of person ops to ``entries`` (persons merged away and their absorb ops end
    in ``entries.gone`` and ``entries.moves``)."""
    claims = redelivery.Claims(batch)  # a redelivered batch is skipped person by person
    for op in batch["ops"]:
        person = op["person_id"]
        if op["kind"] == "event":
            entry = entries.entry_of(person)
            if claims.new(person, entry):
                profile.apply(entry["profile"], op["event"], cfg)
        elif op["kind"] == "merge":
            entries.leave(op, "absorb", member.handed_over)
        elif op["kind"] == "erase":  # its features go, with a tombstone on members.features
            entries.erase(person)
        elif op["kind"] == "absorb" and op.get("absorbed_state"):
            member.absorb(entries.entry_of(person), op["other_person"], json.loads(op["absorbed_state"]), cfg)
