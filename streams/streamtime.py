"""Stream time across stages (pure).

Each stage remembers, per input partition, the latest time every upstream
partition reported, and its stream time is the minimum over all upstream
partitions: a fast partition cannot move time past events a slow one has
not delivered yet. The identity stage hears raw partitions through the
ingest batches; the triggers stage hears identity partitions through the
person batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def advance(
    clocks: MutableMapping[str, dict[str, int]], partition: int, reports: Mapping[str, int], upstream: int,
    stamp: Mapping[str, int] | None = None,
) -> tuple[int, bool]:
    """Apply upstream reports heard on ``partition``; return (stream time, whether it moved).

    ``clocks`` is the stage's table (partition -> {upstream partition: time});
    it is written only when some upstream time moved, together with ``stamp``.
    """
    heard = dict(clocks.get(str(partition)) or {})
    moved = False
    for source, t in reports.items():
        if t > heard.get(source, 0):
            heard[source] = t
            moved = True
    if moved:
        clocks[str(partition)] = {**heard, **stamp} if stamp else heard
    return min(heard.get(str(u), 0) for u in range(upstream)), moved


AT = "@"  # key of a clock entry holding the input offset of the batch that last moved it


def advance_at(
    clocks: MutableMapping[str, dict[str, int]], partition: int, reports: Mapping[str, int], upstream: int,
    offset: int,
) -> tuple[int, bool]:
    """``advance`` for a stage whose stream time must stay right when its input is redelivered
    (identity, after a crash or a takeover). Returns (stream time to announce, whether to tell
    every downstream partition).

    The clock table may already hold times from batches past the one being redelivered (their
    changelog records went out, their offsets were not committed), so the table's time is not
    this batch's time: announcing it would let later stages close sessions and fire timers
    before the redelivered events reach them. So the entry remembers the offset of the batch
    that last moved it: a batch before that one announces nothing (0: it moves no one), that
    very batch announces the time again to everyone (its first broadcast may have been lost
    with the crash), and later batches advance as usual.
    """
    at = (clocks.get(str(partition)) or {}).get(AT, -1)
    if offset < at:
        return 0, False
    t, moved = advance(clocks, partition, reports, upstream, stamp={AT: offset})
    return t, moved or offset == at


def advance_person_batch(
    clocks: MutableMapping[str, dict[str, int]], partition: int, batch: Mapping[str, Any], upstream: int,
) -> int:
    """Stream time after a PersonBatch (stages after identity): its source partition reports its
    watermark; a features-internal move (source_partition -1) carries no time."""
    src = batch["source_partition"]
    reports = {str(src): batch["watermark_ms"]} if src >= 0 else {}
    return advance(clocks, partition, reports, upstream)[0]


class DueIndex:
    """Per partition, the persons whose state has something due on stream time, and when.

    ``table`` maps person -> state (a Faust table; states carry their
    ``partition``); ``next_due(state)`` is the stream time of the state's next
    due item, or None. A partition's index is rebuilt from the table on first
    use (start, reassignment); call ``forget`` when a partition is revoked.
    Per partition it also keeps a lower bound of the due times it holds, so a
    batch before the earliest of them costs no scan of the index.
    """

    def __init__(self, table: Mapping[str, Any], next_due: Callable[[dict[str, Any]], int | None]) -> None:
        self.table = table
        self.next_due = next_due
        self._parts: dict[int, dict[str, int]] = {}
        self._soonest: dict[int, float] = {}  # partition -> at most the earliest due time in its index

    def _of(self, partition: int) -> dict[str, int]:
        idx = self._parts.get(partition)
        if idx is None:
            idx = self._parts[partition] = {}
            self._soonest[partition] = float("inf")
            for person, state in self.table.items():
                if state and state.get("partition") == partition:
                    self._set(partition, idx, person, state)
        return idx

    def _set(self, partition: int, idx: dict[str, int], person: str, state: dict[str, Any]) -> None:
        due = self.next_due(state)
        if due is None:
            idx.pop(person, None)
        else:
            idx[person] = due
            self._soonest[partition] = min(self._soonest[partition], due)

    def update(self, partition: int, person: str, state: dict[str, Any]) -> None:
        """Keep ``person`` in the index exactly while their state has something due."""
        self._set(partition, self._of(partition), person, state)

    def drop(self, partition: int, person: str) -> None:
        self._of(partition).pop(person, None)

    def due(self, partition: int, stream_time_ms: int) -> list[str]:
        """Persons with something due at or before stream time."""
        idx = self._of(partition)
        if stream_time_ms < self._soonest[partition]:
            return []
        self._soonest[partition] = min(idx.values(), default=float("inf"))
        return [p for p, t in idx.items() if t <= stream_time_ms]

    def hold_due(self, partition: int, stream_time_ms: int, held: dict[str, Any], gone: set[str]) -> None:
        """Add to ``held`` (a stage's held writes) the table's state of every person due at stream time
        that it does not hold yet, persons in ``gone`` aside; persons the table no longer has leave the index."""
        for person in self.due(partition, stream_time_ms):
            if person in held or person in gone:
                continue
            current = self.table.get(person)
            if current is None:
                self.drop(partition, person)
            else:
                held[person] = current

    def forget(self, partition: int) -> None:
        self._parts.pop(partition, None)
        self._soonest.pop(partition, None)
