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
a duplicate: its events are processed again and downstream ids are
deterministic. An id is a duplicate only when an earlier, different batch
introduced it, so a crash can never turn an event into a dropped "duplicate"
whose outputs were never sent.

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
class _Partition:
    first_batch: dict[str, str] = field(default_factory=dict)  # event id -> batch that introduced it
    batches: OrderedDict[str, tuple[int, list[str]]] = field(default_factory=OrderedDict)  # in arrival order


@dataclass(frozen=True)
class Admitted:
    keep: list[bool]  # per event of the batch: False for a duplicate
    entry: tuple[str, dict[str, Any]] | None  # table entry to write (None: nothing new)
    expired: list[str]  # table keys to delete


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
            part.batches[batch_id] = (value["t"], list(value["ids"]))
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
        entry = None
        if new_ids:
            t_old, ids_old = part.batches.pop(batch_id, (0, []))
            ids = ids_old + new_ids
            t = max(t_old, newest)
            part.batches[batch_id] = (t, ids)
            entry = (entry_key(partition, batch_id), {"t": t, "ids": ids})
        return Admitted(keep, entry, self._expire(partition, part, watermark_ms))

    def _expire(self, partition: int, part: _Partition, watermark_ms: int) -> list[str]:
        expired = []
        horizon = watermark_ms - self.window_ms
        while part.batches:
            batch_id, (t, ids) = next(iter(part.batches.items()))
            if t >= horizon and len(part.first_batch) <= self.max_ids:
                break
            part.batches.popitem(last=False)
            for event_id in ids:
                if part.first_batch.get(event_id) == batch_id:
                    del part.first_batch[event_id]
            expired.append(entry_key(partition, batch_id))
        return expired

