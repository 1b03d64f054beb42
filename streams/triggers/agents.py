"""Triggers agent: arm, cancel and fire cart-abandon timers on stream time."""

from __future__ import annotations

import time
from typing import Any

from streams import avro, metrics, redelivery, streamtime
from streams.pipeline import Pipeline, deliver
from streams.topics import FEATURED, TRIGGERS
from streams.triggers import cart_abandon


def register(p: Pipeline) -> None:
    pending = p.table("trigger-pending", persons="triggers")  # keyed by person id
    clocks = p.table("trigger-clocks", partition_of=int)
    processing = metrics.EVENT_PROCESSING_SECONDS.labels("triggers")
    # Series exist from the start (at 0), so the first trigger shows in rate() and increase().
    metrics.TRIGGERS_FIRED.labels(cart_abandon.RULE)
    metrics.TRIGGER_LATENCY_SECONDS.labels(cart_abandon.RULE)
    timer = metrics.StageTimer("triggers")
    n = p.settings.partitions
    delay_ms = int(p.settings.cart_abandon_delay_s * 1000)
    triggers_topic = p.topic(TRIGGERS)
    # which persons to look at when time moves: those with a pending cart, by earliest due
    index = streamtime.DueIndex(pending, cart_abandon.next_due)
    p.on_revoked(index.forget)

    @p.app.agent(p.topic(FEATURED), name="triggers")
    async def triggers(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)
            touched: dict[str, dict[str, Any]] = {}
            claims = redelivery.Claims(batch)
            fired: list[tuple[Any, bytes, bytes, None]] = []
            for op in batch["ops"]:
                if op["kind"] != "event":
                    continue
                person = op["person_id"]
                state = touched.get(person) or pending.get(person) or cart_abandon.empty(person, part)
                # The claim is kept only with a state worth keeping: carts are replay-safe by
                # themselves (fired carts are remembered), persons without any need no entry.
                if claims.new(person, state) and cart_abandon.on_event(state, op["event"], delay_ms):
                    touched[person] = state

            stream_time = streamtime.advance_person_batch(clocks, part, batch, n)
            metrics.STREAM_TIME.labels("triggers", str(part)).set(stream_time)

            for person, state in touched.items():
                index.update(part, person, state)
            for person in index.due(part, stream_time):
                state = touched.get(person) or pending.get(person)
                if state is None:
                    index.drop(part, person)
                    continue
                for trig in cart_abandon.fire_due(state, stream_time):
                    fired.append((triggers_topic, person.encode(), avro.encode(avro.TRIGGER, trig), None))
                    metrics.TRIGGERS_FIRED.labels(trig["rule"]).inc()
                    # Due time (event time + delay) to publication, by the wall clock: with
                    # TOUCHLINE_CLOCK=wall this is how late the reminder went out
                    # (allowed lateness included); under a manual clock it means nothing.
                    late_ms = int(time.time() * 1000) - trig["due_at_ms"]
                    metrics.TRIGGER_LATENCY_SECONDS.labels(trig["rule"]).observe(max(0, late_ms) / 1000)
                touched[person] = state
                index.update(part, person, state)
            # Fired triggers reach the broker before the states that forget their carts.
            await timer.outside(deliver(fired))
            for person, state in touched.items():
                pending[person] = state
            metrics.observe_many(processing, metrics.event_delays(batch["ops"], int(time.time() * 1000)))
            timer.stop()

