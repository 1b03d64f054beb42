"""`make bench`'s event -> trigger latency: which trigger records count and from when."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streams import avro
from streams.bench import trigger_latencies
from tests.conftest import T0, encoded, touchpoint

EXAMPLE = Path(__file__).parents[1] / "schemas/examples/com.touchline.triggers.Trigger/v2/cart_abandon.json"


@dataclass
class Message:  # what confluent-kafka's Message offers the bench
    raw: bytes
    ts: int

    def value(self) -> bytes:
        return self.raw

    def timestamp(self) -> tuple[int, int]:
        return 1, self.ts


def _trigger(rule: str, source_event_id: str, ts: int) -> Message:
    record = {**json.loads(EXAMPLE.read_text()), "rule": rule, "source_event_id": source_event_id}
    return Message(avro.encode(avro.TRIGGER, record), ts)


def test_latency_is_from_the_starting_events_raw_record_to_the_trigger_record_of_rules_without_a_wait() -> None:
    raw = [Message(encoded(touchpoint("e1", "product_viewed", T0))[1], 1_000),
           Message(b"\x00garbage", 1_500),  # a malformed raw record starts nothing
           Message(encoded(touchpoint("e2", "product_added", T0))[1], 2_000),
           Message(encoded(touchpoint("e1", "product_viewed", T0))[1], 9_000)]  # a resend: the first counts
    triggers = [_trigger("interest_shift", "e1", 1_040),
                _trigger("online_to_offline", "e2", 2_300),
                _trigger("cart_abandon", "e2", 1_802_000),  # waits: not a latency
                _trigger("win_back", "", 5_000)]  # started by features: no event to measure from
    assert trigger_latencies({"interest_shift", "online_to_offline", "win_back"}, raw, triggers) == [40.0, 300.0]
