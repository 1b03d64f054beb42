"""Send simulated traffic to the raw topic, then move Touchline's clock with ticks.

A load generator, so it may sleep to hold a rate. Records keep the order
``traffic.generate`` put them in (per key, Kafka keeps that order too). Clock
ticks go to every raw partition explicitly: under ``TOUCHLINE_CLOCK=manual`` a
tick on a partition is processed only after everything produced to it before,
so once the tick's time is reached downstream, every earlier record was seen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from streams.ingest.control import tick_headers, tick_value
from streams.kafka.clients import producer
from streams.settings import Settings
from streams.simulate.traffic import GroundTruth, Traffic
from streams.topics import RAW

POLL_EVERY = 100
PROGRESS_EVERY = 1000  # records between on_progress calls
FLUSH_TIMEOUT_S = 60.0


class DeliveryError(RuntimeError):
    """The broker did not take some of the records."""


def produce(settings: Settings, traffic: Traffic, rate: float | None = None,
            on_progress: Callable[[int], None] | None = None) -> None:
    """Write every record to the raw topic in order; ``rate`` caps records per second.

    ``on_progress(sent)`` (records handed to the client so far) is called every
    PROGRESS_EVERY records and once at the end. Raises DeliveryError if any record was not delivered. Does not send
    clock ticks: call ``send_clock_ticks`` when the run should move time on.
    """
    topic = RAW.name(settings)
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"partition {msg.partition()}: {err}")

    p = producer(settings)
    started = time.monotonic()
    for sent, rec in enumerate(traffic.records, start=1):
        if rate:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        _send(p, topic, rec.key, rec.value, on_delivery=delivered)
        if sent % POLL_EVERY == 0:
            p.poll(0)  # serve delivery callbacks
        if on_progress and sent % PROGRESS_EVERY == 0:
            on_progress(sent)
    _flush(p, failures)
    if on_progress:
        on_progress(len(traffic.records))


def send_clock_ticks(settings: Settings, t_ms: int) -> int:
    """Send a clock tick at ``t_ms`` to every raw partition; returns how many were sent."""
    topic = RAW.name(settings)
    p = producer(settings)
    meta = p.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise DeliveryError(f"raw topic {topic} not found: {None if meta is None else meta.error}")
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"tick to partition {msg.partition()}: {err}")

    for partition in sorted(meta.partitions):
        _send(p, topic, None, tick_value(t_ms), partition=partition, headers=tick_headers(),
              on_delivery=delivered)
    _flush(p, failures)
    return len(meta.partitions)


def settle_time_ms(settings: Settings, truth: GroundTruth) -> int:
    """A clock-tick time past every cart's due time and every session's timeout: all fire and close."""
    delay_ms = int(settings.cart_abandon_delay_s * 1000)
    return truth.end_time_ms + max(delay_ms, int(settings.session_timeout_s * 1000)) + 1


def write_truth(path: str | Path, truth: GroundTruth) -> None:
    """Write the ground truth as JSON (sorted keys, so runs diff cleanly)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(truth.to_dict(), indent=2, sort_keys=True) + "\n")


def _send(p: Any, topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> None:
    """produce(), waiting for room when librdkafka's local queue is full."""
    while True:
        try:
            p.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            p.poll(0.1)


def _flush(p: Any, failures: list[str]) -> None:
    left = p.flush(FLUSH_TIMEOUT_S)
    if left:
        failures.append(f"{left} records still queued after {FLUSH_TIMEOUT_S:.0f}s")
    if failures:
        raise DeliveryError(f"{len(failures)} delivery failures, first: {failures[0]}")
