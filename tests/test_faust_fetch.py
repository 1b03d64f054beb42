"""Ports and fetch waits of the pipeline's Kafka clients.

streams/kafka/faust_fetch.py: Faust writes a 1.5 s fetch wait into its consumer; the pipeline's
worker consumer takes TOUCHLINE_KAFKA_FETCH_WAIT_MS instead (the embedded broker holds every fetch
for its whole wait, so the wait is latency on every hop: `touchline bench`). free_port: listener
ports from outside the ephemeral range."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.kafka import faust_fetch
from streams.pipeline import create_app
from streams.settings import Settings


@pytest.mark.parametrize("wait_ms", [7, 500])
def test_the_worker_consumer_waits_as_the_setting_says(tmp_path: Path, wait_ms: int) -> None:
    s = Settings().with_overrides(kafka_bootstrap="127.0.0.1:1", kafka_fetch_wait_ms=wait_ms, data_dir=str(tmp_path))
    app = create_app(s)

    async def made() -> tuple[int, str]:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # as Faust makes it at start
        try:
            return consumer._fetch_max_wait_ms, consumer._group_id
        finally:
            await consumer.stop()

    assert asyncio.run(made()) == (wait_ms, app.conf.id)  # Faust's other arguments stand
    assert faust_fetch.installed() == wait_ms


def test_a_negative_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="fetch wait"):
        faust_fetch.install(-1)


def test_free_ports_are_below_the_ephemeral_range_and_not_handed_out_twice() -> None:
    """streams/kafka/broker.py free_port: ports for listeners come from below the range the kernel
    gives outgoing connections, so no connection takes one before its listener binds it."""
    import socket

    from streams.kafka.broker import _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    if low > 12_000:
        assert all(10_000 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free, as promised
