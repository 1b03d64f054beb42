"""Triggers agent: the trigger definitions run by the engine (streams/triggers/engine.py) on stream time.

A thin shell around the pure parts: ``person`` (the table entry) over
``engine``. The definitions are loaded when the worker starts (the built-in
ones and ``TOUCHLINE_TRIGGERS_DIR``'s); an invalid file stops it with the
loader's ``file:line`` messages. Per ``internal.featured`` batch, at the
batch's stream time (``trigger-clocks``):

1. the snapshots the features agent published after the batch (its
   ``features`` ops) become the persons' latest features, so conditions read
   the features as they are after the batch's events;
2. each event op is an engine step (a batch this person's entry has applied
   before is skipped, streams/redelivery.py), then each snapshot is one (the
   rules started by features);
3. a merge op hands the merged-away person's entry to the survivor's
   partition as a ``trigger_state`` op on ``internal.featured``, where
   ``engine.merge_states`` folds it in (its pending waits fire for the survivor);
4. one clock advance for every person the batch touched and every person
   whose next wait or deferred decision is due (``streamtime.DueIndex`` over
   ``engine.next_due``), or, when a rule changes with time alone, whose next
   recheck is (``engine.next_recheck``: every person with features, once per
   UTC day of stream time).

Payloads may call ``recommend(category)``: the products to recommend at the
batch's stream time (streams/triggers/recommend.py) from the product catalog
(``p.reference``), the sales summaries every worker reads (``p.sales``,
streams/triggers/sales_agent.py) and the products the person ordered (the
entry's ``bought``, noted from each event op before its step).

Final decisions (fire, holdout, suppressed) are published on triggers.fired,
one record per trigger id; a decision deferred by quiet hours stays in the
state and is published when decided again. Outputs first: moves and records
reach the broker before the table entries that record them as done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from typing import Any

from streams import avro, metrics, redelivery, streamtime
from streams.pipeline import PersonEntries, Pipeline, deliver
from streams.topics import FEATURED, TRIGGERS
from streams.triggers import cart_abandon, delivery, engine, person
from streams.triggers.recommend import recommend
from streams.triggers.vocabulary import calendar_now


def register(p: Pipeline) -> None:
    definitions = p.settings.trigger_definitions()  # DefinitionError: the worker does not start
    kept = person.kept_keys(definitions.values())  # what entries keep of each features snapshot
    table = p.table("trigger-pending", persons="triggers")  # keyed by person id: person.Entry
    clocks = p.table("trigger-clocks", partition_of=int)
    policy = delivery.Policy()
    wait_ms = {cart_abandon.RULE: int(p.settings.cart_abandon_delay_s * 1000)}  # read only for a defined rule
    processing = metrics.EVENT_PROCESSING_SECONDS.labels("triggers")
    # Series exist from the start (at 0), so the first trigger shows in rate() and increase(): the
    # counters of every rule, the latency of the rules with a wait (decided when stream time reaches
    # their due time; a histogram no rule observes would only draw NaN quantiles on the dashboards).
    for rule, d in definitions.items():
        metrics.TRIGGERS_FIRED.labels(rule)
        if d.wait is not None:
            metrics.TRIGGER_LATENCY_SECONDS.labels(rule)
    timer = metrics.StageTimer("triggers")
    n = p.settings.partitions
    featured_topic, triggers_topic = p.topic(FEATURED), p.topic(TRIGGERS)
    # which persons to look at when time moves: those with a wait or a deferred decision, by when, and
    # when a rule changes with time alone (win back: days since the last order), everyone with features
    # at each recheck (engine.next_recheck: UTC midnights of stream time)
    recheck = any(not d.events and d.changes_with_time for d in definitions.values())
    index = streamtime.DueIndex(table, lambda entry: person.next_due(entry, recheck))
    p.on_revoked(index.forget)

    def recommender(now_ms: int) -> person.Recommender:
        """``recommend(category)`` at the batch's stream time, over the catalog and the sales summaries
        this worker holds (read once per batch, when a payload first asks)."""
        held: list[list[dict[str, Any]]] = []

        def products_for(category: str, bought: Collection[str]) -> list[str]:
            if not held:
                held.append(p.reference.all("products") if p.reference is not None else [])
                held.append(p.sales.summaries() if p.sales is not None else [])
            return recommend(category, now_ms, held[0], held[1], bought, p.settings.recommend_days,
                             p.settings.recommend_count)
        return products_for

    def stepper(now_ms: int, decisions: list[dict[str, Any]]) -> Callable[[person.Entry, engine.Input], None]:
        """One engine step on a person's entry at the batch's stream time; its decisions go to ``decisions``."""
        campaigns = p.reference.all("calendar") if p.reference is not None else []
        cal = calendar_now(campaigns, now_ms)
        products_for = recommender(now_ms)
        store_of = person.city_stores(p.reference.all("stores"), now_ms) if p.reference is not None else None

        def step(entry: person.Entry, input: engine.Input) -> None:
            ctx = person.context(entry, policy, cal, wait_ms, products_for, store_of)
            decisions.extend(engine.step(entry["engine"], definitions, input, now_ms, ctx)[1])
        return step

    @p.app.agent(featured_topic, name="triggers")
    async def triggers(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)
            stream_time = streamtime.advance_person_batch(clocks, part, batch, n)
            metrics.STREAM_TIME.labels("triggers", str(part)).set(stream_time)
            entries = PersonEntries(table, part, n, person.empty)
            decisions: list[dict[str, Any]] = []
            step = stepper(stream_time, decisions)
            snapshots = _apply(batch, entries, policy, step, kept)
            gone = entries.gone
            for snapshot_entry, snapshot in snapshots:
                step(snapshot_entry, snapshot)
            index.hold_due(part, stream_time, entries, gone)
            for who, entry in entries.items():
                step(entry, None)  # the clock advance: due waits and deferred decisions are decided
                index.update(part, who, entry)

            sends: list[tuple[Any, bytes | None, bytes | None, int | None]] = [
                (featured_topic, None, avro.encode(avro.PERSON_BATCH, moved), dest)
                for dest, moved in entries.move_batches(batch, "trigger-move")
            ]
            published = [person.trigger_record(d) for d in decisions if d["outcome"] in person.PUBLISHED]
            sends += [(triggers_topic, r["person_id"].encode(), avro.encode(avro.TRIGGER, r), None)
                      for r in published]
            # Moves and records first: a person merged away leaves the table only once the broker
            # holds its state for the survivor, and a decision is remembered only once published.
            await timer.outside(deliver(sends))
            for who in gone:
                index.drop(part, who)
            entries.flush(removed=gone)
            _count(decisions, published)
            metrics.observe_many(processing, metrics.event_delays(batch["ops"], int(time.time() * 1000)))
            timer.stop()


def _apply(
    batch: dict[str, Any], entries: PersonEntries, policy: delivery.Policy,
    step: Callable[[person.Entry, engine.Input], None], kept: person.Kept = person.EVERYTHING,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Apply one batch's ops to ``entries``: features, events (``step``), merges and handed-over states
    (persons merged away and their trigger_state ops end in ``entries.gone`` and ``entries.moves``).
    Returns the (entry, snapshot) pairs still to step (after every event of the batch)."""
    snapshots: list[tuple[dict[str, Any], dict[str, Any]]] = []
    claims = redelivery.Claims(batch)  # a redelivered batch is skipped person by person
    # The features after the batch first: events of the batch are judged on them.
    for op in batch["ops"]:
        if op["kind"] == "features" and op.get("features"):
            entry = entries.entry_of(op["person_id"])
            if claims.new(op["person_id"], entry):
                snapshot = json.loads(op["features"])
                person.keep_features(entry, snapshot, kept)
                snapshots.append((entry, snapshot))
    for op in batch["ops"]:
        who = op["person_id"]
        if op["kind"] == "event":
            entry = entries.entry_of(who)
            if claims.new(who, entry):
                person.note_handles(entry, op["event"])
                person.note_bought(entry, op["event"])
                step(entry, op["event"])
        elif op["kind"] == "merge":
            entries.leave(op, "trigger_state", person.handed_over)
        elif op["kind"] == "erase":  # pending waits and remembered decisions go, nothing is decided
            entries.erase(who)
        elif op["kind"] == "trigger_state" and op.get("absorbed_state"):
            person.absorb(entries.entry_of(who), op["other_person"], json.loads(op["absorbed_state"]), policy)
    return snapshots


def _count(decisions: list[dict[str, Any]], published: list[dict[str, Any]]) -> None:
    for d in decisions:
        metrics.TRIGGER_DECISIONS.labels(d["rule"], d["outcome"], d["reason"] or "").inc()
    now_ms = int(time.time() * 1000)
    for r in published:
        metrics.TRIGGERS_FIRED.labels(r["rule"]).inc()
        # Due time to publication, by the wall clock: with TOUCHLINE_CLOCK=wall this is how late
        # the decision went out (allowed lateness included); under a manual clock it means nothing.
        metrics.TRIGGER_LATENCY_SECONDS.labels(r["rule"]).observe(max(0, now_ms - r["due_at_ms"]) / 1000)
