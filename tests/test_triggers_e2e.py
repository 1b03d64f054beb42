"""The triggers agent running the declarative engine, end to end on 2 workers: a rule started by
features (interest shift), consent withdrawn (suppressed, with its reason in ClickHouse) and a pending
cart abandon moved to the survivor of an identity merge. ``Member`` and ``advance`` script the journeys
of tests/test_triggers_journeys.py and tests/test_triggers_restart.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from streams.tally import TopicReader
from streams.triggers.delivery import in_holdout
from tests.conftest import T0, encoded, touchpoint
from tests.test_pipeline_e2e import _cart, _wait_until_triggers_stream_time

pytestmark = pytest.mark.e2e
MIN, H, D = 60_000, 3_600_000, 86_400_000
DAY0 = T0 + 210 * D  # a local midnight (T0 is one, +08:00); daytime events only, so no quiet hours


@dataclass(frozen=True)
class Member:
    """A member in scripted journeys: member id and WeChat openid on every event, and the time zone
    of their device (``context.timezone``) when ``zone`` is set."""

    member_id: str
    zone: str | None = None

    @property
    def openid(self) -> str:
        return f"oid-{self.member_id}"

    def event(self, suffix: str, kind: str, t: int, channel: str = "mini_program", **props: Any) -> dict:
        return touchpoint(f"{self.member_id}-{suffix}", kind, t, channel=channel,
                          identifiers={"member_id": self.member_id, "wechat_openid": self.openid},
                          context={"timezone": self.zone} if self.zone else None, properties=props or None)

    def reachable_on_wechat(self, t: int) -> list[dict]:
        """Follows the official account (its openid: the wechat_oa handle), then consents to WeChat marketing."""
        return [self.event("follow", "wechat_followed", t, "wechat_oa", account_id="oa-1"),
                self.event("consent", "consent_given", t + MIN, "wechat_oa", consent_channel="wechat",
                           purpose="marketing")]

    def cart(self, cart_id: str, t: int) -> dict:
        return self.event(f"add-{cart_id}", "product_added", t, **_cart(cart_id))

    def order(self, order_id: str, t: int, revenue: float) -> dict:
        return self.event(order_id, "order_completed", t, order_id=order_id, revenue=revenue)


def advance(stack: Any, t_ms: int) -> None:
    """Move the test clock to ``t_ms`` and wait until every partition of the triggers stage has applied it."""
    stack.tick(t_ms)
    _wait_until_triggers_stream_time(stack, t_ms)


def _view(eid: str, t: int, category: str, ids: dict[str, str]) -> dict:
    return touchpoint(eid, "product_viewed", t, channel="mini_program", identifiers=ids,
                      properties={"product_id": f"P-{eid}", "category": category})


def test_feature_rules_consent_and_merges_on_the_engine(stack_factory) -> None:
    stack = stack_factory(workers=2, max_event_age_s=400 * 86400.0)
    shifter = {"member_id": "MS1", "wechat_openid": "oid-shift"}
    stray = {"member_id": "MS2", "wechat_openid": "oid-stray"}
    assert not in_holdout("interest_shift", "member_id:MS1", 0.1)  # so a shift is sent, not held out
    t_hist = DAY0 - 3 * D + 12 * H + MIN
    # Phase 1: basketball shoes at noon for 197 days (the stray person: 200), then the stray's one
    # view of women's fashion; the shifter follows the official account and consents to WeChat.
    history = [
        touchpoint("s-follow", "wechat_followed", DAY0 - 205 * D + 10 * H, channel="wechat_oa", identifiers=shifter,
                   properties={"account_id": "oa-1"}),
        touchpoint("s-consent", "consent_given", DAY0 - 205 * D + 11 * H, channel="wechat_oa", identifiers=shifter,
                   properties={"consent_channel": "wechat", "purpose": "marketing"}),
    ]
    history += [_view(f"s-b{d}", DAY0 - d * D + 12 * H, "men/shoes/basketball", shifter) for d in range(3, 200)]
    history += [_view(f"x-b{d}", DAY0 - d * D + 12 * H, "men/shoes/basketball", stray) for d in range(3, 203)]
    history.append(_view("x-f", DAY0 - 3 * D + 12 * H + 30_000, "women/fashion/dresses", stray))
    stack.produce([encoded(e) for e in history])
    stack.tick(t_hist)
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda t: len(t.event_ids) == len(history))
    _wait_until_triggers_stream_time(stack, t_hist)

    # Phase 2: three days of women's fashion (10:00, 14:00, 20:00); a person who withdraws WeChat
    # consent, then leaves a cart; an anonymous cart, then a login that merges the cookie into the member.
    fashion = [_view(f"s-f{d}-{h}", DAY0 - d * D + h * H, "women/fashion/dresses", shifter)
               for d in (2, 1, 0) for h in (10, 14, 20)]
    consent = {"member_id": "MC1", "wechat_openid": "oid-consent"}
    cart_c = {"cart_id": "cart-C", "product_id": "sku-1", "price": 99.0, "quantity": 1}
    withdrawn = [
        touchpoint("c1", "wechat_followed", DAY0 - 2 * D + 10 * H, channel="wechat_oa", identifiers=consent,
                   properties={"account_id": "oa-1"}),
        touchpoint("c2", "consent_given", DAY0 - 2 * D + 10 * H + MIN, channel="wechat_oa", identifiers=consent,
                   properties={"consent_channel": "wechat", "purpose": "marketing"}),
        touchpoint("c3", "consent_withdrawn", DAY0 - 2 * D + 10 * H + 2 * MIN, channel="wechat_oa",
                   identifiers=consent, properties={"consent_channel": "wechat", "purpose": "marketing"}),
        touchpoint("c4", "product_added", DAY0 - 2 * D + 10 * H + 3 * MIN, channel="mini_program",
                   identifiers=consent, properties=cart_c),
    ]
    cookie = {"anonymous_id": "cookie-merge"}
    merging = [
        touchpoint("m1", "page_viewed", DAY0 - 2 * D + 11 * H, identifiers=cookie),
        touchpoint("m2", "product_added", DAY0 - 2 * D + 11 * H + MIN, identifiers=cookie,
                   properties={**cart_c, "cart_id": "cart-M"}),
        touchpoint("m3", "login", DAY0 - 2 * D + 11 * H + 2 * MIN, identifiers={**cookie, "member_id": "MM1"}),
    ]
    live = fashion + withdrawn + merging
    stack.produce([encoded(e) for e in live])
    end = DAY0 + 20 * H + 30 * MIN
    stack.tick(end)
    total = len(history) + len(live)
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == total and len(t.triggers) >= 3)
    _wait_until_triggers_stream_time(stack, end)
    reader.poll(timeout=1.0)
    reader.close()

    person = {e: tally.person_of_event[e] for e in ("s-f0-20", "x-f", "c4", "m2", "m3")}
    survivor = person["m3"]
    assert person["m2"] != survivor and tally.final_person(person["m2"]) == survivor
    by_key = {r["correlation_key"]: r for r in tally.triggers.values()}
    assert sorted((r["rule"], r["correlation_key"]) for r in tally.triggers.values()) == [
        ("cart_abandon", "cart-C"), ("cart_abandon", "cart-M"), ("interest_shift", "women/fashion")]
    assert all(n == 1 for n in tally.trigger_records.values())

    shift = by_key["women/fashion"]  # from the shifter's features; the stray view started nothing
    assert (shift["person_id"], shift["member_id"], shift["outcome"], shift["channel"], shift["handle"]) == (
        person["s-f0-20"], "MS1", "fire", "wechat_oa", "oid-shift")
    assert shift["payload"]["category"] == "women/fashion"
    assert float(shift["payload"]["divergence"]) >= stack.settings.feature_shift_threshold
    assert shift["evidence"]["features.interest_shift"] == "true"
    assert shift["source_event_id"].startswith("s-f")

    cart = by_key["cart-C"]
    assert (cart["person_id"], cart["outcome"], cart["reason"], cart["channel"]) == (
        person["c4"], "suppressed", "no_consent", None)
    assert cart["due_at_ms"] == withdrawn[-1]["event_time_ms"] + 30 * MIN

    moved = by_key["cart-M"]  # added while anonymous, pending when the cookie merged: decided for the survivor
    assert (moved["person_id"], moved["member_id"], moved["event_ids"]) == (survivor, "MM1", ["m2"])
    assert moved["due_at_ms"] == merging[1]["event_time_ms"] + 30 * MIN

    stack.stop_sink()
    rows = stack.query("SELECT rule, correlation_key, person_id, outcome, reason, channel, handle "
                       "FROM triggers FINAL ORDER BY correlation_key")
    assert rows == [
        ["cart_abandon", "cart-C", person["c4"], "suppressed", "no_consent", "", ""],
        ["cart_abandon", "cart-M", survivor, "suppressed", "unreachable", "", ""],
        ["interest_shift", "women/fashion", person["s-f0-20"], "fire", "", "wechat_oa", "oid-shift"],
    ]
