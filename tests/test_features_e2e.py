"""Member features end to end: real broker, two Faust workers, the sink on chDB, a manual clock.

A scripted member journey moves through segments -- new, then active and high-frequency,
then at risk when stream time alone moves on -- and each step shows on the compacted
``members.features`` topic and in the profile lookup (ClickHouse ``member_snapshots``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.identity.links import person_id_for
from streams.identity.profile import lookup_for
from streams.settings import Settings
from streams.sink.query import QueryError
from streams.topics import MEMBER_FEATURES
from tests.conftest import T0, encoded, touchpoint

pytestmark = pytest.mark.e2e
HOUR, DAY = 3_600_000, 86_400_000
MEMBER = "M-journey"
IDS = {"member_id": MEMBER, "anonymous_id": "cookie-journey"}


class Snapshots:
    """Every record of members.features from the beginning, by key, in offset order."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "features-e2e",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(MEMBER_FEATURES.name(settings), p, OFFSET_BEGINNING)
                              for p in range(MEMBER_FEATURES.partitions(settings))])
        self.of: dict[str, list[dict[str, Any] | None]] = {}

    def poll(self) -> None:
        for m in self.consumer.consume(1000, timeout=0.3):
            if m.error() is None:
                value = m.value()
                self.of.setdefault(m.key().decode(), []).append(None if value is None else avro.decode(value)[1])

    def close(self) -> None:
        self.consumer.close()


def _until(what: str, check: Callable[[], Any], seen: Callable[[], Any] = lambda: "", timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; seen {seen()}")


def test_a_journey_moves_through_segments_on_the_topic_and_in_the_lookup(stack_factory) -> None:
    stack = stack_factory(workers=2)
    person = person_id_for(f"member_id:{MEMBER}")
    snapshots = Snapshots(stack.settings)

    def latest() -> dict[str, Any] | None:
        snapshots.poll()
        history = snapshots.of.get(person) or [None]
        return history[-1]

    def looked_up() -> dict[str, Any] | None:
        try:  # through the sink only: this process must not open the embedded database
            found = lookup_for(stack.settings, f"member_id:{MEMBER}", open_directly=False)
        except QueryError:  # the sink is still starting
            return None
        return found["features"] if found else None

    def step(name: str, fits: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
        def seen() -> list[Any]:
            return [r and (r["lifecycle"], r["orders_total"], r["as_of_ms"]) for r in snapshots.of.get(person, [])]

        rec = _until(f"{name} on members.features", lambda: (r := latest()) is not None and fits(r) and r, seen)
        row = _until(f"{name} in the lookup", lambda: (f := looked_up()) is not None and fits(f) and f)
        return rec, row

    try:
        # 1. New: a first visit.
        stack.produce([encoded(touchpoint("j1", "page_viewed", T0, identifiers=IDS)),
                       encoded(touchpoint("j2", "product_viewed", T0 + 60_000, identifiers=IDS,
                                          properties={"product_id": "P1", "category": "women/fashion/dresses"}))])
        stack.tick(T0 + HOUR)
        rec, row = step("new", lambda f: f["lifecycle"] == "new" and f["product_views_90d"] == 1)
        assert (rec["member_id"], rec["orders_total"], rec["member_grid"], rec["first_seen_ms"]) == (MEMBER, 0, None, T0)
        assert rec["interest_long"] == {"women/fashion": 1.0}
        assert (row["member_id"], row["orders_total"], row["member_grid"], row["page_views_90d"]) == (MEMBER, 0, "", 1)
        published = len(snapshots.of[person])

        # 2. Active and high-frequency: five weeks later, three orders in a day (first seen over
        #    30 days ago, seen now; three orders in 90 days, average below the high-basket line).
        back = T0 + 35 * DAY
        stack.produce([encoded(touchpoint(f"o{i}", "order_completed", back + i * HOUR, "store_pos", identifiers=IDS,
                                          store_id="S-1", properties={"order_id": f"ord-{i}", "revenue": 200.0 + i}))
                       for i in range(3)])
        stack.tick(back + 3 * HOUR)
        rec, row = step("active, high frequency",
                        lambda f: f["lifecycle"] == "active" and f["orders_total"] == 3)
        assert (rec["member_grid"], rec["orders_90d"], rec["revenue_90d"], rec["home_store"]) == (
            "high_frequency_low_basket", 3, 603.0, "S-1")
        assert rec["days_since_last_order"] == 0 and rec["first_seen_ms"] == T0
        assert (row["member_grid"], row["orders_90d"], row["home_store"]) == ("high_frequency_low_basket", 3, "S-1")
        assert len(snapshots.of[person]) > published

        # 3. At risk: no event, only stream time moving 30 days past the last order.
        last = back + 2 * HOUR
        stack.tick(last + 30 * DAY - 1)
        stack.tick(last + 30 * DAY + HOUR)
        rec, row = step("at risk", lambda f: f["lifecycle"] == "at_risk")
        assert rec["last_seen_ms"] == last and rec["as_of_ms"] >= last + 30 * DAY
        assert rec["days_since_last_order"] == 30 and rec["orders_total"] == 3
        assert (row["orders_total"], row["days_since_last_visit"]) == (3, 30)
        lifecycles = [r["lifecycle"] for r in snapshots.of[person] if r]
        assert lifecycles[0] == "new" and lifecycles[-1] == "at_risk"
        assert [lc for i, lc in enumerate(lifecycles) if i == 0 or lc != lifecycles[i - 1]] == ["new", "active", "at_risk"]
    finally:
        snapshots.close()
