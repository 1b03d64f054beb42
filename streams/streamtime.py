"""Stream time across stages (pure).

Each stage remembers, per input partition, the latest time every upstream
partition reported, and its stream time is the minimum over all upstream
partitions: a fast partition cannot move time past events a slow one has
not delivered yet. The identity stage hears raw partitions through the
ingest batches; the triggers stage hears identity partitions through the
person batches.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping


def advance(
    clocks: MutableMapping[str, dict[str, int]], partition: int, reports: Mapping[str, int], upstream: int,
) -> tuple[int, bool]:
    """Apply upstream reports heard on ``partition``; return (stream time, whether it moved).

    ``clocks`` is the stage's table (partition -> {upstream partition: time});
    it is written only when some upstream time moved.
    """
    heard = dict(clocks.get(str(partition)) or {})
    moved = False
    for source, t in reports.items():
        if t > heard.get(source, 0):
            heard[source] = t
            moved = True
    if moved:
        clocks[str(partition)] = heard
    return min(heard.get(str(u), 0) for u in range(upstream)), moved
