"""Duplicate event ids, dropped within a window of stream time (pure).

Producers retry and collectors re-send, so the same event id can reach the
raw topic several times. The identity stage keeps, per identity partition,
which event ids it has seen and in which ingested batch they first came.

Durability without a per-event write: the state is persisted as one table
entry per ingested batch (key ``<partition>|<batch id>``, value: the batch's
newest event time and the ids it introduced), so the changelog costs one
record per batch. After a crash or rebalance the partition's entries are
loaded back from the recovered table (``load``).

Redelivery of the *same* batch (the worker died before committing it) is not
a duplicate: its events are sent on again. An id is a duplicate only when an
earlier, different batch introduced it, so a crash can never turn an event
into a dropped "duplicate" whose outputs were never sent.

The entry also records the batch's *effects* (what the stage decided for it:
each event's person, the merges it made), written before the state those
decisions changed. A redelivered batch replays the recorded effects instead
of deciding again against state that already moved on, so its outputs are
the same records as the first time and downstream stages, which drop what
they already applied, count nothing twice.

Bounded: entries expire once their newest event time falls more than the
window behind stream time, and the oldest batches go first when a partition
holds more than ``max_ids`` ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def entry_key(partition: int, batch_id: str) -> str:
    return f"{partition}|{batch_id}"


@dataclass
class _Batch:
    t: int  # newest event time of the ids it introduced
    ids: list[str]  # event ids it introduced
    effects: Any = None  # what the stage decided for it (JSON), once recorded


@dataclass
class _Partition:
    first_batch: dict[str, str] = field(default_factory=dict)  # event id -> batch that introduced it
    batches: OrderedDict[str, _Batch] = field(default_factory=OrderedDict)  # in arrival order


@dataclass(frozen=True)
class Admitted:
    keep: list[bool]  # per event of the batch: False for a duplicate
    expired: list[str]  # table keys to delete
    effects: Any = None  # a redelivered batch: the effects recorded the first time (None: decide now)


class Dedup:
    def __init__(self, window_ms: int, max_ids: int) -> None:
        self.window_ms = window_ms
        self.max_ids = max_ids
        self._parts: dict[int, _Partition] = {}

    def loaded(self, partition: int) -> bool:
        return partition in self._parts

    def forget(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def load(self, partition: int, entries: Iterable[tuple[str, Any]]) -> None:
        """Rebuild a partition's index from its persisted table entries."""
        part = _Partition()
        prefix = f"{partition}|"
        rows = sorted(((k, v) for k, v in entries if k.startswith(prefix) and v), key=lambda kv: (kv[1]["t"], kv[0]))
        for key, value in rows:
            batch_id = key[len(prefix):]
            part.batches[batch_id] = _Batch(value["t"], list(value["ids"]), value.get("fx"))
            for event_id in value["ids"]:
                part.first_batch.setdefault(event_id, batch_id)
        self._parts[partition] = part

    def size(self, partition: int) -> int:
        part = self._parts.get(partition)
        return 0 if part is None else len(part.first_batch)

    def admit(self, partition: int, batch_id: str, event_ids: Sequence[str], event_times: Sequence[int],
              watermark_ms: int) -> Admitted:
        part = self._parts.setdefault(partition, _Partition())
        keep: list[bool] = []
        new_ids: list[str] = []
        newest = 0
        here: set[str] = set()
        for event_id, t in zip(event_ids, event_times, strict=True):
            if event_id in here:  # twice in one batch
                keep.append(False)
                continue
            here.add(event_id)
            first = part.first_batch.get(event_id)
            if first is None:
                part.first_batch[event_id] = batch_id
                new_ids.append(event_id)
                newest = max(newest, t)
            # Seen before: a duplicate unless this very batch introduced it (redelivery after a crash).
            keep.append(first is None or first == batch_id)
        known = part.batches.get(batch_id)
        effects = None if known is None else known.effects
        if new_ids:
            old = part.batches.pop(batch_id, None) or _Batch(0, [])
            part.batches[batch_id] = _Batch(max(old.t, newest), old.ids + new_ids)
        return Admitted(keep, self._expire(partition, part, watermark_ms), effects)

    def record(self, partition: int, batch_id: str, effects: Any) -> tuple[str, dict[str, Any]] | None:
        """Remember what the stage decided for an admitted batch; return the table entry to
        write (before the state those decisions changed), or None when the batch introduced
        no ids or its effects are recorded already (a redelivery)."""
        batch = self._parts[partition].batches.get(batch_id)
        if batch is None or batch.effects is not None:
            return None
        batch.effects = effects
        return entry_key(partition, batch_id), {"t": batch.t, "ids": batch.ids, "fx": effects}

    def scrub(self, partition: int, persons: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """Erasure (streams/privacy/agent.py): forget the recorded effects of every batch whose
        decisions name one of ``persons`` (they hold person ids, member ids and route keys); return
        the table entries to write. Event ids and times stay: they name nobody, and they keep
        repeats out. A batch redelivered later decides again instead of replaying."""
        out = []
        for batch_id, batch in self._parts.get(partition, _Partition()).batches.items():
            if batch.effects is not None and _names(batch.effects, persons):
                batch.effects = None
                out.append((entry_key(partition, batch_id), {"t": batch.t, "ids": batch.ids, "fx": None}))
        return out

    def _expire(self, partition: int, part: _Partition, watermark_ms: int) -> list[str]:
        expired = []
        horizon = watermark_ms - self.window_ms
        while part.batches:
            batch_id, batch = next(iter(part.batches.items()))
            if batch.t >= horizon and len(part.first_batch) <= self.max_ids:
                break
            part.batches.popitem(last=False)
            for event_id in batch.ids:
                if part.first_batch.get(event_id) == batch_id:
                    del part.first_batch[event_id]
            expired.append(entry_key(partition, batch_id))
        return expired



def _names(effects: Any, persons: set[str]) -> bool:
    """Whether recorded effects (streams/identity/agents.py ``_effects``) name one of ``persons``."""
    return any(p in persons for p, _ in effects.get("p", ())) or \
        any(m[0] in persons or m[1] in persons for m in effects.get("m", ()))
