"""The Members dashboard's ClickHouse panels against numbers worked out by hand, on the real
pipeline (two Faust workers, the sink, the embedded broker and chDB, a manual clock).

Five persons over four days (2026-11-01 .. 11-04 in Asia/Shanghai, D1 .. D4). Each day's events
go in, then a clock tick to 23:00 that day, so every snapshot the features agent publishes for a
day (after events, or at a lifecycle boundary stream time reaches) is dated on that day. The
stack runs with short lifecycle spans so that a few days move persons through the stages:
new while first seen less than 2 days ago, at risk after 2 quiet days, lapsed after 3; and a
short-term interest half-life of half a day. Grid (90 days) and browse (30 days) windows and
thresholds are the defaults: high frequency at 3 orders, high basket at an average of 500,
browsing without buying at 3 sessions, consultations or games and no order.

  A  D1 10:00 page view, 10:10 order 100; D2 09:00 and 09:30 orders 100, 100
       D1 new, low frequency low basket (1 order, AOV 100); D2 new, high frequency low basket
       (3 orders); D3 10:00 (first seen + 2 days) active; D4 09:30 (last seen + 2 days) at risk
  B  D1 20:00 order 800; D4 11:00 order 600
       D1 new, low frequency high basket; D2 no snapshot (carried over); D3 20:00 (last seen +
       2 days) at risk; D4 active (first seen over 2 days ago, seen now), 2 orders, AOV 700
  C  D2 10:00, 12:00, 14:00 page views (3 sessions, no order)
       D2 new, browsing without buying, no grid cell; D3 carried over; D4 10:00 active (first
       seen + 2 days), 14:00 at risk (last seen + 2 days): at risk at the day's end
  D  D1 09:00-09:45 ten product views in men/basketball; D3 10:00-10:15 four in women/fashion
       D1 new; D2 carried over; D3 active (first seen + 2 days) with an interest shift: long-term
       interest 10:4, short-term (half-life 12 h, basketball 2 days old) mostly fashion,
       Jensen-Shannon divergence over the 0.25 threshold with over 3 decayed short-term events; D4 carried
       over (its next boundary, at risk, is on D5)
  E  D1 15:00 page view with cookie c-e only: a person of its own, new; D2 15:00 login with c-e and
       member ME: the cookie's person is merged into ME's, which takes over its history (first
       seen D1 15:00) and the cookie's person is tombstoned. ME: D2 new; D3 15:00 (first seen + 2
       days) active; D4 15:00 (last seen + 2 days) at risk. The cookie's person is left out of
       every day, D1 included: merged away, its events count under ME from D2

End-of-day states (lifecycle / grid cell / flags), the rows every panel over time is read from:
       D1                 D2                    D3                    D4
  A    new / lflb         new / hflb            active / hflb         at_risk / hflb
  B    new / lfhb         new / lfhb            at_risk / lfhb        active / lfhb
  C    -                  new / - / browsing    new / - / browsing    at_risk / - / browsing
  D    new / -            new / -               active / - / shift    active / - / shift
  E    (merged away)      new / -               active / -            at_risk / -

Purchase model: the workers load BG/NBD parameters r = 1, alpha = 1/2, a = 0.8, b = 2 (per week)
from a params file. Order days are UTC days (D1 10:10 is 11-01 02:10 UTC; D4 11:00 is 11-04 03:00
UTC), and every latest snapshot of A and B is taken on 11-04 UTC, so T = 3/7 week for both:
  A  orders on 11-01 and 11-02 (twice): x = 1, t_x = 1/7, T = 3/7
       P(alive) = 1 / (1 + a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))
                = 1 / (1 + 0.8/2 (13/9)^2) = 81 / 148.6 = 0.545: the 50-60% bucket
  B  orders on 11-01 and 11-04: x = 1, t_x = T = 3/7: P(alive) = b / (a + b) = 2 / 2.8 = 0.714: 70-80%
  C, D, E never ordered: no P(alive), not in the distribution
Expected purchases in 30 days: the closed form (bgnbd.conditional_expected) at those inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from streams.features import bgnbd
from streams.identity.links import person_id_for
from tests.conftest import T0, encoded, touchpoint
from tests.panels import panel_failures, settled

pytestmark = pytest.mark.e2e

UID = "touchline-members"
SHANGHAI = timezone(timedelta(hours=8))
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
FEATURES = {"feature_new_days": 2, "feature_at_risk_days": 2, "feature_lapsed_days": 3,
            "feature_short_half_life_days": 0.5}


def at(day: int, hh: int, mm: int = 0) -> int:
    """Epoch ms of day 1..4 (2026-11-01 .. 11-04), hh:mm in Asia/Shanghai."""
    return T0 + (day - 1) * DAY + hh * HOUR + mm * MIN


def ids(name: str) -> dict[str, str]:
    return {"member_id": f"M{name}"}


def person(name: str) -> str:
    return person_id_for(f"member_id:M{name}")


COOKIE = {"anonymous_id": "c-e"}
COOKIE_PERSON = person_id_for("anonymous_id:c-e")


def order(event_id: str, t: int, name: str, revenue: float) -> dict[str, Any]:
    return touchpoint(event_id, "order_completed", t, "store_pos", identifiers=ids(name), store_id="S1",
                      properties={"order_id": f"o-{event_id}", "revenue": revenue})


def view(event_id: str, t: int, name: str, category: str) -> dict[str, Any]:
    return touchpoint(event_id, "product_viewed", t, "app", identifiers=ids(name),
                      properties={"product_id": f"P-{category}", "category": category})


DAYS: dict[int, list[dict[str, Any]]] = {
    1: [touchpoint("a1", "page_viewed", at(1, 10), identifiers=ids("A")), order("a2", at(1, 10, 10), "A", 100.0),
        order("b1", at(1, 20), "B", 800.0),
        *(view(f"d{i}", at(1, 9, 5 * i), "D", "men/basketball/shoes") for i in range(10)),
        touchpoint("e1", "page_viewed", at(1, 15), identifiers=COOKIE)],
    2: [order("a3", at(2, 9), "A", 100.0), order("a4", at(2, 9, 30), "A", 100.0),
        *(touchpoint(f"c{i}", "page_viewed", at(2, 10 + 2 * i), identifiers=ids("C")) for i in range(3)),
        touchpoint("e2", "login", at(2, 15), identifiers={**COOKIE, **ids("E")})],
    3: [view(f"f{i}", at(3, 10, 5 * i), "D", "women/fashion/dresses") for i in range(4)],
    4: [order("b2", at(4, 11), "B", 600.0)],
}
# Each person's latest snapshot [person, lifecycle, grid cell, browsing, shift], first once the day's
# events are in (what they alone decide; lifecycle boundaries the events' stream time passes may
# be there too), then at the day's end, after the tick. The next step waits for both: a tick in one
# ingest batch with later events would date that day's boundary snapshots by those events.
LATEST = "SELECT person_id, lifecycle, member_grid, browse_without_buying, interest_shift " \
         "FROM member_snapshots FINAL WHERE is_deleted = 0 ORDER BY person_id"


def _states(**of: tuple[str, str, bool, bool]) -> list[list[Any]]:
    return sorted([COOKIE_PERSON if name == "cookie" else person(name), *state] for name, state in of.items())


NEW, ACTIVE, AT_RISK = "new", "active", "at_risk"
HFLB, LFHB, LFLB = "high_frequency_low_basket", "low_frequency_high_basket", "low_frequency_low_basket"
AFTER_EVENTS = {  # day -> {person: (column index in LATEST, value)} the day's events decide
    1: {"A": (2, LFLB), "B": (2, LFHB), "D": (1, NEW), "cookie": (1, NEW)},
    2: {"A": (2, HFLB), "C": (3, True), "E": (1, NEW)},
    3: {"D": (4, True)},
    4: {"B": (1, ACTIVE)},
}
END_OF_DAY = {
    1: _states(A=(NEW, LFLB, False, False), B=(NEW, LFHB, False, False), D=(NEW, "", False, False),
               cookie=(NEW, "", False, False)),
    2: _states(A=(NEW, HFLB, False, False), B=(NEW, LFHB, False, False), C=(NEW, "", True, False),
               D=(NEW, "", False, False), E=(NEW, "", False, False)),  # the cookie's person merged into E
    3: _states(A=(ACTIVE, HFLB, False, False), B=(AT_RISK, LFHB, False, False), C=(NEW, "", True, False),
               D=(ACTIVE, "", False, True), E=(ACTIVE, "", False, False)),
    4: _states(A=(AT_RISK, HFLB, False, False), B=(ACTIVE, LFHB, False, False), C=(AT_RISK, "", True, False),
               D=(ACTIVE, "", False, True), E=(AT_RISK, "", False, False)),
}

D1, D2, D3, D4 = "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"
# ALL: D1 00:00 to D5 00:00, days D1-D4. MID: D2 12:00 to D3 12:00, days D2 and D3 (each day's
# state at its end, wherever the range cuts it; D2's flows compare with D1's end, before the range).
RANGES = {
    "all": (datetime(2026, 11, 1, tzinfo=SHANGHAI), datetime(2026, 11, 5, tzinfo=SHANGHAI), 86_400),
    "mid": (datetime(2026, 11, 2, 12, tzinfo=SHANGHAI), datetime(2026, 11, 3, 12, tzinfo=SHANGHAI), 3_600),
}
NOW = (["persons", "new_persons", "active_persons", "at_risk_persons", "lapsed_persons", "browsing_without_buying",
        "shifting_interest"], [[5, 0, 2, 3, 0, 1, 1]])  # active B D, at risk A C E; browsing C; shift D
GRID_NOW = (["cell", "persons"], [[HFLB, 1], [LFHB, 1]])  # A, B; C and D have no order
# Most recently seen first: D (D3 10:15 = UTC 02:15), C (D2 14:00 = UTC 06:00).
LIST_NOW = (["person_id", "member_id", "browsing_without_buying", "shifting_interest", "last_seen"], [
    [person("D"), "MD", False, True, "2026-11-03 02:15:00"],
    [person("C"), "MC", True, False, "2026-11-02 06:00:00"],
])
PURCHASE_MODEL = bgnbd.Params(r=1.0, alpha=0.5, a=0.8, b=2.0)
A_INPUTS, B_INPUTS = bgnbd.Inputs(1, 1 / 7, 3 / 7), bgnbd.Inputs(1, 3 / 7, 3 / 7)
A_P_ALIVE, B_P_ALIVE = 81 / 148.6, 2 / 2.8
# Persons with an order by P(alive) tenth: range, persons, mean P(alive), expected purchases in 30 days
P_ALIVE_NOW = (["p_alive_range", "persons", "mean_p_alive", "expected_purchases_30d"], [
    ["50–60%", 1, A_P_ALIVE, bgnbd.conditional_expected(PURCHASE_MODEL, A_INPUTS, 30 / 7)],
    ["70–80%", 1, B_P_ALIVE, bgnbd.conditional_expected(PURCHASE_MODEL, B_INPUTS, 30 / 7)],
])
EXPECTED: dict[int, dict[str, tuple[list[str], list[list[Any]]]]] = {
    # Persons by lifecycle stage at each day's end (table above, column by column)
    2: {"all": (["day", "stage", "persons"], [
            [D1, "new", 3],  # A B D (not the cookie's person, merged away since)
            [D2, "new", 5],  # A B C D E (B and D carried over)
            [D3, "active", 3], [D3, "at_risk", 1], [D3, "new", 1],  # A D E; B; C carried over
            [D4, "active", 2], [D4, "at_risk", 3]]),  # B D; A C E
        "mid": (["day", "stage", "persons"], [
            [D2, "new", 5],
            [D3, "active", 3], [D3, "at_risk", 1], [D3, "new", 1]])},
    # Persons per grid cell (C, D and E never ordered: no cell)
    3: {"all": (["day", "cell", "persons"], [
            [D1, LFHB, 1], [D1, LFLB, 1],  # B (1 order of 800); A (1 of 100)
            [D2, HFLB, 1], [D2, LFHB, 1],  # A (3 orders, AOV 100); B carried over
            [D3, HFLB, 1], [D3, LFHB, 1],  # both carried over (B's at-risk snapshot keeps its cell)
            [D4, HFLB, 1], [D4, LFHB, 1]]),  # A carried over; B 2 orders, AOV (800 + 600) / 2 = 700
        "mid": (["day", "cell", "persons"], [[D2, HFLB, 1], [D2, LFHB, 1], [D3, HFLB, 1], [D3, LFHB, 1]])},
    # Browsing without buying (C from D2) and interest shift (D from D3), days with any person
    4: {"all": (["day", "browsing_without_buying", "shifting_interest"], [
            [D1, 0, 0], [D2, 1, 0], [D3, 1, 1], [D4, 1, 1]]),
        "mid": (["day", "browsing_without_buying", "shifting_interest"], [[D2, 1, 0], [D3, 1, 1]])},
    # Lifecycle flows: the stage at the day's end against the day before's
    5: {"all": (["day", "from_stage", "to_stage", "persons"], [
            [D1, "none", "new", 3],  # A B D first seen
            [D2, "none", "new", 2],  # C first seen, E's first snapshot; A (new -> new) is no flow
            [D3, "new", "active", 3], [D3, "new", "at_risk", 1],  # A D E; B
            [D4, "active", "at_risk", 2], [D4, "at_risk", "active", 1], [D4, "new", "at_risk", 1]]),  # A E; B; C
        "mid": (["day", "from_stage", "to_stage", "persons"], [
            [D2, "none", "new", 2],
            [D3, "new", "active", 3], [D3, "new", "at_risk", 1]])},
    7: {"all": NOW, "mid": NOW},  # the latest snapshots, whatever the range
    8: {"all": GRID_NOW, "mid": GRID_NOW},
    9: {"all": LIST_NOW, "mid": LIST_NOW},
    10: {"all": P_ALIVE_NOW, "mid": P_ALIVE_NOW},
}


def _events_in(day: int) -> Callable[[list[list[Any]]], bool]:
    want = {COOKIE_PERSON if name == "cookie" else person(name): check for name, check in AFTER_EVENTS[day].items()}

    def done(rows: list[list[Any]]) -> bool:
        latest = {r[0]: r for r in rows}
        return all(p in latest and latest[p][i] == v for p, (i, v) in want.items())

    return done


def test_hand_worked_p_alive_is_the_closed_form() -> None:
    assert A_P_ALIVE == pytest.approx(bgnbd.p_alive(PURCHASE_MODEL, A_INPUTS), rel=1e-12)
    assert B_P_ALIVE == pytest.approx(bgnbd.p_alive(PURCHASE_MODEL, B_INPUTS), rel=1e-12)


def test_members_panels_show_segments_over_time_flows_and_now(stack_factory, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(bgnbd.FittedModel(PURCHASE_MODEL, date(2026, 10, 31), 5, 0.0, 0.0).to_json())
    stack = stack_factory(workers=2, purchase_model_params=str(params), **FEATURES)
    for day, events in DAYS.items():
        stack.produce([encoded(e) for e in events])
        settled(stack.settings, LATEST, _events_in(day), f"D{day}'s events: latest snapshots")
        stack.tick(at(day, 23))
        settled(stack.settings, LATEST, lambda rows, want=END_OF_DAY[day]: rows == want,
                f"the end of D{day}: latest snapshots")

    failures = panel_failures(stack.settings, UID, EXPECTED, RANGES)
    assert not failures, "\n".join(failures)
