"""Trigger engine (pure): hand cases per built-in, then properties over random journeys, and the
equivalence with today's coded cart abandon (streams/triggers/cart_abandon.py)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.touchpoint import record
from streams.triggers import cart_abandon, engine, person
from streams.triggers.definitions import BUILTIN_DIR, Definition, load
from streams.triggers.delivery import (
    DAY_MS,
    DEFERRED,
    FIRE,
    HOLDOUT,
    SUPPRESSED,
    Policy,
    Recipient,
    empty_state,
    trigger_id,
)
from streams.triggers.engine import Context, State, empty, merge_states, recipient_of, step
from streams.triggers.vocabulary import as_of, calendar_now
from tests.conftest import T0, touchpoint  # T0: 2026-11-01T00:00:00+08:00

MIN, HOUR = 60_000, 3_600_000
NOON = T0 + 12 * HOUR  # Shanghai noon: outside quiet hours
DEFS = load(BUILTIN_DIR)
CART = {"cart_abandon": DEFS["cart_abandon"]}
WECHAT = Recipient("p-1", "M1", ("member_id:M1",), {"all": True}, {"wechat_oa": "oa-1", "sms": None})
CTX = Context(recipient=WECHAT)
NO_QUIET = Policy(quiet_start=dt.time(0), quiet_end=dt.time(0))


def enriched(kind: str, t: int, eid: str, person: str = "p-1", historical: bool = False,
             **props: Any) -> dict[str, Any]:
    tp = record.build(eid, kind, t, "web", properties_=props or None, historical=historical)
    return {"person_id": person, "member_id": "M1", "touchpoint": tp}


def add(t: int, cart: str, product: str, eid: str | None = None, **kw: Any) -> dict[str, Any]:
    return enriched("product_added", t, eid or f"add-{cart}-{product}-{t}", cart_id=cart, product_id=product, **kw)


def run(inputs: list[tuple[Any, int]], defs: dict[str, Definition] = CART, ctx: Context = CTX,
        state: State | None = None) -> tuple[State, list[dict[str, Any]]]:
    state = empty("p-1") if state is None else state
    out: list[dict[str, Any]] = []
    for value, now in inputs:
        state, records = step(state, defs, value, now, ctx)
        out += records
    return state, out


# ---------------------------------------------------------------------------- cart abandon

def test_cart_abandon_fires_once_after_the_wait_with_the_carts_items() -> None:
    state, out = run([(add(NOON, "c1", "P1"), NOON), (add(NOON + 5 * MIN, "c1", "P2"), NOON + 5 * MIN),
                      (None, NOON + 34 * MIN)])
    assert out == [] and engine.next_due(state) == NOON + 35 * MIN
    state, out = run([(None, NOON + 35 * MIN), (None, NOON + 2 * HOUR)], state=state)
    [fired] = out
    assert fired["outcome"] == FIRE and (fired["channel"], fired["handle"]) == ("wechat_oa", "oa-1")
    assert fired["trigger_id"] == trigger_id("cart_abandon", "c1", "p-1")
    assert (fired["person_id"], fired["member_id"], fired["correlation_key"]) == ("p-1", "M1", "c1")
    assert fired["payload"] == {"cart_id": "c1", "items": '["P1", "P2"]'}
    assert fired["due_at_ms"] == NOON + 35 * MIN and fired["decided_at_ms"] == NOON + 35 * MIN
    assert fired["event_ids"] == [f"add-c1-P1-{NOON}", f"add-c1-P2-{NOON + 5 * MIN}"]
    # the same cart again, even a day later: never a second reminder for it
    state, out = run([(add(NOON + DAY_MS, "c1", "P3"), NOON + DAY_MS), (None, NOON + 2 * DAY_MS)], state=state)
    assert out == [] and state["waits"] == {}


def test_a_checkout_of_that_cart_or_any_order_cancels_and_another_carts_checkout_does_not() -> None:
    checkout = enriched("checkout_started", NOON + 10 * MIN, "co", cart_id="c1")
    other = enriched("checkout_started", NOON + 10 * MIN, "co2", cart_id="c2")
    order = enriched("order_completed", NOON + 10 * MIN, "o1", order_id="o1")
    for cancel, fires in ((checkout, False), (other, True), (order, False)):
        _, out = run([(add(NOON, "c1", "P1"), NOON), (cancel, NOON + 10 * MIN), (None, NOON + HOUR)])
        assert [r["correlation_key"] for r in out] == (["c1"] if fires else [])


def test_a_late_cancel_counts_until_stream_time_passes_the_due_time_then_cancels_nothing() -> None:
    late = enriched("checkout_started", NOON + 20 * MIN, "co", cart_id="c1")
    # arrives late (stream time already at +40m) but before the clock advance that passes the due time
    _, out = run([(add(NOON, "c1", "P1"), NOON), (late, NOON + 40 * MIN), (None, NOON + 40 * MIN)])
    assert out == []
    # arrives after the reminder was decided: it was due, it went out
    _, out = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + 40 * MIN), (late, NOON + 40 * MIN)])
    assert [r["outcome"] for r in out] == [FIRE]
    # an order after the due time cancels nothing even when it arrives first
    after = enriched("order_completed", NOON + 31 * MIN, "o1", order_id="o1")
    _, out = run([(add(NOON, "c1", "P1"), NOON), (after, NOON + 20 * MIN), (None, NOON + 40 * MIN)])
    assert [r["outcome"] for r in out] == [FIRE]


def test_one_decision_per_cart_and_the_rule_waits_out_its_suppression_window() -> None:
    _, out = run([(add(NOON, "c1", "P1"), NOON), (add(NOON, "c2", "P2"), NOON), (None, NOON + HOUR)])
    assert [(r["correlation_key"], r["outcome"], r["reason"]) for r in out] == [
        ("c1", FIRE, None), ("c2", SUPPRESSED, "suppression_window")]
    assert len({r["trigger_id"] for r in out}) == 2


def test_a_new_add_restarts_the_wait_and_an_earlier_add_arriving_late_does_not_move_it() -> None:
    state, _ = run([(add(NOON, "c1", "P1"), NOON), (add(NOON + 20 * MIN, "c1", "P2"), NOON + 20 * MIN)])
    assert engine.next_due(state) == NOON + 50 * MIN
    state, _ = run([(add(NOON - 10 * MIN, "c1", "P0"), NOON + 20 * MIN)], state=state)
    assert engine.next_due(state) == NOON + 50 * MIN
    state, out = run([(None, NOON + 49 * MIN), (None, NOON + 50 * MIN)], state=state)
    [fired] = out
    assert fired["payload"]["items"] == '["P0", "P1", "P2"]' and fired["due_at_ms"] == NOON + 50 * MIN


def test_historical_events_never_start_or_cancel_anything() -> None:
    state, out = run([(add(NOON, "c1", "P1", historical=True), NOON), (None, NOON + DAY_MS)])
    assert out == [] and state["waits"] == {}
    old_order = enriched("order_completed", NOON + MIN, "o1", historical=True, order_id="o1")
    _, out = run([(add(NOON, "c1", "P1"), NOON), (old_order, NOON + MIN), (None, NOON + HOUR)])
    assert [r["outcome"] for r in out] == [FIRE]


def test_the_wait_can_be_overridden_per_rule() -> None:
    ctx = replace(CTX, wait_ms={"cart_abandon": 10 * MIN})
    state, _ = run([(add(NOON, "c1", "P1"), NOON)], ctx=ctx)
    assert engine.next_due(state) == NOON + 10 * MIN


# ---------------------------------------------------------------------------- delivery through the engine

def test_consent_withdrawn_is_suppressed_with_the_reason() -> None:
    withdrawn = replace(WECHAT, consent={"all": False})
    _, out = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + HOUR)], ctx=Context(recipient=withdrawn))
    assert [(r["outcome"], r["reason"], r["channel"]) for r in out] == [(SUPPRESSED, "no_consent", None)]
    _, out = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + HOUR)], ctx=Context())
    assert [r["reason"] for r in out] == ["unreachable"]


def test_quiet_hours_defer_and_the_clock_fires_it_when_they_end() -> None:
    evening = T0 + 20 * HOUR + 50 * MIN  # 20:50 Shanghai: due at 21:20
    state, out = run([(add(evening, "c1", "P1"), evening), (None, evening + HOUR)])
    [deferred] = out
    morning = T0 + DAY_MS + 9 * HOUR
    assert (deferred["outcome"], deferred["until_ms"]) == (DEFERRED, morning)
    assert engine.next_due(state) == morning and "cart_abandon|c1" not in state["fired"]
    # an add of the same cart overnight does not start another wait while it is deferred
    state, out = run([(add(evening + 2 * HOUR, "c1", "P2"), evening + 2 * HOUR), (None, morning - 1)], state=state)
    assert out == [] and state["waits"] == {}
    state, out = run([(None, morning), (None, morning + HOUR)], state=state)
    [fired] = out
    assert fired["outcome"] == FIRE and fired["trigger_id"] == deferred["trigger_id"]
    assert fired["payload"] == {"cart_id": "c1", "items": '["P1"]'} and fired["decided_at_ms"] == morning
    assert state["deferred"] == {}


def test_an_order_overnight_drops_the_deferred_cart_reminder() -> None:
    evening = T0 + 20 * HOUR + 50 * MIN
    state, _ = run([(add(evening, "c1", "P1"), evening), (None, evening + HOUR)])
    order = enriched("order_completed", evening + 3 * HOUR, "o1", order_id="o1")
    state, out = run([(order, evening + 3 * HOUR), (None, T0 + 2 * DAY_MS)], state=state)
    assert out == [] and state["deferred"] == {}


def test_the_holdout_share_over_many_persons() -> None:
    outcomes: Counter[str] = Counter()
    for i in range(3000):
        who = Recipient(f"p-{i}", f"M{i:05d}", (), {"all": True}, {"wechat_oa": "oa"})
        _, out = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + HOUR)], ctx=Context(recipient=who))
        outcomes.update(r["outcome"] for r in out)
    assert sum(outcomes.values()) == 3000 and set(outcomes) == {FIRE, HOLDOUT}
    assert abs(outcomes[HOLDOUT] / 3000 - 0.1) < 0.02


def test_priority_among_the_decisions_of_one_step() -> None:
    due = {"person_id": "p-1", "member_id": "M1", "next_purchase_ms": NOON + DAY_MS, "p_alive": 0.8,
           "expected_purchases_30d": 0.9}
    ctx = replace(CTX, features=due)
    state, out = run([(add(NOON - HOUR, "c1", "P1"), NOON - HOUR)], defs=CART, ctx=ctx)
    # one clock advance: the cart (priority 80) is due and repurchase_due (60) starts
    state, out = run([(None, NOON)], defs=DEFS, ctx=ctx, state=state)
    assert [(r["rule"], r["outcome"], r["reason"]) for r in out] == [
        ("cart_abandon", FIRE, None), ("repurchase_due", SUPPRESSED, "outranked")]


# ---------------------------------------------------------------------------- the other built-ins

SHIFTED = {"person_id": "p-1", "member_id": "M1", "interest_shift": True, "interest_divergence": 0.37,
           "interest_category": "women/fashion"}


def test_interest_shift_fires_once_with_the_new_category_and_is_suppressed_within_its_window() -> None:
    ctx = replace(CTX, features=SHIFTED)
    views = [(enriched("product_viewed", NOON + i * MIN, f"v{i}", product_id="P1"), NOON + i * MIN)
             for i in range(3)]
    state, out = run(views, defs=DEFS, ctx=ctx)
    [fired] = out
    assert (fired["rule"], fired["outcome"], fired["correlation_key"]) == ("interest_shift", FIRE, "women/fashion")
    assert fired["payload"] == {"category": "women/fashion", "divergence": "0.37"}
    assert fired["evidence"] == {"features.interest_shift": "true", "features.interest_category": "women/fashion"}
    assert fired["event_ids"] == ["v0"]
    again = replace(CTX, features={**SHIFTED, "interest_category": "men/outdoor"})
    later = NOON + 3 * DAY_MS
    state, out = run([(enriched("product_viewed", later, "v9", product_id="P2"), later)], defs=DEFS, ctx=again,
                     state=state)
    assert [(r["correlation_key"], r["reason"]) for r in out] == [("men/outdoor", "suppression_window")]
    no_shift = replace(CTX, features={**SHIFTED, "interest_shift": False})
    _, out = run(views, defs=DEFS, ctx=no_shift)
    assert out == []


QUIET = {"person_id": "p-1", "member_id": "M1", "revenue_total": 5200.0, "days_since_last_order": 75,
         "p_alive": 0.4, "last_order_ms": T0 - 75 * DAY_MS}


def test_win_back_fires_once_per_quiet_spell_from_features_snapshots() -> None:
    state, out = run([(QUIET, NOON), ({**QUIET, "days_since_last_order": 76}, NOON + DAY_MS)], defs=DEFS)
    [fired] = out
    assert (fired["rule"], fired["correlation_key"], fired["payload"]) == (
        "win_back", str(T0 - 75 * DAY_MS), {"days_since_last_order": "75"})
    assert fired["due_at_ms"] == NOON and fired["event_ids"] == []
    # an order, then a new quiet spell: a new key
    spell = {**QUIET, "last_order_ms": T0 + 10 * DAY_MS}
    _, out = run([(spell, NOON + 80 * DAY_MS)], defs=DEFS, state=state)
    assert [(r["rule"], r["outcome"]) for r in out] == [("win_back", FIRE)]


def test_repurchase_due_is_evaluated_again_as_stream_time_moves() -> None:
    due = {"person_id": "p-1", "member_id": "M1", "next_purchase_ms": NOON + 5 * DAY_MS, "p_alive": 0.8,
           "expected_purchases_30d": 0.9}
    ctx = replace(CTX, features=due)
    state, out = run([(due, NOON), (None, NOON + 2 * DAY_MS)], defs=DEFS, ctx=ctx)
    assert out == []
    state, out = run([(None, NOON + 3 * DAY_MS), (None, NOON + 4 * DAY_MS)], defs=DEFS, ctx=ctx, state=state)
    assert [(r["rule"], r["correlation_key"]) for r in out] == [("repurchase_due", str(NOON + 5 * DAY_MS))]


def test_win_back_starts_on_the_day_a_quiet_spell_reaches_60_days_without_a_new_snapshot() -> None:
    # The latest snapshot was taken 30 days after the last order; conditions count the days to now.
    last_order = T0 - 30 * DAY_MS
    taken = {**QUIET, "days_since_last_order": 30, "last_order_ms": last_order, "as_of_ms": NOON}
    ctx = replace(CTX, features=taken)
    state, out = run([(taken, NOON), (None, last_order + 60 * DAY_MS - 1)], defs=DEFS, ctx=ctx)
    assert out == []  # 59 days and some hours
    state, out = run([(None, last_order + 60 * DAY_MS)], defs=DEFS, ctx=ctx, state=state)
    assert [(r["rule"], r["due_at_ms"], r["payload"]) for r in out] == [
        ("win_back", last_order + 60 * DAY_MS, {"days_since_last_order": "60"})]


def test_features_are_read_as_of_now_and_a_stepped_person_is_rechecked_at_each_utc_midnight() -> None:
    snap = {"days_since_last_order": 3, "last_order_ms": T0, "as_of_ms": T0 + 3 * DAY_MS, "revenue_total": 1.0}
    assert as_of(snap, T0 + 3 * DAY_MS) is snap
    assert as_of(snap, T0 + 9 * DAY_MS + HOUR) == {**snap, "days_since_last_order": 9}
    assert as_of({"days_since_last_order": None, "last_order_ms": None}, T0)["days_since_last_order"] is None
    assert (DEFS["win_back"].changes_with_time, DEFS["repurchase_due"].changes_with_time,
            DEFS["interest_shift"].changes_with_time) == (True, True, False)
    entry = person.empty("p-1", 0)
    assert person.next_due(entry, recheck=True) is None  # no features, never stepped
    person.keep_features(entry, snap)
    entry["engine"]["clock"] = NOON  # 04:00 UTC
    midnight_utc = (NOON // DAY_MS + 1) * DAY_MS
    assert person.next_due(entry, recheck=True) == midnight_utc
    assert person.next_due(entry, recheck=False) is None
    entry["engine"]["waits"]["cart_abandon|c1"] = {"due_ms": NOON + HOUR}
    assert person.next_due(entry, recheck=True) == NOON + HOUR


def test_online_to_offline_goes_to_the_stores_guides() -> None:
    newcomer = {"person_id": "p-1", "member_id": "M1", "city_store": "S001", "city": "Shanghai",
                "channels": {"mini_program": {"first_seen_ms": T0}}, "lifecycle": "new",
                "first_touch": {"channel": "mini_program", "entry": "kol"}}
    by_phone = Context(recipient=Recipient("p-1", "M1", (), {"phone_call": True}, {"store_guide": None}))
    _, out = run([(newcomer, NOON), (newcomer, NOON + DAY_MS)], defs=DEFS, ctx=by_phone)
    assert [(r["rule"], r["channel"], r["payload"]) for r in out] == [
        ("online_to_offline", "store_guide", {"store_id": "S001", "city": "Shanghai"})]


def test_a_store_opening_in_the_persons_city_reaches_them_at_the_next_clock_advance() -> None:
    # Snapshotted on 11-01 in Lhasa, with no store there; S-LS-1 opens on 11-05 (local day, +08:00).
    lhasa = {"person_id": "p-1", "member_id": "M1", "city_store": None, "city_store_opened_ms": None,
             "city": "Lhasa", "channels": {"web": {"first_seen_ms": T0}}, "lifecycle": "new",
             "first_touch": {"channel": "web", "entry": "direct"}}
    stores = [{"store_id": "S-LS-1", "city": "Lhasa", "opened_on": "2026-11-05", "closed_on": None},
              {"store_id": "S-SH-1", "city": "Shanghai", "opened_on": "2020-01-01", "closed_on": None}]
    opens = T0 + 4 * DAY_MS  # 2026-11-05T00:00+08:00
    entry = person.empty("p-1", 0)
    person.keep_features(entry, lhasa)
    by_phone = Recipient("p-1", "M1", (), {"phone_call": True}, {"store_guide": None})

    def advance(now: int) -> list[dict[str, Any]]:
        ctx = replace(person.context(entry, CTX.policy, {}, {}, None, person.city_stores(stores, now)), recipient=by_phone)
        assert ctx.features is not None
        return step(entry["engine"], DEFS, None, now, ctx)[1]

    assert advance(opens - 1) == []  # the day before: no store in Lhasa
    assert person.context(entry, CTX.policy, {}, {}, None, person.city_stores(stores, opens)).features["city_store"] == "S-LS-1"
    [deferred] = advance(opens + 8 * HOUR)  # 08:00 local (the UTC midnight recheck): quiet hours
    assert (deferred["outcome"], deferred["until_ms"]) == ("deferred", opens + 9 * HOUR)
    [handed] = advance(opens + 9 * HOUR)  # decided again when quiet hours end; the condition still holds
    assert (handed["rule"], handed["outcome"], handed["channel"], handed["payload"], handed["due_at_ms"]) == (
        "online_to_offline", "fire", "store_guide", {"store_id": "S-LS-1", "city": "Lhasa"}, opens + 8 * HOUR)
    assert entry["features"].get("city_store") is None  # the kept snapshot is unchanged (a null is not kept)


def test_browse_without_buying_is_timed_by_the_campaign_calendar() -> None:
    double11 = {"campaign_id": "double11", "name": "Double 11", "starts_on": "2026-10-31", "ends_on": "2026-11-11",
                "warmup_starts_on": "2026-10-20", "channels": []}
    warmup = NOON - 5 * DAY_MS
    visit = enriched("page_viewed", warmup, "pv1")
    for now, fires in ((warmup, True), (NOON - 40 * DAY_MS, False)):
        ctx = replace(CTX, features={"browse_without_buying": True}, calendar=calendar_now([double11], now))
        _, out = run([(visit, now)], defs=DEFS, ctx=ctx)
        assert [r["correlation_key"] for r in out] == (["double11"] if fires else [])


def test_recipient_from_a_features_snapshot() -> None:
    snap = {"person_id": "p-1", "member_id": "M1", "consent": {"marketing": {"wechat": True, "sms": False}},
            "reachable": ["wechat", "email"], "preferred_channel": "wechat"}
    who = recipient_of(snap, {"wechat_oa": "oa-1"}, timezone="Asia/Shanghai")
    assert who.reach == {"wechat_oa": "oa-1", "email": None}  # no mini-program openid: not reachable there
    assert (who.consent, who.preferred, who.member_id) == ({"wechat": True, "sms": False}, "wechat", "M1")


def test_the_stage_keeps_quiet_hours_in_the_zone_the_persons_latest_live_event_names() -> None:
    def seen(t: int, zone: str, historical: bool = False) -> dict[str, Any]:
        tp = record.build(f"e{t}", "page_viewed", t, "web", context={"timezone": zone}, historical=historical)
        return {"person_id": "p-1", "member_id": "M1", "touchpoint": tp}

    entry = person.empty("p-1", 0)
    person.keep_features(entry, {"person_id": "p-1", "member_id": "M1"})
    assert person.context(entry, NO_QUIET, {}, {}).recipient.timezone is None  # the policy's zone
    for event in (seen(NOON, "Europe/London"), seen(NOON - HOUR, "Asia/Tokyo"), seen(NOON + HOUR, "UTC", True)):
        person.note_handles(entry, event)  # an earlier event arriving late, a historical one: ignored
    assert person.context(entry, NO_QUIET, {}, {}).recipient.timezone == "Europe/London"
    other = person.empty("p-2", 1)
    person.note_handles(other, seen(NOON + HOUR, "America/New_York"))
    assert person.absorb(entry, "p-2", json.loads(person.handed_over(other)), NO_QUIET)
    assert person.context(entry, NO_QUIET, {}, {}).recipient.timezone == "America/New_York"  # the later one


# ---------------------------------------------------------------------------- merges

def test_merge_moves_pending_waits_and_fired_memory_to_the_survivor() -> None:
    a, _ = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + HOUR)])  # c1 fired for a
    b = empty("p-2")
    b, _ = run([(add(NOON + 50 * MIN, "c1", "P1", person="p-2"), NOON + 50 * MIN),
                (add(NOON + 50 * MIN, "c2", "P2", person="p-2"), NOON + 50 * MIN)], state=b)
    merged = merge_states(a, b, CTX.policy)
    assert set(merged["waits"]) == {"cart_abandon|c2"} and "cart_abandon|c1" in merged["fired"]
    assert merged["person_id"] == "p-1" and len(merged["delivery"]["sent"]) == 1
    _, out = run([(None, NOON + 2 * HOUR)], state=merged)
    assert [(r["correlation_key"], r["person_id"], r["reason"]) for r in out] == [
        ("c2", "p-1", "suppression_window")]


def test_the_same_cart_pending_in_both_keeps_the_later_start_and_the_items_of_both() -> None:
    a, _ = run([(add(NOON, "c1", "P1"), NOON)])
    b, _ = run([(add(NOON + 10 * MIN, "c1", "P2", person="p-2"), NOON + 10 * MIN)], state=empty("p-2"))
    for merged in (merge_states(a, b, NO_QUIET), merge_states(b, a, NO_QUIET)):
        [w] = merged["waits"].values()
        assert w["due_ms"] == NOON + 40 * MIN and [v[2] for v in w["collected"]["items"]] == ["P1", "P2"]


# ---------------------------------------------------------------------------- properties

CARTS = ["c0", "c1", "c2", "c3"]
EVENTS = st.tuples(st.sampled_from(["add", "add", "checkout", "order", "view"]), st.sampled_from(CARTS),
                   st.integers(-20 * MIN, 90 * MIN))  # event time relative to stream time
JOURNEY = st.lists(st.lists(EVENTS, max_size=4), max_size=25)  # batches, each followed by a clock advance


def journey_events(batches: list[list[tuple[str, str, int]]], start: int = NOON,
                   person: str = "p-1") -> list[tuple[list[dict[str, Any]], int]]:
    """Batches of enriched events, each with the stream time after it (newest event time so far)."""
    out, clock, n = [], start, 0
    for batch in batches:
        events = []
        for kind, cart, offset in batch:
            t, n = clock + offset, n + 1
            eid = f"{person}-e{n}"
            if kind == "add":
                events.append(add(t, cart, f"P{n}", eid=eid))
            elif kind == "checkout":
                events.append(enriched("checkout_started", t, eid, cart_id=cart))
            elif kind == "order":
                events.append(enriched("order_completed", t, eid, order_id=f"o{n}"))
            else:
                events.append(enriched("page_viewed", t, eid))
        clock = max([clock, *(e["touchpoint"]["event_time_ms"] for e in events)])
        out.append((events, clock))
    return out


@settings(max_examples=150, deadline=None)
@given(JOURNEY, st.integers(1, 90))
def test_the_same_fired_carts_and_due_times_as_the_coded_cart_abandon(batches: Any, wait_min: int) -> None:
    """The agent's loop over cart_abandon.py: events of a batch, then fire what stream time passed.
    Each cart it fires is one decision here (fired, or suppressed by delivery: two carts due at
    one moment are one push, the other outranked), at the same due time."""
    wait = wait_min * MIN
    ctx = Context(NO_QUIET, WECHAT, wait_ms={"cart_abandon": wait})
    coded = cart_abandon.empty("p-1", 0)
    state, expected, got = empty("p-1"), set(), set()
    previous = NOON
    for events, clock in journey_events(batches) + [([], NOON + 10 * DAY_MS)]:
        for e in events:
            cart_abandon.on_event(coded, e, wait)
            state, out = step(state, CART, e, previous, ctx)
            assert out == []
        expected |= {(t["correlation_key"], t["due_at_ms"]) for t in cart_abandon.fire_due(coded, clock)}
        state, out = step(state, CART, None, clock, ctx)
        assert all(r["decided_at_ms"] == clock for r in out)
        got |= {(r["correlation_key"], r["due_at_ms"]) for r in out}
        previous = clock
    assert got == expected


RECIPIENTS = st.sampled_from([WECHAT, replace(WECHAT, consent={}), replace(WECHAT, timezone="America/New_York"),
                              Recipient("p-1", None, (), {"wechat": True}, {"mini_program": "mp"})])
SNAPSHOTS = st.sampled_from([SHIFTED, {**SHIFTED, "interest_category": "men/outdoor"}, QUIET,
                             {**QUIET, "last_order_ms": T0}, {}])
ANY_STEP = st.tuples(st.integers(0, 6 * HOUR), st.one_of(
    st.tuples(st.just("events"), st.lists(EVENTS, max_size=3)),
    st.tuples(st.just("features"), SNAPSHOTS),
    st.tuples(st.just("product_viewed"), SNAPSHOTS),
), RECIPIENTS, st.sampled_from([((DAY_MS, 1), (7 * DAY_MS, 3)), ((HOUR, 2),)]))


def run_any(steps: list[Any], caps: Any = None) -> tuple[State, list[dict[str, Any]]]:
    state, out, clock, n = empty("p-1"), [], NOON, 0
    for gap, (kind, what), who, step_caps in steps:
        clock += gap
        ctx = Context(Policy(caps=caps or step_caps), who, features=what if kind != "events" else None)
        if kind == "events":
            inputs = [e for batch, _ in journey_events([what], clock, f"p-1-{n}") for e in batch]
        elif kind == "features":
            inputs = [what]
        else:
            inputs = [enriched("product_viewed", clock, f"v{n}", product_id="P1")]
        n += 1
        for value in [*inputs, None]:
            state, records = step(state, DEFS, value, clock, ctx)
            out += records
            assert len(state["waits"]) <= engine.MAX_WAITS and len(state["fired"]) <= engine.FIRED_MEMORY
            assert len(state["deferred"]) <= engine.MAX_DEFERRED
        assert json.loads(json.dumps(state)) == state
    return state, out


@settings(max_examples=120, deadline=None)
@given(st.lists(ANY_STEP, max_size=30))
def test_never_two_fire_decisions_with_one_trigger_id_and_one_final_decision_per_key(steps: Any) -> None:
    _, out = run_any(steps)
    fired = Counter(r["trigger_id"] for r in out if r["outcome"] == FIRE)
    assert max(fired.values(), default=0) <= 1
    final = Counter(r["trigger_id"] for r in out if r["outcome"] != DEFERRED)
    assert max(final.values(), default=0) <= 1


@settings(max_examples=80, deadline=None)
@given(st.lists(ANY_STEP, max_size=30), st.sampled_from([((DAY_MS, 1), (7 * DAY_MS, 3)), ((4 * HOUR, 2),)]))
def test_frequency_caps_are_never_exceeded(steps: Any, caps: Any) -> None:
    _, out = run_any(steps, caps)
    sends = sorted(r["decided_at_ms"] for r in out if r["outcome"] == FIRE)
    for t in sends:
        for window, n in caps:
            assert sum(t - window < s <= t for s in sends) <= n


@settings(max_examples=60, deadline=None)
@given(st.lists(ANY_STEP, max_size=20))
def test_the_same_inputs_in_the_same_order_give_the_same_state_and_decisions(steps: Any) -> None:
    assert run_any(steps) == run_any(steps)


@settings(max_examples=100, deadline=None)
@given(JOURNEY)
def test_a_redelivered_event_changes_nothing(batches: Any) -> None:
    once, twice = empty("p-1"), empty("p-1")
    for events, clock in journey_events(batches):
        for e in events:
            once, _ = step(once, CART, e, clock, CTX)
            for _ in range(2):
                twice, _ = step(twice, CART, e, clock, CTX)
    assert once == twice


MERGE_CASES = {
    # the same carts in both, started only: the later start of each wins
    "shared carts": (st.sampled_from(["add"]), CARTS, CARTS),
    # each person's own carts, with their checkouts
    "own carts": (st.sampled_from(["add", "add", "checkout", "view"]), CARTS[:2], CARTS[2:]),
}


@pytest.mark.parametrize("case", sorted(MERGE_CASES))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_merge_then_step_is_step_on_the_survivor_with_both_histories(case: str, data: st.DataObject) -> None:
    kinds, carts_a, carts_b = MERGE_CASES[case]
    offsets = st.integers(-20 * MIN, 90 * MIN)
    history_a = data.draw(st.lists(st.lists(st.tuples(kinds, st.sampled_from(carts_a), offsets), max_size=3),
                                   max_size=6))
    history_b = data.draw(st.lists(st.lists(st.tuples(kinds, st.sampled_from(carts_b), offsets), max_size=3),
                                   max_size=6))
    events_a = [e for batch, _ in journey_events(history_a, person="a") for e in batch]
    events_b = [e for batch, _ in journey_events(history_b, person="b") for e in batch]
    later = NOON + 30 * DAY_MS
    a, b, both = empty("p-1"), empty("p-2"), empty("p-1")
    for e in events_a:
        a, _ = step(a, CART, e, NOON, CTX)
    for e in events_b:
        b, _ = step(b, CART, e, NOON, CTX)
    # both histories in one, each in its own arrival order, interleaved any way
    picks = data.draw(st.permutations([0] * len(events_a) + [1] * len(events_b)))
    queues = [iter(events_a), iter(events_b)]
    for pick in picks:
        both, _ = step(both, CART, next(queues[pick]), NOON, CTX)
    merged = merge_states(a, b, CTX.policy)
    assert merged["waits"] == both["waits"]
    merged, out_merged = step(merged, CART, None, later, CTX)
    both, out_both = step(both, CART, None, later, CTX)
    assert out_merged == out_both and merged["fired"] == both["fired"]


def test_state_bytes_of_a_busy_person_stay_bounded() -> None:
    state = empty("p-1")
    t = NOON
    for day in range(300):  # a cart a day with 30 adds, every one decided; a snapshot a day
        t = NOON + day * DAY_MS
        for i in range(30):
            state, _ = step(state, DEFS, add(t + i * MIN, f"c{day}", f"P{i:04d}"), t + i * MIN, CTX)
        state, _ = step(state, DEFS, {**QUIET, "last_order_ms": t - 75 * DAY_MS}, t + HOUR, CTX)  # a new quiet spell
        state, _ = step(state, DEFS, None, t + 2 * HOUR, CTX)
    decided = engine.state_bytes(state)
    for cart in range(200):  # then a burst of carts, all pending, each with many items
        for i in range(30):
            state, _ = step(state, CART, add(t + 3 * HOUR, f"burst{cart}", f"P{i:04d}", eid=f"b{cart}-{i}"),
                            t + 3 * HOUR, CTX)
    pending = engine.state_bytes(state)
    assert len(state["fired"]) == engine.FIRED_MEMORY and len(state["waits"]) == engine.MAX_WAITS
    assert state["evicted"] == 200 - engine.MAX_WAITS
    # streams/triggers/README.md quotes these (pytest -s): 12,383 and 85,919 bytes when written
    print(f"state bytes: {decided:,} with {engine.FIRED_MEMORY} keys remembered, {pending:,} with "
          f"{engine.MAX_WAITS} carts of {engine.MAX_COLLECTED} items pending too")
    assert decided < 14_000 and pending < 95_000, (decided, pending)
    assert len(json.dumps(empty_state())) < 100


def test_state_bytes_of_a_usual_person() -> None:
    state, _ = run([(add(NOON, "c1", "P1"), NOON), (None, NOON + HOUR),
                    *[(add(NOON + DAY_MS + i * MIN, "c2", f"P{i}"), NOON + DAY_MS) for i in range(3)]])
    # streams/triggers/README.md quotes this (pytest -s): 805 bytes when written
    print(f"state bytes: {engine.state_bytes(state):,}, one cart decided and one pending with three items")
    assert len(state["fired"]) == 1 and len(state["waits"]) == 1 and engine.state_bytes(state) < 1_000


def test_an_entry_keeps_of_a_snapshot_what_the_definitions_read_and_reads_the_same() -> None:
    """person.kept_keys: of a real features snapshot (a member seen on the web, in a store and on
    WeChat, with orders) an entry keeps what the built-in definitions read -- only the channel
    they read of ``channels``, only the field of ``first_touch`` -- and every features path of
    every built-in expression reads the same from the kept part as from the whole snapshot, as
    does the recipient; the kept part is a fraction of the snapshot."""
    from streams.features import member, profile
    from streams.triggers import expr

    def ev(eid: str, kind: str, t: int, channel: str, **props: Any) -> dict[str, Any]:
        tp = touchpoint(eid, kind, t, channel, identifiers={"member_id": "M1"}, properties=props)
        return {"person_id": "p-1", "member_id": "M1", "processed_at_ms": t, "touchpoint": tp}

    entry = member.empty("p-1", 0)
    for e in (ev("a", "page_viewed", T0, "web"), ev("b", "product_viewed", T0 + HOUR, "web", category="men/shoes"),
              ev("c", "order_completed", T0 + 2 * HOUR, "store_pos", order_id="o1", revenue=300.0),
              ev("d", "page_viewed", T0 + 3 * HOUR, "wechat_oa")):
        profile.apply(entry["profile"], e)
    full = member.record(entry, T0 + DAY_MS)
    assert full is not None
    kept = person.kept_keys(DEFS.values())
    assert kept["channels"] == {"store_pos"} and kept["first_touch"] == {"channel"}
    cut = person.empty("p-1", 0)
    person.keep_features(cut, full, kept)
    paths = [p for d in DEFS.values() for e in d.expressions() for p in e.paths() if p.names[0] == "features"]
    assert paths
    for path in paths:
        assert expr.evaluate(path, {"features": cut["features"]}) == expr.evaluate(path, {"features": full})
    cut["engine"]["member_id"] = full["member_id"]  # as engine.step notes it from the snapshot
    got = person.context(cut, NO_QUIET, {}, {})
    assert got.recipient == recipient_of(full) and got.recipient is not None
    assert (got.features["person_id"], got.features["member_id"]) == ("p-1", "M1")  # type: ignore[index]
    assert len(json.dumps(cut["features"])) < len(json.dumps(full)) / 3
