"""The fetch wait of Faust's consumer, made a setting (``install(wait_ms)``).

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` written into
the driver, not read from the app's configuration. A broker that holds every
fetch for its whole wait, as the embedded broker does (it does not answer a
waiting fetch when records arrive), then adds up to 1.5 s to every hop of the
pipeline, 0.75 s on average. ``install`` replaces the wait of every worker
consumer Faust creates from then on in this process with
TOUCHLINE_KAFKA_FETCH_WAIT_MS (Settings.kafka_fetch_wait_ms).
"""

from __future__ import annotations

from typing import Any

_WAIT_MS: list[int] = []  # the installed wait (one per process: the last install wins)


def install(wait_ms: int) -> None:
    """Give every worker consumer Faust creates from now on a fetch wait of ``wait_ms``."""
    if wait_ms < 0:
        raise ValueError(f"fetch wait must be >= 0 ms, got {wait_ms}")
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if not _WAIT_MS:
        create = AIOKafkaConsumerThread._create_worker_consumer

        def _create_worker_consumer(self: Any, transport: Any) -> Any:
            consumer = create(self, transport)
            consumer._fetch_max_wait_ms = _WAIT_MS[0]  # read when the consumer starts its fetcher
            return consumer

        AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    _WAIT_MS[:] = [wait_ms]


def installed() -> int | None:
    """The wait in force (None: Faust's own)."""
    return _WAIT_MS[0] if _WAIT_MS else None
