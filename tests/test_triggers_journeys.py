"""Scripted journeys on 2 workers and a test clock: a trigger defined only by a YAML file in
TOUCHLINE_TRIGGERS_DIR, the delivery rules end to end (frequency caps across triggers, quiet hours in
the person's time zone, hold-out) and browse without buying timed by the campaign calendar.

One stack and one timeline for all of them. Every step moves the test clock to a time T and waits
until the triggers stage has applied it, then produces events later than T and earlier than the next
step's time; so a wait is decided at the first step at or past its due time, and its record's
``fired_at_ms`` is that step's time. Times are Shanghai wall time (``at``), days relative to DAY0
(2027-05-30); the 618 campaign's warm-up starts 05-28, its sale 06-01.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from streams.reference import loader
from streams.tally import TopicReader
from streams.triggers.delivery import in_holdout, trigger_id
from tests.conftest import encoded
from tests.test_triggers_e2e import DAY0, MIN, D, H, Member, advance

pytestmark = pytest.mark.e2e

BIG_ORDER = """\
name: big_order_thanks
description: >
  An order of 1,000 or more: thank the person on WeChat, once per order.
start:
  events: [order_completed]
  when: event.properties.order.revenue >= 1000
key: event.properties.order.order_id
payload:
  order_id: event.properties.order.order_id
  revenue: event.properties.order.revenue
