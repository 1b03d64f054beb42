"""Two fixes to how Faust's aiokafka consumer finds its place, installed by ``install()``.

First, a partition with no committed offset.

After every rebalance Faust pauses the agents' partitions, recovers the
tables, then "seeks stream partitions to committed offsets" and resumes.
Records aiokafka fetched for a partition in between are not handed to the
agents (the partition is not active yet) but the fetch position has moved past
them; the seek back to the committed offset is what makes them read again.
aiokafka's ``seek_to_committed`` seeks only when the committed offset is a
positive number, so a partition whose group never committed (no worker
finished a commit interval on it before it moved, e.g. when a worker is killed
in its first seconds) keeps the advanced position and its first records are
never processed. Touchline's workers read from the earliest offset when
nothing is committed (``consumer_auto_offset_reset="earliest"``), so such
partitions are sought to their beginning here, the position a fresh consumer
of the group would start from.

Known upstream as faust-streaming issues #216 and #221 (records skipped around
rebalances); ``tests/test_pipeline_e2e.py`` reproduces the skip on the
embedded broker.

Second, table recovery. Faust reads a changelog partition until the offset
before its high watermark, then pauses it; records it fetched beyond that
point are never applied (and are skipped by the next recovery). The embedded
broker reports the high watermark as the first offset of the partition's last
record batch plus one, so a new owner of a partition recovered its table
without the tail of the last changelog batch: state written moments before a
worker was killed came back stale. ``exact_end_offsets`` reads from the
reported end minus one, which returns that whole last batch, and reports the
offset after its last record; on a broker that reports the true end the
answer is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

_INSTALLED = False


async def seek_to_committed_or_start(consumer: Any) -> Mapping[Any, int | None]:
    """Seek each assigned partition of an AIOKafkaConsumer to its committed offset, or to its
    beginning when the group committed none (or 0); return the committed offsets."""
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return committed


async def exact_end_offsets(consumer: Any, partitions: list[Any], wait_s: float = 5.0) -> dict[Any, int]:
    """End offsets (the offset after the last record) of ``partitions``, exact even where the
    broker under-reports them; ``consumer`` is a started AIOKafkaConsumer (only asked, never moved)."""
    from aiokafka import AIOKafkaConsumer

    reported: dict[Any, int] = dict(await consumer.end_offsets(partitions))
    nonempty = [tp for tp, end in reported.items() if end and end > 0]
    if not nonempty:
        return reported
    reader = AIOKafkaConsumer(bootstrap_servers=consumer._client._bootstrap_servers,
                              enable_auto_commit=False, group_id=None)
    await reader.start()
    try:
        reader.assign(nonempty)
        for tp in nonempty:
            reader.seek(tp, reported[tp] - 1)
        exact = dict(reported)
        seen: set[Any] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while len(seen) < len(nonempty) and loop.time() < deadline:
            for tp, records in (await reader.getmany(*nonempty, timeout_ms=200)).items():
                if records:
                    seen.add(tp)
                    exact[tp] = max(exact[tp], records[-1].offset + 1)
        return exact
    finally:
        await reader.stop()


def install() -> None:
    """Make Faust's aiokafka consumer thread seek with ``seek_to_committed_or_start`` and measure
    changelog ends with ``exact_end_offsets`` (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        consumer = self._ensure_consumer()
        return await self.call_thread(seek_to_committed_or_start, consumer)

    async def _highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        if self.consumer.in_transaction:
            return {tp: consumer.last_stable_offset(tp) for tp in partitions}
        return await exact_end_offsets(consumer, list(partitions))

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign,assignment]
    _INSTALLED = True
