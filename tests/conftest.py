"""Fixtures that run the real embedded stack: Tansu broker, Faust workers, chDB sink.

One broker serves the whole session; every stack gets its own topic prefix
(so its own topics, consumer groups and changelogs), its own data directory
and free ports. Everything started here is stopped here, and the session
fails if any process it started is still alive at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams import avro
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.clients import create_topics, producer
from streams.processes import Supervisor, free_port
from streams.settings import Settings
from streams.tally import TopicReader
from streams.topics import RAW
from streams.touchpoint import record

T0 = 1_793_462_400_000  # 2026-11-01T00:00:00+08:00


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    yield b
    b.stop()


def _live_pids_under(path: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path in (entry / "cmdline").read_bytes().decode(errors="replace") or path in os.readlink(entry / "cwd"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class Stack:
    settings: Settings
    supervisor: Supervisor

    def produce(self, records: list[tuple[bytes | None, bytes]], partition: int | None = None) -> None:
        p = producer(self.settings)
        for key, value in records:
            if partition is None:
                p.produce(RAW.name(self.settings), key=key, value=value)
            else:
                p.produce(RAW.name(self.settings), key=key, value=value, partition=partition)
        assert p.flush(10) == 0

    def tick(self, t_ms: int) -> None:
        from streams.simulate.producer import send_clock_ticks

        send_clock_ticks(self.settings, t_ms)

    def wait_for(self, reader: TopicReader, done: Callable[[Any], bool], timeout_s: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reader.poll()
            if done(reader.tally):
                return reader.tally
            dead = self.supervisor.check_alive()
            assert not dead, f"process(es) died: {dead}; logs in {self.supervisor.log_dir}"
        raise AssertionError(f"timed out; tally: {len(reader.tally.event_ids)} events, "
                             f"{len(reader.tally.triggers)} triggers, {len(reader.tally.dead_letters)} dead letters")

    def stop_sink(self) -> None:
        for child in list(self.supervisor.children):
            if child.name == "sink":
                self.supervisor.stop(child)

    def query(self, sql: str) -> list[list[Any]]:
        """Run read-only SQL on the stack's ClickHouse: through the running sink's query endpoint, or,
        with the sink stopped, by opening chDB in a separate process (one engine per process)."""
        code = (
            "import json,sys; from streams.settings import Settings; from streams.sink.query import rows; "
            "print(json.dumps(rows(Settings.from_env(), sys.argv[1])))"
        )
        out = subprocess.run([sys.executable, "-c", code, sql], capture_output=True, text=True,
                             env={**os.environ, **self.settings.to_env()})
        assert out.returncode == 0, out.stderr[-3000:]
        return list(json.loads(out.stdout))


@pytest.fixture
def stack_factory(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(workers: int = 2, sink: bool = True, **overrides: Any) -> Stack:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, data_dir=str(tmp_path / prefix),
            clock="manual", cart_abandon_delay_s=1800.0, sink_flush_interval_s=0.2,
            **{"sink_query_port": free_port(), **overrides},
        )
        create_topics(settings)
        sup = Supervisor(settings, tmp_path / prefix / "logs")
        for i in range(workers):
            sup.start_worker(i)
        if sink:
            sup.start_sink()
        stack = Stack(settings, sup)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.supervisor.stop()
    leftovers = _live_pids_under(str(tmp_path))
    assert not leftovers, f"processes left behind: {leftovers}"


def touchpoint(event_id: str, kind: str, t_ms: int, channel: str = "web", **fields: Any) -> dict[str, Any]:
    """A Touchpoint record with only what a test cares about filled in.

    ``properties`` go into the type's family record; keys that family lacks are ignored.
    """
    props = fields.pop("properties", None)
    if props is not None:
        props = {k: v for k, v in props.items() if k in record.family_fields(kind)}
    return record.build(event_id, kind, t_ms, channel, identifiers=fields.pop("identifiers", {}),
                        properties_=props, **fields)


def encoded(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return (str(event["identifiers"].get("anonymous_id") or event["event_id"]).encode(),
            avro.encode(avro.TOUCHPOINT, event))
