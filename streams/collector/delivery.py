"""Producing to Kafka and awaiting its acknowledgements on the asyncio loop.

A confluent-kafka producer (acks=all) is served by a poll thread; each
record's delivery callback resolves an asyncio future through
``loop.call_soon_threadsafe``. ``send`` returns once Kafka accepted every
record, or raises ``DeliveryFailed`` when any failed or none came back in
time (``message.timeout.ms`` = the delivery timeout). The collector answers
only then, so a 200 means the events are on Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaException

from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every record: the client should retry the batch."""


class Delivery:
    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.collector_delivery_timeout_s
        self._producer = clients.producer(settings, **{
            "linger.ms": 2,  # a request waits on its own records: keep batching short
            "message.timeout.ms": max(1, int(self.timeout_s * 1000)),
        })
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="collector-kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def send(self, records: list[tuple[str, bytes, bytes]]) -> None:
        """Produce (topic, key, value) records; return when Kafka acknowledged all of them."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []

        def settle(fut: asyncio.Future[Any], err: Any) -> None:
            if not fut.done():
                fut.set_result(err)

        for topic, key, value in records:
            fut: asyncio.Future[Any] = loop.create_future()

            def on_delivery(err: Any, _msg: Any, fut: asyncio.Future[Any] = fut) -> None:
                try:
                    loop.call_soon_threadsafe(settle, fut, err)
                except RuntimeError:  # the loop closed during shutdown: nobody is waiting
                    pass

            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            except BufferError:
                raise DeliveryFailed("the producer queue is full") from None
            except KafkaException as exc:
                raise DeliveryFailed(f"produce failed: {exc}") from None
            futures.append(fut)
        try:
            # librdkafka fails each record after message.timeout.ms; this is only a backstop.
            errors = await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s + 5.0)
        except TimeoutError:
            raise DeliveryFailed(f"no acknowledgement from Kafka within {self.timeout_s:g} s") from None
        failed = [e for e in errors if e is not None]
        if failed:
            raise DeliveryFailed(f"{len(failed)} of {len(errors)} record(s) not delivered: {failed[0]}")

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush what is still in flight, stop polling; returns records left undelivered."""
        self._stop.set()
        self._thread.join()
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("collector: %d record(s) still undelivered at shutdown", left)
        return int(left)
