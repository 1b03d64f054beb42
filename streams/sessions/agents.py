"""Sessions agent: cut each person's events into sessions, close them on stream time.

A thin shell around ``streams.sessions.core``: it reads the same person
batches as the triggers agent (``internal.featured``), keeps open sessions
per person in the ``session-open`` table and its own stream time per
partition in ``session-clocks``, and publishes every closed session to
``sessions``, keyed by person id.
"""

from __future__ import annotations

from typing import Any

from streams import avro, metrics, redelivery, streamtime
from streams.pipeline import Pipeline, deliver
from streams.sessions import core
from streams.topics import FEATURED, SESSIONS


def register(p: Pipeline) -> None:
    table = p.table("session-open")
    clocks = p.table("session-clocks", partition_of=int)
    n = p.settings.partitions
    timeout_ms = int(p.settings.session_timeout_s * 1000)
    timer = metrics.StageTimer("sessions")
    sessions_topic = p.topic(SESSIONS)
    # which persons to look at when time moves: those with an open session, by when it closes
    index = streamtime.DueIndex(table, lambda state: core.next_close(state, timeout_ms))
    p.on_revoked(index.forget)

    @p.app.agent(p.topic(FEATURED), name="sessions")
    async def sessions(stream: Any) -> None:
        async for event in stream.events():
            timer.start()
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)

            # Time first: the batch's events are all applied before any close check,
            # so moving it before or after them changes nothing but merges' closed_at_ms.
            stream_time = streamtime.advance_person_batch(clocks, part, batch, n)
            metrics.STREAM_TIME.labels("sessions", str(part)).set(stream_time)

            touched: dict[str, dict[str, Any]] = {}
            claims = redelivery.Claims(batch)
            closed: list[dict[str, Any]] = []
            erased: set[str] = set()
            for op in batch["ops"]:
                person = op["person_id"]
                if op["kind"] == "event":
                    state = touched.get(person) or table.get(person) or core.empty(person, part)
                    if claims.new(person, state):
                        core.on_event(state, op["event"], timeout_ms)
                        touched[person] = state
                elif op["kind"] == "merge":  # person is merged away: close its sessions now
                    gone = touched.get(person) or table.get(person)
                    if gone is not None and gone["open"]:
                        closed += core.close_all(gone, stream_time)
                        touched[person] = gone
                elif op["kind"] == "erase":  # its open session goes unpublished (streams/privacy/agent.py)
                    touched.pop(person, None)
                    erased.add(person)

            for person in erased:
                index.drop(part, person)
            for person, state in touched.items():
                index.update(part, person, state)
            for person in index.due(part, stream_time):
                current = touched.get(person) or table.get(person)
                if current is None:
                    index.drop(part, person)
                    continue
                closed += core.close_due(current, stream_time, timeout_ms)
                touched[person] = current
                index.update(part, person, current)
            # Closed sessions reach the broker before the states that no longer hold them.
            await timer.outside(deliver([
                (sessions_topic, rec["person_id"].encode(), avro.encode(avro.SESSION, rec), None) for rec in closed]))
            for person in erased:
                if person in table:
                    del table[person]
            for person, state in touched.items():
                table[person] = state
            timer.stop()

