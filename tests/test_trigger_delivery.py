"""Delivery policy (pure): a hand case for each rule, then properties over random sequences."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.triggers.delivery import (
    CHANNELS,
    DAY_MS,
    DEFERRED,
    FIRE,
    HOLDOUT,
    SUPPRESSED,
    Candidate,
    Decision,
    Policy,
    Recipient,
    Terms,
    consented,
    decide,
    empty_state,
    in_holdout,
    merge_states,
    quiet_until,
    record_consent,
    stable_key,
    trigger_id,
)
from tests.conftest import T0  # 2026-11-01T00:00:00+08:00

HOUR = 3_600_000
NOON = T0 + 12 * HOUR  # Shanghai noon: outside quiet hours
POLICY = Policy()
CART = Terms("cart_abandon", 80, ("wechat_oa", "mini_program", "app_push", "sms"), suppress_ms=12 * HOUR)
SHIFT = Terms("interest_shift", 50, ("wechat_oa", "app_push", "email"), suppress_ms=7 * DAY_MS)
ALL_CONSENT = {"all": True}
MEMBER = Recipient("p-1", "M1", ("anonymous_id:c1", "member_id:M1"), ALL_CONSENT,
                   {"wechat_oa": "oa-openid-1", "sms": "+8613800000000", "email": None})


def one(candidate: Candidate, who: Recipient = MEMBER, state: dict[str, Any] | None = None,
        now: int = NOON, policy: Policy = POLICY) -> Decision:
    [decision] = decide([candidate], who, empty_state() if state is None else state, now, policy)
    return decision


def test_fires_once_on_the_best_channel_with_a_handle_only_for_wechat() -> None:
    d = one(Candidate(CART, "c1"))
    assert (d.outcome, d.channel, d.handle) == (FIRE, "wechat_oa", "oa-openid-1")
    assert (d.trigger_id, d.person_id, d.member_id, d.key) == (trigger_id("cart_abandon", "c1", "p-1"), "p-1", "M1", "c1")
    by_sms = one(Candidate(CART, "c1"), Recipient("p-1", "M1", consent=ALL_CONSENT, reach={"sms": "+8613800000000"}))
    assert (by_sms.outcome, by_sms.channel, by_sms.handle) == (FIRE, "sms", None)  # the sender looks up M1


def test_trigger_ids_are_the_ones_cart_abandon_publishes() -> None:
    # the formula of the ids the coded cart abandon published, so replayed carts keep their ids
    published = hashlib.blake2b(b"cart_abandon|c1|p-1", digest_size=16).hexdigest()
    assert trigger_id("cart_abandon", "c1", "p-1") == published


def test_the_persons_preferred_channel_goes_first_then_the_configured_order() -> None:
    sms_first = Policy(preference=("sms", "email", "wechat_oa", "mini_program", "app_push", "store_guide"))
    assert one(Candidate(CART, "c1"), policy=sms_first).channel == "sms"
    engaged_by_email = Recipient("p-1", "M1", consent=ALL_CONSENT, reach=MEMBER.reach, preferred="email")
    assert one(Candidate(SHIFT, "women"), engaged_by_email).channel == "email"
    assert one(Candidate(CART, "c1"), engaged_by_email).channel == "wechat_oa"  # email is not a cart channel
    with pytest.raises(ValueError, match="preference"):
        Policy(preference=("sms", "email"))
    with pytest.raises(ValueError, match="caps"):
        Policy(caps=((DAY_MS, 0),))


def test_consent_is_per_channel_and_missing_consent_is_counted_by_reason() -> None:
    sms_only = Recipient("p-1", "M1", consent={"sms": True}, reach=MEMBER.reach)
    assert one(Candidate(CART, "c1"), sms_only).channel == "sms"  # WeChat reachable but not consented
    none = Recipient("p-1", "M1", consent={}, reach=MEMBER.reach)
    assert (one(Candidate(CART, "c1"), none).outcome, one(Candidate(CART, "c1"), none).reason) == (
        SUPPRESSED, "no_consent")
    consent = record_consent(record_consent({}, "sms", True), "all", False)
    assert not consented(consent, "sms") and not consented(consent, "wechat")
    consent = record_consent(consent, "wechat", True)
    assert consented(consent, "wechat") and not consented(consent, "email")


def test_unreachable_when_no_allowed_channel_reaches_the_person() -> None:
    email_only = Recipient("p-1", "M1", consent=ALL_CONSENT, reach={"email": None})
    assert one(Candidate(CART, "c1"), email_only).reason == "unreachable"
    anonymous = Recipient("p-2", None, ("anonymous_id:c9",), ALL_CONSENT, {"sms": None, "mini_program": "mp-9"})
    d = one(Candidate(CART, "c1"), anonymous)  # SMS needs a member id to look the number up
    assert (d.channel, d.handle) == ("mini_program", "mp-9")


def test_historical_events_never_fire() -> None:
    assert one(Candidate(CART, "c1", historical=True)).reason == "historical"


def test_a_trigger_is_decided_once_and_the_rule_waits_out_its_suppression_window() -> None:
    state = empty_state()
    assert one(Candidate(CART, "c1"), state=state).outcome == FIRE
    assert one(Candidate(CART, "c2"), state=state, now=NOON + HOUR).reason == "suppression_window"
    assert one(Candidate(CART, "c1"), state=state, now=NOON + 3 * DAY_MS).reason == "duplicate"
    assert one(Candidate(CART, "c3"), state=state, now=NOON + 3 * DAY_MS).outcome == FIRE


def test_frequency_caps_count_every_trigger_and_channel_per_rolling_window() -> None:
    state = empty_state()
    rules = [Terms(f"r{i}", 10, ("wechat_oa", "sms")) for i in range(5)]
    assert one(Candidate(rules[0], "k"), state=state).outcome == FIRE
    assert one(Candidate(rules[1], "k"), state=state, now=NOON + 2 * HOUR).reason == "frequency_cap"  # 1 a day
    assert one(Candidate(rules[1], "k"), state=state, now=NOON + DAY_MS).outcome == FIRE
    assert one(Candidate(rules[2], "k"), state=state, now=NOON + 2 * DAY_MS).outcome == FIRE
    assert one(Candidate(rules[3], "k"), state=state, now=NOON + 3 * DAY_MS).reason == "frequency_cap"  # 3 a week
    assert one(Candidate(rules[3], "k"), state=state, now=NOON + 7 * DAY_MS).outcome == FIRE
    assert len(state["sent"]) <= 3


def test_the_highest_priority_goes_out_and_the_others_are_outranked() -> None:
    state = empty_state()
    decisions = decide([Candidate(SHIFT, "women"), Candidate(CART, "c1")], MEMBER, state, NOON, POLICY)
    assert [(d.rule, d.outcome, d.reason) for d in decisions] == [
        ("cart_abandon", FIRE, None), ("interest_shift", SUPPRESSED, "outranked")]


def test_quiet_hours_defer_to_their_end_in_the_persons_zone() -> None:
    late = T0 - 2 * HOUR  # 22:00 in Shanghai
    d = one(Candidate(CART, "c1"), now=late)
    assert (d.outcome, d.until_ms, d.channel) == (DEFERRED, T0 + 9 * HOUR, None)
    assert one(Candidate(CART, "c1"), now=d.until_ms).outcome == FIRE
    # 22:00 in Shanghai is 14:00 in London: no quiet hours there
    london = Recipient("p-1", "M1", consent=ALL_CONSENT, reach=MEMBER.reach, timezone="Europe/London")
    assert one(Candidate(CART, "c1"), london, now=late).outcome == FIRE
    early = Recipient("p-1", "M1", consent=ALL_CONSENT, reach=MEMBER.reach, timezone="Nowhere/Unknown")
    assert one(Candidate(CART, "c1"), early, now=T0 + 7 * HOUR).until_ms == T0 + 9 * HOUR  # falls back to Shanghai
    assert quiet_until(late, None, Policy(quiet_start=dt.time(0), quiet_end=dt.time(0))) is None


def test_holdout_is_recorded_like_a_send_but_uses_no_cap() -> None:
    terms = Terms("r", 10, ("wechat_oa",), suppress_ms=DAY_MS, holdout=0.5)
    held = next(f"M{k}" for k in range(100) if in_holdout("r", f"member_id:M{k}", 0.5))
    who = Recipient("p-9", held, consent=ALL_CONSENT, reach={"wechat_oa": "oa-9"})
    state = empty_state()
    d = one(Candidate(terms, "k"), who, state)
    assert (d.outcome, d.channel, d.handle) == (HOLDOUT, "wechat_oa", None)
    assert one(Candidate(terms, "k"), who, state).reason == "duplicate"
    assert one(Candidate(terms, "k2"), who, state).reason == "suppression_window"
    assert one(Candidate(CART, "c1"), who, state).outcome == FIRE  # the cap was not used


def test_the_holdout_key_is_the_member_id_else_the_smallest_identifier() -> None:
    assert stable_key(MEMBER) == "member_id:M1"
    assert stable_key(Recipient("p-2", None, ("wechat_openid:o2", "anonymous_id:c2"))) == "anonymous_id:c2"
    assert stable_key(Recipient("p-3")) == "person:p-3"


def test_the_state_stays_bounded() -> None:
    state = empty_state()
    for i in range(500):
        decide([Candidate(Terms(f"r{i % 7}", 1, ("wechat_oa",)), f"k{i}")], MEMBER, state, NOON + i * DAY_MS, POLICY)
    assert len(state["sent"]) <= 3 and len(state["decided"]) <= 64 and len(state["suppressed_until"]) <= 7


# ---------------------------------------------------------------------------- properties

RULES = [Terms(f"rule{i}", p, ch, suppress_ms=s, holdout=h) for i, (p, ch, s, h) in enumerate([
    (80, ("wechat_oa", "mini_program", "sms"), 0, 0.1),
    (60, ("sms", "email"), 6 * HOUR, 0.0),
    (50, ("app_push", "wechat_oa"), 0, 0.3),
    (20, ("store_guide",), DAY_MS, 0.0),
])]
CONSENTS = st.dictionaries(st.sampled_from(["wechat", "sms", "email", "app_push", "phone_call", "all"]),
                           st.booleans())
REACH = st.dictionaries(st.sampled_from(CHANNELS), st.one_of(st.none(), st.text(min_size=1, max_size=4)))
RECIPIENTS = st.builds(Recipient, person_id=st.sampled_from(["p-1", "p-2"]),
                       member_id=st.one_of(st.none(), st.just("M1")), consent=CONSENTS, reach=REACH,
                       timezone=st.sampled_from([None, "Asia/Shanghai", "America/New_York"]))
STEPS = st.lists(st.tuples(
    st.integers(0, 20 * HOUR),  # time since the previous decision
    st.lists(st.tuples(st.sampled_from(RULES), st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=3),
    RECIPIENTS,
), max_size=40)


def run(steps: list[Any], policy: Policy = POLICY) -> list[Decision]:
    state, now, out = empty_state(), T0, []
    for gap, picks, who in steps:
        now += gap
        candidates = [Candidate(terms, key, historical=old) for terms, key, old in picks]
        out += decide(candidates, who, state, now, policy)
    return out


@given(STEPS)
def test_a_trigger_goes_out_at_most_once_on_one_channel(steps: list[Any]) -> None:
    fired = [d for d in run(steps) if d.outcome == FIRE]
    assert all(d.channel in CHANNELS for d in fired)
    assert max(Counter(d.trigger_id for d in fired).values(), default=0) <= 1
    assert all(d.handle is None or d.channel in ("wechat_oa", "mini_program") for d in fired)


@given(STEPS, st.sampled_from([((DAY_MS, 1), (7 * DAY_MS, 3)), ((4 * HOUR, 2),), ((HOUR, 1), (DAY_MS, 2))]))
def test_frequency_caps_are_never_exceeded(steps: list[Any], caps: tuple[tuple[int, int], ...]) -> None:
    policy = Policy(caps=caps, quiet_start=dt.time(0), quiet_end=dt.time(0))
    sends = sorted(d.decided_at_ms for d in run(steps, policy) if d.outcome == FIRE)
    for t in sends:
        for window, n in caps:
            assert sum(t - window < s <= t for s in sends) <= n


def test_the_holdout_share_holds_over_many_persons() -> None:
    for share in (0.05, 0.1, 0.3):
        held = sum(in_holdout("cart_abandon", f"member_id:M{i:06d}", share) for i in range(20_000))
        assert abs(held / 20_000 - share) < 0.012


@given(st.text(min_size=1, max_size=12), st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=4),
       st.lists(st.text(min_size=1, max_size=8), max_size=3))
def test_the_holdout_does_not_move_when_the_person_id_changes_but_the_member_id_does_not(
        member: str, person_ids: list[str], other_ids: list[str]) -> None:
    terms = Terms("r", 10, ("wechat_oa",), holdout=0.3)
    outcomes = set()
    for i, pid in enumerate(person_ids):
        who = Recipient(pid, member, (f"member_id:{member}", *(f"anonymous_id:{x}" for x in other_ids[:i])),
                        ALL_CONSENT, {"wechat_oa": "oa"})
        outcomes.add(one(Candidate(terms, "k"), who).outcome)
    assert len(outcomes) == 1


@given(st.integers(0, 365 * DAY_MS), st.sampled_from([None, "Asia/Shanghai", "Europe/Berlin", "America/New_York",
                                                      "Australia/Lord_Howe"]))
def test_quiet_hours_defer_rather_than_drop(offset: int, zone: str | None) -> None:
    who = Recipient("p-1", "M1", consent=ALL_CONSENT, reach=MEMBER.reach, timezone=zone)
    now = T0 + offset
    d = one(Candidate(CART, "c1"), who, now=now)
    if d.outcome == DEFERRED:
        # 12 quiet hours, 13 on the night clocks go back
        assert d.until_ms is not None and now < d.until_ms <= now + 13 * HOUR
        d = one(Candidate(CART, "c1"), who, now=d.until_ms)
    assert d.outcome == FIRE


def test_merged_delivery_states_count_every_send_and_keep_the_later_window() -> None:
    a, b = empty_state(), empty_state()
    assert one(Candidate(CART, "c1"), state=a).outcome == FIRE
    assert one(Candidate(SHIFT, "women"), Recipient("p-2", "M2", consent=ALL_CONSENT, reach=MEMBER.reach),
               state=b, now=NOON + HOUR).outcome == FIRE
    merged = merge_states(a, b, POLICY)
    assert merged["sent"] == [NOON, NOON + HOUR] and set(merged["decided"]) == set(a["decided"]) | set(b["decided"])
    assert merged["suppressed_until"] == {"cart_abandon": NOON + 12 * HOUR, "interest_shift": NOON + HOUR + 7 * DAY_MS}
    assert one(Candidate(SHIFT, "men"), state=merged, now=NOON + 2 * DAY_MS).reason == "suppression_window"
    assert one(Candidate(CART, "c1"), state=merged, now=NOON + 2 * DAY_MS).reason == "duplicate"
