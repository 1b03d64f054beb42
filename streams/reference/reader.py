"""Reference data outside Faust: a thread that reads the reference topics into ``ReferenceData``.

For processes without a Faust app (the sink, tools, tests) and as the fallback
should ``tables.register`` stop working with a Faust upgrade (see its docstring).
It assigns every partition of the four compacted topics from the beginning,
without a consumer group (nothing is committed), and keeps reading: a later
``touchline load`` shows up within a poll. ``sync()`` waits until everything
that was on the topics when it was called has been applied.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.reference.rows import KINDS
from streams.reference.view import ReferenceData
from streams.settings import Settings


class ReferenceReader:
    def __init__(self, settings: Settings, poll_s: float = 0.1) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self._raw: dict[str, dict[bytes, bytes]] = {k: {} for k in KINDS}
        self.data = ReferenceData(self._raw)
        self._kind_of = {kind.topic.name(settings): name for name, kind in KINDS.items()}
        self._tps = [TopicPartition(kind.topic.name(settings), p, OFFSET_BEGINNING)
                     for kind in KINDS.values() for p in range(kind.topic.partitions(settings))]
        self._stop = threading.Event()
        self._sync_requests: list[tuple[threading.Event, dict[tuple[str, int], int] | None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="reference-reader", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> ReferenceReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> ReferenceReader:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def sync(self, timeout_s: float = 30.0) -> bool:
        """Block until every record on the topics at call time is applied; False on timeout."""
        done = threading.Event()
        with self._lock:
            self._sync_requests.append((done, None))
        ok = done.wait(timeout_s)
        if self.error is not None:
            raise RuntimeError("reference reader died") from self.error
        return ok

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": f"{self.settings.group('reference-reader')}-{uuid.uuid4().hex[:8]}",  # never joined
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": self.settings.kafka_fetch_wait_ms,
        })
        try:
            consumer.assign(self._tps)
            while not self._stop.is_set():
                for msg in consumer.consume(1000, self.poll_s):
                    err = msg.error()
                    if err is not None:
                        if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                            continue
                        raise RuntimeError(f"reading {msg.topic()}: {err}")
                    self._apply(str(msg.topic()), msg.key(), msg.value())
                self._answer_syncs(consumer)
        except BaseException as exc:
            self.error = exc
            with self._lock:
                for done, _ in self._sync_requests:
                    done.set()
        finally:
            consumer.close()

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return  # not a reference record (every loader record has a key)
        raw = self._raw[self._kind_of[topic]]
        if value is None:
            raw.pop(key, None)  # tombstone
        else:
            raw[key] = value

    def _answer_syncs(self, consumer: Consumer) -> None:
        with self._lock:
            requests = list(self._sync_requests)
        if not requests:
            return
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(self._tps)}
        remaining = []
        for done, targets in requests:
            if targets is None:  # first look: the ends of the topics now are the targets
                targets = {}
                for tp in self._tps:
                    try:
                        _, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                    except KafkaException:  # no such topic (yet): nothing to wait for
                        high = 0
                    targets[(tp.topic, tp.partition)] = high
            if all(high <= 0 or positions[tp] >= high for tp, high in targets.items()):
                done.set()
            else:
                remaining.append((done, targets))
        with self._lock:
            self._sync_requests = remaining + self._sync_requests[len(requests):]
