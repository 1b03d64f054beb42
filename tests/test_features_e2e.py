"""Member features end to end: real broker, two Faust workers, the sink on chDB, a manual clock.

A scripted member journey moves through segments -- new, then active and high-frequency,
then at risk when stream time alone moves on -- and each step shows on the compacted
``members.features`` topic and in the profile lookup (ClickHouse ``member_snapshots``).
A refit replaces the purchase model's params file while the workers run: the next
snapshots carry P(alive) and expected purchases of the new parameters, and persons with
no event after the refit are published again with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.features import bgnbd
from streams.features.purchase_model import replace_file
from streams.identity.links import person_id_for
from streams.identity.profile import lookup_for
from streams.settings import Settings
from streams.sink.query import QueryError
from streams.topics import MEMBER_FEATURES, partition_for
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
        # A friend signs up from the member's referral link: the lookup lists them as brought in.
        friend = {"anonymous_id": "cookie-friend", "member_id": "M-FRIEND"}
        stack.produce([encoded(touchpoint("f1", "signed_up", T0 + 30 * 60_000, identifiers=friend,
                                          referrer_id=MEMBER))])
        stack.tick(T0 + 2 * HOUR)
        referred = _until("the friend in the lookup", lambda: (
            found := lookup_for(stack.settings, f"member_id:{MEMBER}", open_directly=False)) and found["brought_in"])
        assert referred == [{"person_id": person_id_for("member_id:M-FRIEND"), "member_id": "M-FRIEND",
                             "first_seen": referred[0]["first_seen"], "orders_total": 0}]
        assert referred[0]["first_seen"].startswith("2026-10-31 16:30:00")  # T0 + 30 min, UTC

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
        # no purchase model loaded, and one order day: no P(alive), expected purchases or next purchase
        assert (rec["p_alive"], rec["expected_purchases_30d"], rec["next_purchase_ms"]) == (None, None, None)
        assert (row["p_alive"], row["expected_purchases_30d"], row["next_purchase"]) == (None, None, None)
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


FIRST, REFIT = bgnbd.Params(r=0.25, alpha=4.0, a=0.8, b=2.4), bgnbd.Params(r=1.0, alpha=0.5, a=2.0, b=1.0)
DAY_N = T0 - T0 % DAY + DAY  # midnight UTC; purchase days are Asia/Shanghai days (the reporting zone)
LOCAL = 8 * HOUR  # Asia/Shanghai is UTC+8 all year


def _write_params(path: Path, params: bgnbd.Params) -> None:
    """As `touchline fit-purchase-model` writes it: a temporary file renamed over the old one."""
    replace_file(path, bgnbd.FittedModel(params, date(2026, 10, 31), 4, 0.0, 0.0).to_json())


def test_a_refit_is_picked_up_by_running_workers(stack_factory, tmp_path: Path) -> None:
    """Eight members, two per person-ops partition (so both workers take part), order on days N
    and N + 2 (09:00 in Shanghai); then the params file is replaced and one member of each
    partition visits on day N + 6. Each published value is the closed form at the record's own
    inputs: x = 1, t_x = 2/7 and T to its as_of day. The quiet members, with no event after the
    refit, are published again with the new parameters too (the refit sweep)."""
    params = tmp_path / "params.json"
    _write_params(params, FIRST)
    stack = stack_factory(workers=2, sink=False, purchase_model_params=str(params), purchase_model_check_s=0.0)
    n = stack.settings.partitions
    members: dict[int, str] = {}
    quiet: dict[int, str] = {}
    for i in range(200):
        part = partition_for(person_id_for(f"member_id:M-refit-{i}"), n)
        if part in members:
            quiet.setdefault(part, f"M-refit-{i}")
        members.setdefault(part, f"M-refit-{i}")
    assert len(members) == len(quiet) == n
    persons = {person_id_for(f"member_id:{m}"): m for m in [*members.values(), *quiet.values()]}
    snapshots = Snapshots(stack.settings)

    def latest_where(fits: Callable[[dict[str, Any]], bool]) -> Callable[[], dict[str, dict[str, Any]] | None]:
        def check() -> dict[str, dict[str, Any]] | None:
            snapshots.poll()
            found = {p: r for p in persons if (r := (snapshots.of.get(p) or [None])[-1]) is not None and fits(r)}
            return found if len(found) == len(persons) else None
        return check

    def outlook(params: bgnbd.Params, as_of_day: int) -> tuple[float, float]:
        inputs = bgnbd.Inputs(1, 2 / 7, as_of_day / 7)
        return bgnbd.p_alive(params, inputs), bgnbd.conditional_expected(params, inputs, 30 / 7)

    def seen() -> dict[str, Any]:
        return {p: [r and (r["orders_total"], r["as_of_ms"], r["p_alive"]) for r in snapshots.of.get(p, [])]
                for p in persons}

    try:
        stack.produce([encoded(touchpoint(f"{m}-o{d}", "order_completed", DAY_N + d * DAY + HOUR, "store_pos",
                                          identifiers={"member_id": m},
                                          properties={"order_id": f"{m}-{d}", "revenue": 100.0}))
                       for m in [*members.values(), *quiet.values()] for d in (0, 2)])
        stack.tick(DAY_N + 2 * DAY + 2 * HOUR)
        before = _until("both orders with the first parameters", latest_where(lambda r: r["orders_total"] == 2), seen)
        want = outlook(FIRST, 2)
        for rec in before.values():
            assert (rec["as_of_ms"] - DAY_N) // DAY == 2  # T = t_x = 2/7
            assert (rec["p_alive"], rec["expected_purchases_30d"]) == want
            assert rec["next_purchase_ms"] == DAY_N + 4 * DAY - LOCAL  # day N + 2 plus 2 days, 00:00 Shanghai

        _write_params(params, REFIT)  # a refit, while the workers run
        stack.produce([encoded(touchpoint(f"{m}-v", "page_viewed", DAY_N + 6 * DAY + HOUR,
                                          identifiers={"member_id": m})) for m in members.values()])
        stack.tick(DAY_N + 6 * DAY + 2 * HOUR)
        visitors = {person_id_for(f"member_id:{m}") for m in members.values()}
        after = _until("the visit, and the quiet members, with the refit's parameters",
                       latest_where(lambda r: r["last_seen_ms"] == DAY_N + 6 * DAY + HOUR if r["person_id"] in visitors
                                    else r["p_alive"] == outlook(REFIT, (r["as_of_ms"] + LOCAL - DAY_N) // DAY)[0]),
                       seen)
        want, stale = outlook(REFIT, 6), outlook(FIRST, 6)
        assert want[0] != stale[0] and want[1] != stale[1]
        for person, rec in after.items():
            day = (rec["as_of_ms"] + LOCAL - DAY_N) // DAY
            assert day == 6 if person in visitors else day >= 2  # T = 6/7; the sweep's own stream time
            assert (rec["p_alive"], rec["expected_purchases_30d"]) == outlook(REFIT, day)
            assert rec["orders_total"] == 2 and rec["next_purchase_ms"] == DAY_N + 4 * DAY - LOCAL
    finally:
        snapshots.close()
