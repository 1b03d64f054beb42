"""streams/kafka/faust_fetch.py: Faust writes a 1.5 s fetch wait into its consumer; the pipeline's
worker consumer takes TOUCHLINE_KAFKA_FETCH_WAIT_MS instead (the embedded broker holds every fetch
for its whole wait, so the wait is latency on every hop: `touchline bench`)."""

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
