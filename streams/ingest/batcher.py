"""Pure core of ingestion: a consumed slice of raw records in, routed batches out.

Each raw record becomes either a touchpoint routed to the identity partition
of its route key, a dead letter with a reason, or (manual clock only) a clock
tick, or suppressed: it carries an identifier an erasure suppressed
(streams/privacy/core.py; counted, never passed on). The batcher also tracks stream time per raw partition: the largest event
time (or tick) seen there, never earlier than the injected clock in wall mode.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from streams.clock import Clock
from streams.ingest import control
from streams.ingest.validate import Policy, Rejected, accept, route_key
from streams.privacy.core import Suppressions
from streams.topics import partition_for


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None  # the record's Kafka timestamp, when it has one


@dataclass(frozen=True)
class Dead:
    record: RawRecord
    reason: str
    detail: str


@dataclass
class Routed:
    by_partition: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead: list[Dead] = field(default_factory=list)
    ticks: int = 0
    channels: Counter[str] = field(default_factory=Counter)
    # (channel, type, outcome, reason) -> records, for touchline_ingest_outcomes_total
    outcomes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return sum(len(v) for v in self.by_partition.values())

    @property
    def suppressed(self) -> int:
        """Valid touchpoints of erased persons, dropped."""
        return sum(n for (_, _, outcome, _), n in self.outcomes.items() if outcome == "suppressed")


class IngestBatcher:
    def __init__(self, partitions: int, clock: Clock, manual_clock: bool, lateness_ms: int = 0,
                 *, policy: Policy, suppressions: Suppressions | None = None) -> None:
        self.partitions = partitions
        self.suppressions = suppressions
        self.policy = policy
        self.clock = clock
        self.manual_clock = manual_clock
        self.lateness_ms = lateness_ms
        self.raw_times: dict[int, int] = {}

    def route(self, records: list[RawRecord]) -> Routed:
        out = Routed()
        times = self.raw_times
        for rec in records:
            tick = control.tick_time(rec.headers, rec.value)
            if tick is not None:
                if self.manual_clock:
                    times[rec.partition] = max(times.get(rec.partition, 0), tick)
                    out.ticks += 1
                continue
            result = accept(rec.value, self.policy)
            if isinstance(result, Rejected):
                out.dead.append(Dead(rec, result.reason, result.detail))
                out.outcomes[(result.channel, result.type, "dead_letter", result.reason)] += 1
                continue
            t = result["event_time_ms"]
            if t > times.get(rec.partition, 0):  # time moves on, whoever's event it was
                times[rec.partition] = t
            if self.suppressions is not None and self.suppressions.blocks(result):
                out.outcomes[(result["channel"], result["type"], "suppressed", "erased")] += 1
                continue
            key = route_key(result["identifiers"])
            assert key is not None  # accept() rejects events without one
            out.by_partition[partition_for(key, self.partitions)].append({
                "raw_partition": rec.partition, "raw_offset": rec.offset,
                "route_key": key, "touchpoint": result,
            })
            out.channels[result["channel"]] += 1
            out.outcomes[(result["channel"], result["type"], "accepted", "")] += 1
        return out

    def stream_times(self, owned: set[int] | None = None) -> dict[str, int]:
        """Stream time of each owned raw partition, minus allowed lateness."""
        floor = 0 if self.manual_clock else self.clock.now_ms()
        parts = owned if owned is not None else set(self.raw_times)
        return {
            str(p): max(self.raw_times.get(p, 0), floor) - self.lateness_ms for p in sorted(parts)
        }
