"""The suppression list as ingest reads it: ``privacy.erasures`` from the start, kept up to date.

``refresh()`` reads the topic up to its end as of the call, so a slice ingest
processes after an erasure's ``suppress`` record was acknowledged by the broker
drops that person's events: ``touchline erase`` relies on it to know that,
once ingest has committed past the raw offsets it saw after suppressing, no
event of the person can still enter the pipeline.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streams import avro
from streams.kafka import clients
from streams.privacy.core import Suppressions
from streams.settings import Settings
from streams.topics import PRIVACY_ERASURES

log = logging.getLogger(__name__)


class SuppressionFeed:
    def __init__(self, settings: Settings, suppressions: Suppressions) -> None:
        self.suppressions = suppressions
        self.topic = PRIVACY_ERASURES.name(settings)
        self.position = 0  # next offset to read
        # assigned, never joined, never committed
        self.consumer = clients.consumer(settings, f"{settings.group('suppressions')}-{uuid.uuid4().hex[:8]}")
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    def refresh(self, timeout_s: float = 10.0) -> None:
        """Read every record written before this call. Raises if the broker cannot say where the
        topic ends: ingest must not pass events on while it cannot tell whether they are erased."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=timeout_s,
                                                          cached=False)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return  # no erasure ever requested on a deployment without the topic
            raise
        deadline = time.monotonic() + timeout_s
        while self.position < high:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: read to {self.position}, end {high}")
            for m in self.consumer.consume(1000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: %s", self.topic, err)
                    continue
                self.position = max(self.position, m.offset() + 1)  # type: ignore[operator]
                if m.value():
                    self.suppressions.add(avro.decode_as(avro.ERASURE, m.value()))  # type: ignore[arg-type]

    def close(self) -> None:
        self.consumer.close()
