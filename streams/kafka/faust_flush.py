"""A fix to Faust's producer buffer flush before an offset commit, installed by ``install()``.

Faust writes every table change to its changelog with ``send_soon``: the record
waits in the producer's buffer until the buffer's sender task hands it to
aiokafka. Before committing the agents' offsets Faust flushes the producer, so
that the state a batch wrote is on the broker before the batch counts as done.
But the buffer's ``flush`` waits at most 0.1 s for the sender to send one more
record and *returns* when that wait times out, records still buffered. On a
busy worker (an agent holding the event loop for longer than that while it
works on a large batch) the commit then goes ahead with table writes still in
memory; killed right after, the worker's batch is never redelivered and its
state changes are gone (seen as a SIGKILL scenario of ``make faults`` where two
persons' features lacked some of their events).

Also, the buffer's size counts only the records still queued: the one its
sender has taken and is handing to aiokafka is in neither count, so even an
empty buffer could still hold back the last record of a batch for a moment.

``flush_buffer`` drains the buffer completely: it keeps waiting while records
are queued or being handed over and the producer runs, and raises, like
Faust's own flush, if the producer has stopped with records left.
"""

from __future__ import annotations

import asyncio
from typing import Any

WAIT_S = 0.1  # how long one wait for the sender lasts before the buffer is looked at again

_INSTALLED = False


def in_flight(buffer: Any) -> int:
    """Records the buffer's sender has taken from its queue and not yet handed to the client."""
    return int(getattr(buffer, "_touchline_in_flight", 0))


async def flush_buffer(buffer: Any) -> None:
    """Return once Faust's ProducerBuffer ``buffer`` holds no record, queued or being handed over."""
    while buffer.size or in_flight(buffer):
        if buffer.state != "running":
            raise RuntimeError("Cannot flush: Producer not Running")
        buffer.message_sent.clear()
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=WAIT_S)
        except TimeoutError:
            continue


def install() -> None:
    """Make Faust's ProducerBuffer.flush drain the buffer completely (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.producer import ProducerBuffer

    send_pending = ProducerBuffer._send_pending

    async def _send_pending(self: Any, fut: Any) -> None:
        self._touchline_in_flight = in_flight(self) + 1
        try:
            await send_pending(self, fut)
        finally:
            self._touchline_in_flight -= 1

    async def flush(self: Any) -> None:
        await flush_buffer(self)

    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]
    _INSTALLED = True
