"""Faust resumes a partition with no committed offset from where a fetch left it; make it restart.

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
"""

from __future__ import annotations

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


def install() -> None:
    """Make Faust's aiokafka consumer thread use ``seek_to_committed_or_start`` (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        consumer = self._ensure_consumer()
        return await self.call_thread(seek_to_committed_or_start, consumer)

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
    _INSTALLED = True