priority: 90
channels: [wechat_oa]
"""
CAMPAIGN = {"campaign_id": "618", "name": "618", "starts_on": "2027-06-01", "ends_on": "2027-06-18",
            "warmup_starts_on": "2027-05-28", "channels": []}


def at(day: int, hour: int, minute: int = 0) -> int:
    """Shanghai wall time on DAY0 + ``day``."""
    return DAY0 + day * D + hour * H + minute * MIN


def local(zone: str, when: str) -> int:
    return int(dt.datetime.fromisoformat(when).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_a_new_definition_the_delivery_rules_and_browse_without_buying_on_one_timeline(stack_factory, tmp_path: Path) -> None:
    defs = tmp_path / "my-triggers"
    defs.mkdir()
    (defs / "big_order_thanks.yaml").write_text(BIG_ORDER)
    stack = stack_factory(workers=0, sink=False, triggers_dir=str(defs))
    calendar = tmp_path / "calendar.jsonl"
    calendar.write_text(json.dumps(CAMPAIGN) + "\n")
    assert loader.load(stack.settings, calendar, "calendar").loaded == 1  # before the workers start
    for i in range(2):
        stack.supervisor.start_worker(i)

    browser, buyer = Member("MB1"), Member("MN1")  # browse without buying; the same, with an order
    capped, small = Member("MF1"), Member("MC1")  # hits the frequency caps; an order under 1,000
    held = next(Member(f"MH{i}") for i in range(100) if in_holdout("cart_abandon", f"member_id:MH{i}", 0.1))
    shanghai, london = Member("MS1"), Member("ML1", zone="Europe/London")  # quiet hours in their zones
    members = [browser, buyer, capped, small, held, shanghai, london]
    assert not any(in_holdout(rule, f"member_id:{m.member_id}", 0.1) for m in (capped, shanghai, london)
                   for rule in ("cart_abandon", "browse_without_buying"))
    assert not in_holdout("browse_without_buying", "member_id:MB1", 0.1)
    # 21:40 in London on 05-28 (BST) is 04:40 on 05-29 in Shanghai; 09:00 the next morning in London is 16:00 there
    assert local("Europe/London", "2027-05-28T21:40") == at(-1, 4, 40)
    assert local("Europe/London", "2027-05-29T09:00") == at(-1, 16)

    reader = TopicReader(stack.settings)
    produced: list[dict] = []

    def produce(*events: dict) -> None:
        """Produce and wait until identity has passed them on: a clock tick produced right after
        could otherwise share their batch, and a decision without a wait would be taken at the
        tick's stream time instead of its event's."""
        produced.extend(events)
        stack.produce([encoded(e) for e in events])
        stack.wait_for(reader, lambda t: len(t.event_ids) == len(produced))

    # Everyone reachable on WeChat (followed, consented) 22 days before; the browser and the buyer visit
    # on three days (3 sessions in 30 days: browsing without buying), 3 weeks before the sale: too early.
    produce(*[e for m in members for e in m.reachable_on_wechat(at(-22, 10))])
    produce(*[m.event(f"v{-d}", "page_viewed", at(d, 12)) for m in (browser, buyer) for d in (-22, -21, -20)])
    advance(stack, at(-20, 13))
    produce(buyer.order("o-N", at(-6, 12), 300.0))  # the buyer orders: not browsing without buying any more
    advance(stack, at(-5, 11))
    reader.poll(timeout=1.0)
    assert reader.tally.triggers == {}

    # 6 days before the sale: the browser's visit starts browse_without_buying, the buyer's nothing;
    # an order under 1,000 starts nothing; the capped member's first cart.
    produce(browser.event("v5", "page_viewed", at(-5, 12)), buyer.event("v5", "page_viewed", at(-5, 12)),
            small.order("o-C", at(-5, 14), 999.0), capped.cart("F1", at(-4, 10)))
    advance(stack, at(-4, 10, 30))  # F1 due: fires (the member's first message)
    produce(capped.order("o-F", at(-4, 14), 1200.0),  # big_order_thanks 3.5 h later: over the daily cap
            capped.cart("F2", at(-3, 11)))
    advance(stack, at(-3, 11, 30))  # F2 fires: the last send is 25 h old
    produce(held.cart("H1", at(-3, 14)), browser.event("v3", "page_viewed", at(-3, 12)))  # once per campaign
    advance(stack, at(-3, 14, 30))  # H1: held out
    produce(held.order("o-H", at(-3, 16), 1200.0),  # sent: a hold-out uses no cap
            capped.cart("F3", at(-2, 11)))
    advance(stack, at(-2, 11, 30))  # F3 fires: 3 sends in 7 days
    produce(shanghai.cart("S1", at(-2, 20, 50)))
    advance(stack, at(-2, 21, 20))  # S1 due at 21:20 in Shanghai: deferred to 09:00
    produce(london.cart("L1", at(-1, 4, 40)))
    advance(stack, at(-1, 5, 10))  # L1 due at 22:10 in London: deferred to 09:00 London time
    advance(stack, at(-1, 9))  # S1 fires; 02:00 in London: L1 waits
    produce(capped.cart("F4", at(-1, 11)))
    advance(stack, at(-1, 11, 30))  # F4 due: a 4th message in 7 days is over the weekly cap
    advance(stack, at(-1, 16))  # 09:00 in London: L1 fires
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == len(produced) and len(t.triggers) >= 10)
    reader.poll(timeout=1.0)
    reader.close()

    person = {m: tally.person_of_event[f"{m.member_id}-consent"] for m in members}
    got = {(r["rule"], r["correlation_key"]): r for r in tally.triggers.values()}
    assert all(n == 1 for n in tally.trigger_records.values())  # one record per trigger id

    def sent(m: Member, due: int) -> tuple:
        return person[m], "fire", None, "wechat_oa", m.openid, due

    cart, browse, thanks = "cart_abandon", ("browse_without_buying", "618"), "big_order_thanks"
    # Nothing for the buyer, nor for the order under 1,000, nor a second browse_without_buying.
    assert {k: (r["person_id"], r["outcome"], r["reason"], r["channel"], r["handle"], r["due_at_ms"])
            for k, r in got.items()} == {
        browse: sent(browser, at(-5, 12)),
        (cart, "F1"): sent(capped, at(-4, 10, 30)),
        (thanks, "o-F"): (person[capped], "suppressed", "frequency_cap", None, None, at(-4, 14)),  # 1 a day
        (cart, "F2"): sent(capped, at(-3, 11, 30)),
        (cart, "H1"): (person[held], "holdout", None, "wechat_oa", None, at(-3, 14, 30)),
        (thanks, "o-H"): sent(held, at(-3, 16)),
        (cart, "F3"): sent(capped, at(-2, 11, 30)),
        (cart, "S1"): sent(shanghai, at(-2, 21, 20)),
        (cart, "L1"): sent(london, at(-1, 5, 10)),
        (cart, "F4"): (person[capped], "suppressed", "frequency_cap", None, None, at(-1, 11, 30)),  # 3 a week
    }
    # When: a wait is decided at the step that reaches its due time, unless quiet hours defer it to
    # their end in the person's zone (09:00 in Shanghai; in London, 16:00 in Shanghai); a decision
    # without a wait on its event's batch, at that batch's stream time (after the step before the event).
    when = {k: r["fired_at_ms"] for k, r in got.items()}
    london_fired = dt.datetime.fromtimestamp(when[(cart, "L1")] / 1000, ZoneInfo("Europe/London"))
    assert london_fired.isoformat() == "2027-05-29T09:00:00+01:00", "quiet hours end at 09:00 in the person's zone"
    assert {k: t for k, t in when.items() if k[0] == cart} == {
        (cart, "F1"): at(-4, 10, 30), (cart, "F2"): at(-3, 11, 30), (cart, "H1"): at(-3, 14, 30),
        (cart, "F3"): at(-2, 11, 30), (cart, "S1"): at(-1, 9), (cart, "L1"): at(-1, 16), (cart, "F4"): at(-1, 11, 30)}
    assert at(-5, 11) <= when[browse] <= at(-5, 12)
    assert at(-4, 10, 30) <= when[(thanks, "o-F")] <= at(-4, 14)
    assert at(-3, 14, 30) <= when[(thanks, "o-H")] <= at(-3, 16)

    # The new definition's record: deterministic id, the order's payload, the evidence of its condition.
    new = got[(thanks, "o-H")]
    assert new["trigger_id"] == trigger_id(thanks, "o-H", person[held])
    assert (new["member_id"], new["payload"], new["evidence"]) == (
        held.member_id, {"order_id": "o-H", "revenue": "1200.0"}, {"event.properties.order.revenue": "1200.0"})
    assert (new["source_event_id"], new["event_ids"]) == (f"{held.member_id}-o-H", [f"{held.member_id}-o-H"])
    for key, m in (("F1", capped), ("S1", shanghai), ("L1", london)):
        assert got[(cart, key)]["trigger_id"] == trigger_id(cart, key, person[m])
        assert got[(cart, key)]["payload"] == {"cart_id": key, "items": '["sku-1"]'}
    nudge = got[browse]
    assert (nudge["payload"], nudge["source_event_id"]) == ({"campaign_id": "618"}, "MB1-v5")
    assert nudge["trigger_id"] == trigger_id(*browse, person[browser])
    assert (nudge["evidence"]["features.browse_without_buying"], nudge["evidence"]["calendar.phase"]) == (
        "true", "upcoming")
