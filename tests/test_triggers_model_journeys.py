"""The built-in triggers that read the purchase model, end to end on 2 workers and a test clock:
repurchase_due and win_back (issue 8), with BG/NBD parameters r = alpha = a = b = 1 loaded from a
params file, so that P(alive) is a fraction worked by hand.

One stack and one timeline (the style of tests/test_triggers_journeys.py): every step moves the
test clock to a time T and waits until the triggers stage has applied it, then produces events
later than T and earlier than the next step's time, and waits until identity has them before the
next tick (so a snapshot taken for an event is as of that event, not of the tick after it). Past
the last event stream time moves a week at most at a time and stops at every lifecycle boundary,
as a running clock would: one jump across a boundary snapshots the person at the jump. Times are UTC, and
so is the reporting zone (purchase days are its days): U is 2026-11-01 00:00 UTC, and
all members' devices are in Los Angeles (16:00 there), so no decision falls in quiet hours.

When the rules are looked at. Neither rule has start events: the engine evaluates them on each
features snapshot of the person (streams/triggers/engine.py), and, as both change with time alone
(repurchase_due reads ``now``, win_back the days since the last order, counted to now), on every
clock advance that steps the person: a batch touching them, or their daily recheck (a UTC midnight
of stream time passed since their last step). A person without events is re-snapshotted only at a
lifecycle boundary (streams/features/member.py ``next_due``: first seen + 30 days, last seen + 30
days, last seen + 90 days), and P(alive) is that snapshot's. So:

- repurchase_due: the regular buyer's first sighting is timed so that their "new" boundary
  (first seen + 30 days) is the very moment their next purchase comes within two days: it fires
  then, not a millisecond before.
- win_back: the quiet valuable member has been 60 days without an order on day 74, 00:02, between
  two snapshots (at risk on day 44, lapsed on day 104); their next daily recheck (day 75, 00:00)
  counts the days to now and the trigger goes out then, with days_since_last_order 60 and the
  day-44 P(alive).
- repurchase_due for the quiet members too: their rhythm (days 0, 7, 14) puts the next purchase on
  day 21, and their recheck on day 19 at 00:00 finds it two days ahead with P(alive) 2/3.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from streams.features import bgnbd
from streams.tally import TopicReader
from streams.triggers.delivery import in_holdout, trigger_id
from tests.conftest import T0, encoded
from tests.test_features_e2e import Snapshots, _until
from tests.test_triggers_e2e import MIN, D, H, Member, advance

pytestmark = pytest.mark.e2e

U = T0 + 8 * H  # 2026-11-01T00:00:00Z (T0 is midnight in Shanghai)
LA = "America/Los_Angeles"
MODEL = bgnbd.Params(r=1.0, alpha=1.0, a=1.0, b=1.0)
# P(alive) = 1 / (1 + a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x)), T and t_x in weeks
REGULAR = bgnbd.Inputs(3, 24 / 7, 30 / 7)  # orders on days 0, 8, 16, 24; seen on day 30
REGULAR_P_ALIVE = 1 / (1 + (37 / 31) ** 4 / 3)  # 0.5965: at least 0.5
FADING = bgnbd.Inputs(1, 4 / 7, 7 / 7)  # orders on days 0 and 4; visits on day 7
FADING_P_ALIVE = 121 / 317  # 1 / (1 + (14 / 11)^2) = 0.3817: under 0.5
QUIET = bgnbd.Inputs(2, 14 / 7, 44 / 7)  # orders on days 0, 7, 14; snapshotted (at risk) on day 44
STEADY = bgnbd.Inputs(2, 14 / 7, 14 / 7)  # the quiet members at their last order (days 0, 7, 14)
STEADY_P_ALIVE = 2 / 3  # 1 / (1 + 1 / 2): at least 0.5, so their rhythm (next purchase day 21) comes due
QUIET_P_ALIVE = 686 / 5599  # at the day-44 snapshot: 1 / (1 + (17 / 7)^3 / 2) = 0.1225: under 0.6
LAPSED = bgnbd.Inputs(2, 14 / 7, 104 / 7)  # the quiet members' lapsed snapshot, day 104
LAPSED_P_ALIVE = 686 / 51339  # 1 / (1 + (37 / 7)^3 / 2) = 0.0134
# The lifecycle boundaries after the last event (streams/features/member.py next_due): first seen + 30
# days for all (U: day 30, 00:00); last seen + 30 and + 90 days: the fading buyer (visit on day 7,
# 00:02), the quiet members (last order on day 14, 00:02), the regular buyer (last order on day 24, 00:02).
BOUNDARIES = (U + 30 * D, *(U + (last + gap) * D + 2 * MIN for last in (7, 14, 24) for gap in (30, 90)))


def test_hand_worked_p_alive_is_the_closed_form() -> None:
    assert bgnbd.p_alive(MODEL, REGULAR) == pytest.approx(REGULAR_P_ALIVE, rel=1e-12)
    assert bgnbd.p_alive(MODEL, FADING) == pytest.approx(FADING_P_ALIVE, rel=1e-12)
    assert bgnbd.p_alive(MODEL, QUIET) == pytest.approx(QUIET_P_ALIVE, rel=1e-12)
    assert bgnbd.p_alive(MODEL, LAPSED) == pytest.approx(LAPSED_P_ALIVE, rel=1e-12)
    assert REGULAR_P_ALIVE >= 0.5 > FADING_P_ALIVE and QUIET_P_ALIVE < 0.6
    assert bgnbd.p_alive(MODEL, STEADY) == pytest.approx(STEADY_P_ALIVE, rel=1e-12)
    assert bgnbd.conditional_expected(MODEL, REGULAR, 30 / 7) >= 0.3  # the other repurchase condition
    assert bgnbd.conditional_expected(MODEL, STEADY, 30 / 7) >= 0.3


def test_repurchase_due_and_win_back_on_one_timeline(stack_factory, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(bgnbd.FittedModel(MODEL, date(2026, 10, 31), 4, 0.0, 0.0).to_json())
    # purchase days in UTC (the reporting zone's days), so the timeline's midnights are theirs
    stack = stack_factory(workers=2, sink=False, purchase_model_params=str(params), reporting_timezone="UTC")

    regular, fading = Member("MR1", zone=LA), Member("MR2", zone=LA)  # repurchase due; P(alive) too low
    valuable, small = Member("MW1", zone=LA), Member("MW2", zone=LA)  # 2,400 in all, quiet; 300, quiet
    members = [regular, fading, valuable, small]
    assert not any(in_holdout(rule, f"member_id:{m.member_id}", 0.1) for m in members
                   for rule in ("repurchase_due", "win_back"))

    reader = TopicReader(stack.settings)
    produced: list[dict] = []

    def produce(*events: dict) -> None:
        produced.extend(events)
        stack.produce([encoded(e) for e in events])

    def order(m: Member, day: int, revenue: float) -> dict:
        return m.order(f"o{day}", U + day * D + 2 * MIN, revenue)

    clock = [U]

    def settled_then(t_ms: int) -> None:
        """The events produced so far through identity (so none shares a batch with the tick), then to
        ``t_ms``: a features snapshot taken for an event is as of that event."""
        stack.wait_for(reader, lambda t: len(t.event_ids) == len(produced))
        advance(stack, t_ms)
        clock[0] = t_ms

    def until(t_ms: int) -> None:
        """Stream time to ``t_ms`` a week at most at a time, stopping at every lifecycle boundary on the
        way, as a running clock would pass them: a boundary is snapshotted at its time, not at a later
        jump (one jump from day 30 to day 74 would snapshot the quiet members' day-44 boundary on day 74)."""
        stops = sorted({t for t in (*BOUNDARIES, *range(clock[0] + 7 * D, t_ms, 7 * D)) if clock[0] < t < t_ms})
        for t in (*stops, t_ms):
            advance(stack, t)
        clock[0] = t_ms

    def triggers() -> dict[tuple[str, str], dict]:
        reader.poll(timeout=1.0)
        return {(r["rule"], r["person_id"]): r for r in reader.tally.triggers.values()}

    # Day 0, 00:00 UTC: everyone follows the official account and consents to WeChat marketing (first
    # seen at U), then orders. The fading buyer orders again on day 4 and visits on day 7, when their
    # next purchase (day 8) is due within two days but P(alive) is 0.38; the regular buyer orders every
    # 8 days up to day 24 (next purchase: day 32); the quiet members order on days 0, 7 and 14, then stop.
    produce(*[e for m in members for e in m.reachable_on_wechat(U)],
            *[order(m, 0, 800.0 if m is valuable else 100.0) for m in members])
    settled_then(U + H)  # the first wait: the workers are up
    # The fading buyer's order and visit arrive before stream time reaches them: at every step from day 6
    # on (their rhythm due) their features are the visit's, P(alive) 121/317.
    produce(order(fading, 4, 100.0), fading.event("v7", "page_viewed", U + 7 * D + 2 * MIN))
    settled_then(U + 7 * D)
    produce(order(valuable, 7, 800.0), order(small, 7, 100.0), order(regular, 8, 100.0))
    settled_then(U + 8 * D + H)
    produce(order(valuable, 14, 800.0), order(small, 14, 100.0), order(regular, 16, 100.0))
    settled_then(U + 16 * D + H)
    person = {m: reader.tally.person_of_event[f"{m.member_id}-consent"] for m in members}
    assert triggers() == {}, "nothing before a next purchase comes within two days"

    # The quiet members' rhythm (days 0, 7, 14: next purchase day 21, P(alive) 2/3) comes due on day 19,
    # 00:00, two days ahead: their daily recheck then starts repurchase_due for both.
    steady_due = U + 21 * D
    until(U + 19 * D - 1)
    assert triggers() == {}, "a millisecond before the quiet members' next purchase is within two days"
    until(U + 19 * D)
    got = stack.wait_for(reader, lambda t: len(t.triggers) >= 2) and triggers()
    assert set(got) == {("repurchase_due", person[valuable]), ("repurchase_due", person[small])}
    for m in (valuable, small):
        due = got[("repurchase_due", person[m])]
        assert due["trigger_id"] == trigger_id("repurchase_due", str(steady_due), person[m])
        assert (due["due_at_ms"], due["fired_at_ms"], due["outcome"], due["channel"]) == (
            U + 19 * D, U + 19 * D, "fire", "wechat_oa")
        assert due["payload"] == {"due_ms": str(steady_due)}
        assert float(due["evidence"]["features.p_alive"]) == pytest.approx(STEADY_P_ALIVE, rel=1e-12)
    early = set(got)
    produce(order(regular, 24, 100.0))
    settled_then(U + 24 * D + H)
    assert set(triggers()) == early, "nothing for the regular buyer before day 30"

    # repurchase_due: the next purchase (day 32, midnight UTC) is within two days from day 30 00:00,
    # the regular buyer's first-seen + 30 days, when their features are snapshotted again.
    due_ms = U + 32 * D
    until(U + 30 * D - 1)
    assert set(triggers()) == early, "a millisecond before the next purchase is within two days"
    until(U + 30 * D)
    got = stack.wait_for(reader, lambda t: len(t.triggers) >= 3) and triggers()
    assert set(got) == early | {("repurchase_due", person[regular])}
    refill = got[("repurchase_due", person[regular])]
    assert refill["trigger_id"] == trigger_id("repurchase_due", str(due_ms), person[regular])
    assert (refill["member_id"], refill["correlation_key"], refill["outcome"], refill["reason"]) == (
        "MR1", str(due_ms), "fire", None)
    assert (refill["channel"], refill["handle"]) == ("wechat_oa", regular.openid)  # followed and consented
    assert (refill["due_at_ms"], refill["fired_at_ms"]) == (U + 30 * D, U + 30 * D)
    assert refill["payload"] == {"due_ms": str(due_ms)}
    evidence = refill["evidence"]
    assert (evidence["features.next_purchase_ms"], evidence["now"]) == (str(due_ms), str(U + 30 * D))
    assert float(evidence["features.p_alive"]) == pytest.approx(REGULAR_P_ALIVE, rel=1e-12)
    assert float(evidence["features.expected_purchases_30d"]) == pytest.approx(
        bgnbd.conditional_expected(MODEL, REGULAR, 30 / 7), rel=1e-12)

    # win_back: the valuable member's last order (day 14, 00:02) is 60 days old on day 74, 00:02, with
    # no snapshot then (the at-risk one was on day 44, the lapsed one comes on day 104): their first
    # daily recheck after that, day 75 at 00:00 UTC, counts the days to now and starts it.
    last_order_ms = U + 14 * D + 2 * MIN
    quiet_ms = U + 75 * D
    # Stream time stops at day 74's midnight (59 days: nothing), as a running clock's recheck would, then
    # just before day 75's: 60 days are up at 00:02 but nothing looks at the person before midnight.
    until(U + 74 * D)  # through the at-risk boundary (last seen + 30 days: day 44, 00:02)
    until(quiet_ms - 1)
    assert set(triggers()) == early | {("repurchase_due", person[regular])}, "not before the recheck"
    until(quiet_ms)
    got = stack.wait_for(reader, lambda t: len(t.triggers) >= 4) and triggers()
    assert set(got) == early | {("repurchase_due", person[regular]), ("win_back", person[valuable])}
    back = got[("win_back", person[valuable])]
    assert back["trigger_id"] == trigger_id("win_back", str(last_order_ms), person[valuable])
    assert (back["member_id"], back["correlation_key"], back["outcome"], back["reason"]) == (
        "MW1", str(last_order_ms), "fire", None)
    assert (back["channel"], back["handle"]) == ("wechat_oa", valuable.openid)
    assert (back["due_at_ms"], back["fired_at_ms"]) == (quiet_ms, quiet_ms)
    assert back["payload"] == {"days_since_last_order": "60"}
    assert (back["evidence"]["features.revenue_total"], back["evidence"]["features.days_since_last_order"]) == (
        "2400.0", "60")
    assert float(back["evidence"]["features.p_alive"]) == pytest.approx(QUIET_P_ALIVE, rel=1e-12)

    # Past every boundary of the small spender (lapsed on day 104 too) and the fading buyer: still
    # nothing for them, and one record per trigger id.
    until(U + 120 * D)
    assert set(triggers()) == early | {("repurchase_due", person[regular]), ("win_back", person[valuable])}
    assert all(n == 1 for n in reader.tally.trigger_records.values())
    reader.close()

    # Why, from the published snapshots (members.features): the fading buyer's visit was snapshotted
    # with the next purchase due (day 8) and P(alive) 121/317; the quiet members were snapshotted on
    # their boundaries only (first seen + 30, last seen + 30 and + 90 days), never on day 74.
    snapshots = Snapshots(stack.settings)

    def published(m: Member) -> list[dict]:
        return [r for r in snapshots.of.get(person[m], []) if r is not None]

    def all_in() -> bool:
        snapshots.poll()
        return all(any(r["as_of_ms"] >= U + 97 * D for r in published(m)) for m in (fading, valuable, small))

    _until("the lapsed snapshots", all_in)
    snapshots.close()
    # the latest snapshot as of the visit: the day-4 order may reach the features stage before or
    # after the visit (produced together, on different route keys), the last snapshot has both
    visit = [r for r in published(fading) if r["as_of_ms"] == U + 7 * D + 2 * MIN][-1]
    assert visit["next_purchase_ms"] == U + 8 * D
    assert visit["p_alive"] == pytest.approx(FADING_P_ALIVE, rel=1e-12)
    for m, revenue in ((valuable, 2400.0), (small, 300.0)):
        quiet = [r for r in published(m) if r["as_of_ms"] > last_order_ms]
        assert [(r["as_of_ms"], r["days_since_last_order"]) for r in quiet] == [
            (U + 30 * D, 15), (last_order_ms + 30 * D, 30), (last_order_ms + 90 * D, 90)]  # 16 days less 2 minutes: 15
        assert quiet[-1]["revenue_total"] == revenue
        assert quiet[-1]["p_alive"] == pytest.approx(LAPSED_P_ALIVE, rel=1e-12)
