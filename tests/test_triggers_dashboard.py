"""The Triggers dashboard's ClickHouse panels against numbers worked out by hand, on the real
pipeline (two Faust workers, the sink, the embedded broker and chDB, a manual clock).

Seven members, days D1 .. D8 (2026-11-01 .. 11-08, Asia/Shanghai; UTC is 8 hours behind). The
built-in rules decide (streams/triggers/delivery.py, the default policy: 1 message a day and 3 a
week per person, quiet hours 21:00-09:00): cart_abandon (30 minutes without checkout or order,
12 h suppression window, hold-out 10%) and interest_shift (at once, 7 d window, hold-out 10%;
the stack runs with a short-term interest half-life of half a day, so ten men's basketball views
on D1 and four women's fashion views on D3 are a shift, as in tests/test_members_dashboard.py).
The hold-out draw is a hash of the rule and the member id: the member ids are picked so that B is
in cart_abandon's hold-out and H in interest_shift's, the others in neither (asserted first).
Reach: A, B, D, G, H follow the official account with their openid and consent to WeChat (D
withdraws it a minute later); C gives a phone and consents to SMS; E gives nothing.

  D1 10:00 carts of A B C D E (due 10:30), decided at the 11:00 tick:
           A fire wechat_oa, B holdout wechat_oa, C fire sms, D suppressed no_consent,
           E suppressed unreachable
  D1 14:00 A's second cart, decided at 15:00: suppressed suppression_window (A's runs to 23:00)
  D2 09:00 A's third cart, decided at 10:00: suppressed frequency_cap (A was sent one 23 h ago)
  D3 10:00-10:15 G's and H's fashion views: interest_shift G fire wechat_oa, H holdout wechat_oa,
           decided at stream time between the 10:00 tick and the last view (10:15)
Orders (attributed to the latest trigger sent or held out for the person before them, within 7
days, the attribution_days default):
  A D2 12:00 300 and D3 12:00 100 -> A's sent cart abandon (D1 11:00); D D2 12:00 150 -> none (its
  only trigger was suppressed); B D3 12:00 200 -> B's held-out cart abandon; G D4 11:00 250 -> G's
  interest shift; C D8 12:00 500 -> none (7 days and 1 hour after C's cart abandon).
  H never orders.

Ranges: all = D1 00:00 to D5 00:00 (daily interval), every decision; mid = D1 10:30 to D2 09:30
(hourly), the 11:00 decisions and A's suppression window, not the frequency cap (D2 10:00) or the
interest shifts (D3). A trigger's orders count wherever they fall (the range picks the triggers):
A's orders after mid's end still convert A's cart abandon.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from streams.triggers.delivery import in_holdout
from tests.conftest import T0, encoded, touchpoint
from tests.panels import panel_failures, settled
from tests.test_pipeline_e2e import _wait_until_triggers_stream_time

pytestmark = pytest.mark.e2e

UID = "touchline-triggers"
SHANGHAI = timezone(timedelta(hours=8))
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
MEMBER = {"A": "MA", "B": "MB3", "C": "MC", "D": "MD", "E": "ME", "G": "MG", "H": "ML"}
CART, SHIFT = "cart_abandon", "interest_shift"


def at(day: int, hh: int, mm: int = 0) -> int:
    """Epoch ms of day 1..8 (2026-11-01 .. 11-08), hh:mm in Asia/Shanghai."""
    return T0 + (day - 1) * DAY + hh * HOUR + mm * MIN


def ids(name: str, **more: str) -> dict[str, str]:
    return {"member_id": MEMBER[name], **more}


def wechat(name: str, withdraw: bool = False) -> list[dict[str, Any]]:
    """Follows the official account (its openid is the handle) and consents to WeChat marketing."""
    who = ids(name, wechat_openid=f"oid-{name}")
    consent = {"consent_channel": "wechat", "purpose": "marketing"}
    events = [touchpoint(f"{name}-follow", "wechat_followed", at(1, 8), "wechat_oa", identifiers=who,
                         properties={"account_id": "oa-1"}),
              touchpoint(f"{name}-consent", "consent_given", at(1, 8, 1), "wechat_oa", identifiers=who,
                         properties=consent)]
    if withdraw:
        events.append(touchpoint(f"{name}-withdraw", "consent_withdrawn", at(1, 8, 2), "wechat_oa", identifiers=who,
                                 properties=consent))
    return events


def cart(event_id: str, t: int, name: str) -> dict[str, Any]:
    return touchpoint(event_id, "product_added", t, identifiers=ids(name),
                      properties={"cart_id": f"cart-{event_id}", "product_id": "sku-1", "price": 99.0, "quantity": 1})


def order(event_id: str, t: int, name: str, revenue: float) -> dict[str, Any]:
    return touchpoint(event_id, "order_completed", t, identifiers=ids(name),
                      properties={"order_id": f"o-{event_id}", "revenue": revenue})


def views(name: str, day: int, hh: int, n: int, category: str) -> list[dict[str, Any]]:
    return [touchpoint(f"{name}-v{day}-{i}", "product_viewed", at(day, hh, 5 * i), identifiers=ids(name),
                       properties={"product_id": f"P-{category}", "category": category}) for i in range(n)]


TRIGGERS = "SELECT rule, correlation_key, member_id, outcome, reason, channel, toUnixTimestamp64Milli(fired_at) " \
           "FROM triggers FINAL ORDER BY rule, member_id, correlation_key"
ORDERS = "SELECT count() FROM touchpoints_enriched FINAL WHERE event_type = 'order_completed'"
# What the triggers table holds at the end, but the interest shifts' decision times (a range).
DECIDED = [
    [CART, "cart-a1", "MA", "fire", "", "wechat_oa", at(1, 11)],
    [CART, "cart-a2", "MA", "suppressed", "suppression_window", "", at(1, 15)],
    [CART, "cart-a3", "MA", "suppressed", "frequency_cap", "", at(2, 10)],
    [CART, "cart-b1", "MB3", "holdout", "", "wechat_oa", at(1, 11)],
    [CART, "cart-c1", "MC", "fire", "", "sms", at(1, 11)],
    [CART, "cart-d1", "MD", "suppressed", "no_consent", "", at(1, 11)],
    [CART, "cart-e1", "ME", "suppressed", "unreachable", "", at(1, 11)],
    [SHIFT, "women/fashion", "MG", "fire", "", "wechat_oa", None],
    [SHIFT, "women/fashion", "ML", "holdout", "", "wechat_oa", None],
]

RANGES = {
    "all": (datetime(2026, 11, 1, tzinfo=SHANGHAI), datetime(2026, 11, 5, tzinfo=SHANGHAI), 86_400),
    "mid": (datetime(2026, 11, 1, 10, 30, tzinfo=SHANGHAI), datetime(2026, 11, 2, 9, 30, tzinfo=SHANGHAI), 3_600),
}
SENT_CART = [[CART, "sms", 1], [CART, "wechat_oa", 1]]  # C; A
SUPPRESSED_D1 = [[CART, "no_consent", 1], [CART, "suppression_window", 1], [CART, "unreachable", 1]]  # D, A's 2nd, E
CONVERSION = ["rule", "channel", "sent", "sent_converted", "sent_conversion", "held_out", "held_out_converted",
              "held_out_conversion", "uplift"]
# cart abandon by SMS: C sent, no order within 7 days, nobody held out on SMS (no uplift); by WeChat: A sent and
# converted (2 orders), B held out and converted, uplift 0
CONVERSION_CART = [[CART, "sms", 1, 0, 0.0, 0, 0, None, None], [CART, "wechat_oa", 1, 1, 1.0, 1, 1, 1.0, 0.0]]
REVENUE = ["rule", "arm", "trigger_count", "orders", "orders_per_trigger", "revenue", "revenue_per_trigger"]
# cart abandon: held out B (1 order, 200); sent A and C (A's 2 orders, 300 + 100; C's order is outside the window)
REVENUE_CART = [[CART, "held out", 1, 1, 1.0, 200.0, 200.0], [CART, "sent", 2, 2, 1.0, 400.0, 200.0]]
EXPECTED: dict[int, dict[str, tuple[list[str], list[list[Any]]]]] = {
    # all: sent A C G, held out B H, suppressed D E and A's 2nd and 3rd carts; mid: the 11:00 ones and A's 2nd
    2: {"all": (["fired", "held_out", "suppressed"], [[3, 2, 4]]),
        "mid": (["fired", "held_out", "suppressed"], [[2, 1, 3]])},
    # sent by UTC day (all: D1 11:00 = 03:00 UTC, D3 10:00-10:15 = 02:00-02:15 UTC) and by UTC hour (mid)
    3: {"all": (["time", "rule", "fired"], [["2026-11-01 00:00:00", CART, 2], ["2026-11-03 00:00:00", SHIFT, 1]]),
        "mid": (["time", "rule", "fired"], [["2026-11-01 03:00:00", CART, 2]])},
    4: {"all": (["rule", "channel", "sent"], [*SENT_CART, [SHIFT, "wechat_oa", 1]]),  # G
        "mid": (["rule", "channel", "sent"], SENT_CART)},
    5: {"all": (["rule", "reason", "suppressed"], [[CART, "frequency_cap", 1], *SUPPRESSED_D1]),  # A's 3rd cart
        "mid": (["rule", "reason", "suppressed"], SUPPRESSED_D1)},
    # eligible = sent or held out: cart abandon A B C (B held out), interest shift G H (H held out)
    6: {"all": (["rule", "eligible", "held_out", "held_out_share"], [[CART, 3, 1, 1 / 3], [SHIFT, 2, 1, 0.5]]),
        "mid": (["rule", "eligible", "held_out", "held_out_share"], [[CART, 3, 1, 1 / 3]])},
    # interest shift by WeChat: G sent and converted, H held out without an order: uplift 1
    8: {"all": (CONVERSION, [*CONVERSION_CART, [SHIFT, "wechat_oa", 1, 1, 1.0, 1, 0, 0.0, 1.0]]),
        "mid": (CONVERSION, CONVERSION_CART)},
    # interest shift: held out H (no order), sent G (1 order, 250)
    9: {"all": (REVENUE, [*REVENUE_CART, [SHIFT, "held out", 1, 0, 0.0, 0.0, 0.0], [SHIFT, "sent", 1, 1, 1.0, 250.0, 250.0]]),
        "mid": (REVENUE, REVENUE_CART)},
}


def _count(n: int) -> Any:
    return lambda rows: rows == [[n]]


def _decisions(n: int) -> Any:
    return lambda rows: len(rows) == n


def test_triggers_panels_show_decisions_conversion_and_uplift(stack_factory) -> None:
    draws = {name: (in_holdout(CART, f"member_id:{m}", 0.1), in_holdout(SHIFT, f"member_id:{m}", 0.1))
             for name, m in MEMBER.items()}
    assert [n for n, (c, _) in draws.items() if c] == ["B"] and draws["H"][1] and not draws["G"][1]
    stack = stack_factory(workers=2, feature_short_half_life_days=0.5)
    s = stack.settings

    def step(events: list[dict[str, Any]], tick: int | None = None) -> None:
        stack.produce([encoded(e) for e in events])
        if tick is not None:
            stack.tick(tick)

    contacts = [*wechat("A"), *wechat("B"), *wechat("D", withdraw=True), *wechat("G"), *wechat("H"),
                touchpoint("C-consent", "consent_given", at(1, 8, 1), identifiers=ids("C", phone="13800138003"),
                           properties={"consent_channel": "sms", "purpose": "marketing"})]
    basketball = [*views("G", 1, 9, 10, "men/basketball/shoes"), *views("H", 1, 9, 10, "men/basketball/shoes")]
    carts = [cart("a1", at(1, 10), "A"), cart("b1", at(1, 10), "B"), cart("c1", at(1, 10), "C"),
             cart("d1", at(1, 10), "D"), cart("e1", at(1, 10), "E")]
    step(contacts + basketball + carts, tick=at(1, 11))
    settled(s, TRIGGERS, _decisions(5), "the D1 11:00 decisions")
    step([cart("a2", at(1, 14), "A")], tick=at(1, 15))
    settled(s, TRIGGERS, _decisions(6), "A's second cart")
    step([cart("a3", at(2, 9), "A")], tick=at(2, 10))
    settled(s, TRIGGERS, _decisions(7), "A's third cart")
    # the D3 10:00 tick is through before the views: their decisions take stream time from 10:00
    step([order("oa1", at(2, 12), "A", 300.0), order("od1", at(2, 12), "D", 150.0)], tick=at(3, 10))
    _wait_until_triggers_stream_time(stack, at(3, 10))
    step([*views("G", 3, 10, 4, "women/fashion/dresses"), *views("H", 3, 10, 4, "women/fashion/dresses")])
    settled(s, TRIGGERS, _decisions(9), "the interest shifts")
    step([order("ob1", at(3, 12), "B", 200.0), order("oa2", at(3, 12), "A", 100.0), order("og1", at(4, 11), "G", 250.0),
          order("oc1", at(8, 12), "C", 500.0)], tick=at(8, 13))
    _wait_until_triggers_stream_time(stack, at(8, 13))
    settled(s, ORDERS, _count(6), "the orders")

    decided = settled(s, TRIGGERS, _decisions(9), "every decision")
    assert [r[:6] for r in decided] == [r[:6] for r in DECIDED], decided
    assert [r[6] for r in decided if r[0] == CART] == [r[6] for r in DECIDED if r[0] == CART], decided
    assert all(at(3, 10) <= r[6] <= at(3, 10, 15) for r in decided if r[0] == SHIFT), decided

    failures = panel_failures(s, UID, EXPECTED, RANGES)
    assert not failures, "\n".join(failures)
