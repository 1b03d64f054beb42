"""streams/kafka/faust_flush.py: Faust's producer buffer flush, which the offset commit waits on,
returns with table changelog records still buffered when its sender is slow; the fix drains it."""

from __future__ import annotations

import asyncio
import types

import pytest
from faust.transport.producer import ProducerBuffer

from streams.kafka import faust_flush


class SlowChannel:
    """A topic channel whose hand-over to the client takes longer than Faust's 0.1 s flush wait,
    like a worker whose event loop is busy with a large batch."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    async def publish_message(self, fut: object, wait: bool = False) -> None:
        await asyncio.sleep(0.25)
        self.sent.append(fut)


async def _buffer_with(records: int) -> tuple[ProducerBuffer, SlowChannel]:
    buffer = ProducerBuffer()
    buffer.app = types.SimpleNamespace(conf=types.SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    channel = SlowChannel()
    for _ in range(records):
        buffer.put(types.SimpleNamespace(message=types.SimpleNamespace(channel=channel)))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    return buffer, channel


def test_faust_flush_returns_early_and_the_fix_waits_for_every_record() -> None:
    faust_flush.install()

    async def run() -> tuple[int, int, int]:
        buffer, channel = await _buffer_with(3)
        try:
            await buffer.flush_atmost(None)  # Faust's own loop: gives up after one 0.1 s wait
            early = len(channel.sent)
            await buffer.flush()  # installed: Faust's commit path calls this
            return early, len(channel.sent), buffer.size + faust_flush.in_flight(buffer)
        finally:
            await buffer.stop()

    early, sent, left = asyncio.run(run())
    assert early < 3  # the defect the fix is for: records still buffered after Faust's flush
    assert (sent, left) == (3, 0)


def test_flushing_a_stopped_buffer_with_records_left_raises() -> None:
    faust_flush.install()

    async def run() -> None:
        buffer, _ = await _buffer_with(0)
        await buffer.stop()
        buffer.pending.put_nowait(object())
        await faust_flush.flush_buffer(buffer)

    with pytest.raises(RuntimeError, match="not Running"):
        asyncio.run(run())
