"""Delivery policy: whether, when and on which channel a due trigger goes out (pure, clock passed in).

``decide(candidates, recipient, state, now_ms, policy)`` takes the triggers
due for one person at one moment and returns one ``Decision`` each, in
priority order (highest first; then rule and key, so the order is fixed).
Each candidate is checked in this order, and the first rule that stops it
names the reason:

1. ``duplicate``: this trigger id was already fired or held out.
2. ``historical``: it came from an imported (historical) event; those never fire.
3. ``suppression_window``: the rule fired (or was held out) for the person
   less than its ``suppress_ms`` ago.
4. ``unreachable``: none of the rule's channels reaches the person
   (``Recipient.reach``; SMS, email, app push and the store's guide also need a
   member id, since the sender looks the contact up by it).
5. ``no_consent``: the person has not consented to any channel that reaches
   them. Consent is per consent channel (``CONSENT_OF``); unknown is no.
6. Quiet hours in the person's time zone: ``deferred`` until they end. The
   caller decides again at ``until_ms`` (all deferred candidates together);
   nothing is dropped for the hour.
7. ``outranked``: another candidate of this decision fired. One message per
   person per decision: several triggers due at once are one push, the most
   important one.
8. ``frequency_cap``: the person had ``n`` messages within a rolling window
   (``Policy.caps``), counted across all triggers and channels.
9. ``holdout``: the person is in the rule's hold-out group (see
   ``in_holdout``). A held-out trigger is recorded like a sent one for
   duplicates and the suppression window, but uses no cap, so the hold-out is
   drawn from exactly the persons who would have been sent it.
10. Otherwise ``fire`` on the best channel: the first that the rule allows,
    reaches the person and has consent, taking the person's preferred contact
    channel (the one they engage with most) first, then ``Policy.preference``.
    One channel, never several.

The recipient handle is set only where it is not personal data: the WeChat
openid for the official account and the mini-program. For SMS, email, app
push and the store's guide it is None and the sender looks the person up by
member id, so no phone number or email travels on the trigger topic.

Hold-out key. The share is drawn from a hash of (rule, stable person key).
The key is the person's ``member_id:<id>`` identifier when they have one:
two member ids never merge, so a member keeps it through every identity
merge, and their person id may change without moving them between groups.
A person without a member id is keyed by their smallest identifier
(``type:value``) when the recipient carries identifiers; that key holds until
they register or merge with a person holding a smaller identifier, a change
that only concerns anonymous persons, who are reachable on WeChat at most.
Without identifiers the key is the person id. The running triggers stage
passes none yet (streams/triggers/person.py builds the recipient from the
features snapshot), so today an anonymous person's draw follows their person
id and can change with a merge.

State (one JSON-able dict per person, bounded): send times within the
longest cap window (at most that window's cap of them), the end of each
rule's running suppression window, and the last ``DECIDED_MEMORY`` fired or
held-out trigger ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Channels a trigger can be sent on, and the consent channel (Consent.consent_channel) each needs.
CONSENT_OF = {
    "wechat_oa": "wechat", "mini_program": "wechat", "app_push": "app_push",
    "sms": "sms", "email": "email", "store_guide": "phone_call",
}
CHANNELS = tuple(CONSENT_OF)
HANDLE_CHANNELS = frozenset({"wechat_oa", "mini_program"})  # their handle (an openid) is not personal data
MEMBER_LOOKUP = frozenset({"app_push", "sms", "email", "store_guide"})  # the sender needs the member id

FIRE, SUPPRESSED, DEFERRED, HOLDOUT = "fire", "suppressed", "deferred", "holdout"
REASONS = ("duplicate", "historical", "suppression_window", "unreachable", "no_consent", "outranked",
           "frequency_cap")
DECIDED_MEMORY = 64
DAY_MS = 86_400_000


def trigger_id(rule: str, correlation_key: str, person_id: str) -> str:
    """Deterministic: a replay of the same trigger for the same person has the same id."""
    return hashlib.blake2b(f"{rule}|{correlation_key}|{person_id}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Terms:
    """What delivery needs of a trigger definition."""

    rule: str
    priority: int  # higher wins
    channels: tuple[str, ...]  # allowed
    suppress_ms: int = 0
    holdout: float = 0.0  # share of persons not sent it


@dataclass(frozen=True)
class Candidate:
    terms: Terms
    key: str  # correlation key (cart id, campaign id...)
    historical: bool = False


@dataclass(frozen=True)
class Recipient:
    person_id: str
    member_id: str | None = None
    identifiers: tuple[str, ...] = ()  # "type:value", as the identity graph writes them
    consent: Mapping[str, bool] = field(default_factory=dict)  # consent channel -> given (marketing)
    # channel -> its handle (the openid of that official account / mini-program), or None
    reach: Mapping[str, str | None] = field(default_factory=dict)
    timezone: str | None = None  # IANA name; None or unknown: Policy.timezone
    preferred: str | None = None  # consent channel whose messages the person engages with most


@dataclass(frozen=True)
class Policy:
    preference: tuple[str, ...] = ("wechat_oa", "mini_program", "app_push", "sms", "email", "store_guide")
    caps: tuple[tuple[int, int], ...] = ((DAY_MS, 1), (7 * DAY_MS, 3))  # (rolling window ms, max messages)
    quiet_start: dt.time = dt.time(21, 0)  # local time; equal start and end: no quiet hours
    quiet_end: dt.time = dt.time(9, 0)
    timezone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if sorted(self.preference) != sorted(CHANNELS):
            raise ValueError(f"channel preference must list each of {', '.join(CHANNELS)} once")
        if not self.caps or any(window <= 0 or n < 1 for window, n in self.caps):
            raise ValueError("frequency caps are (window ms > 0, messages >= 1) pairs, at least one")
        _zone(self.timezone)


@dataclass(frozen=True)
class Decision:
    outcome: str  # FIRE | SUPPRESSED | DEFERRED | HOLDOUT
    trigger_id: str
    rule: str
    key: str
    person_id: str
    member_id: str | None
    decided_at_ms: int
    reason: str | None = None  # SUPPRESSED: one of REASONS
    channel: str | None = None  # FIRE: where it goes; HOLDOUT: where it would have gone
    handle: str | None = None  # FIRE on a HANDLE_CHANNELS channel: the recipient
    until_ms: int | None = None  # DEFERRED: decide again then


def empty_state() -> dict[str, Any]:
    return {"sent": [], "suppressed_until": {}, "decided": []}


def merge_states(survivor: Mapping[str, Any], merged: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """Two persons' delivery states as one (an identity merge): every send counts against the
    caps (the latest ``max(cap)`` kept), each rule's suppression window runs to the later end, and
    the decided ids of both are kept (the survivor's last, so they outlive the merged person's)."""
    most = max(n for _, n in policy.caps)
    decided = [t for t in merged["decided"] if t not in survivor["decided"]] + list(survivor["decided"])
    until = dict(survivor["suppressed_until"])
    for rule, t in merged["suppressed_until"].items():
        until[rule] = max(t, until.get(rule, t))
    return {"sent": sorted([*survivor["sent"], *merged["sent"]])[-most:], "suppressed_until": until,
            "decided": decided[-DECIDED_MEMORY:]}


def record_consent(consent: Mapping[str, bool], channel: str, given: bool) -> dict[str, bool]:
    """Consent after a consent event; ``all`` replaces every channel's answer."""
    return {"all": given} if channel == "all" else {**consent, channel: given}


def consented(consent: Mapping[str, bool], channel: str) -> bool:
    return consent.get(channel, consent.get("all", False)) is True


def stable_key(recipient: Recipient) -> str:
    """The key of the hold-out draw (module docstring: member id, else the smallest identifier)."""
    if recipient.member_id:
        return f"member_id:{recipient.member_id}"
    return min(recipient.identifiers, default=f"person:{recipient.person_id}")


def in_holdout(rule: str, key: str, share: float) -> bool:
    digest = hashlib.blake2b(f"{rule}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def quiet_until(now_ms: int, timezone: str | None, policy: Policy) -> int | None:
    """End of the quiet hours ``now_ms`` falls in, in the person's zone; None outside them."""
    try:
        zone = _zone(timezone or policy.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = _zone(policy.timezone)
    local = dt.datetime.fromtimestamp(now_ms / 1000, zone)
    t, start, end = local.time(), policy.quiet_start, policy.quiet_end
    quiet = (start <= t or t < end) if start > end else start <= t < end
    if not quiet:
        return None
    day = local.date() if t < end else local.date() + dt.timedelta(days=1)
    return int(dt.datetime.combine(day, end, zone).timestamp() * 1000)


def _prune(state: dict[str, Any], now_ms: int, policy: Policy) -> None:
    longest = max(window for window, _ in policy.caps)
    state["sent"] = [t for t in state["sent"] if t > now_ms - longest]
    state["suppressed_until"] = {r: t for r, t in state["suppressed_until"].items() if t > now_ms}


def _capped(state: dict[str, Any], now_ms: int, policy: Policy) -> bool:
    return any(sum(t > now_ms - window for t in state["sent"]) >= n for window, n in policy.caps)


def decide(candidates: Iterable[Candidate], recipient: Recipient, state: dict[str, Any], now_ms: int,
           policy: Policy) -> list[Decision]:
    """One decision per candidate, highest priority first; ``state`` is updated in place."""
    _prune(state, now_ms, policy)
    decisions: list[Decision] = []
    for c in sorted(candidates, key=lambda c: (-c.terms.priority, c.terms.rule, c.key)):
        outranked = any(d.outcome == FIRE for d in decisions)
        decisions.append(_decide_one(c, recipient, state, now_ms, policy, outranked))
    return decisions


def _decide_one(c: Candidate, who: Recipient, state: dict[str, Any], now_ms: int, policy: Policy,
                outranked: bool) -> Decision:
    rule = c.terms.rule
    tid = trigger_id(rule, c.key, who.person_id)

    def decision(outcome: str, **rest: Any) -> Decision:
        return Decision(outcome, tid, rule, c.key, who.person_id, who.member_id, now_ms, **rest)

    if tid in state["decided"]:
        return decision(SUPPRESSED, reason="duplicate")
    if c.historical:
        return decision(SUPPRESSED, reason="historical")
    if state["suppressed_until"].get(rule, now_ms) > now_ms:
        return decision(SUPPRESSED, reason="suppression_window")
    order = sorted(policy.preference, key=lambda ch: CONSENT_OF[ch] != who.preferred)
    reachable = [ch for ch in order if ch in c.terms.channels and ch in who.reach
                 and (ch not in MEMBER_LOOKUP or who.member_id)]
    if not reachable:
        return decision(SUPPRESSED, reason="unreachable")
    allowed = [ch for ch in reachable if consented(who.consent, CONSENT_OF[ch])]
    if not allowed:
        return decision(SUPPRESSED, reason="no_consent")
    until = quiet_until(now_ms, who.timezone, policy)
    if until is not None:
        return decision(DEFERRED, until_ms=until)
    if outranked:
        return decision(SUPPRESSED, reason="outranked")
    if _capped(state, now_ms, policy):
        return decision(SUPPRESSED, reason="frequency_cap")
    channel = allowed[0]
    state["suppressed_until"][rule] = now_ms + c.terms.suppress_ms
    state["decided"] = (state["decided"] + [tid])[-DECIDED_MEMORY:]
    if in_holdout(rule, stable_key(who), c.terms.holdout):
        return decision(HOLDOUT, channel=channel)
    state["sent"].append(now_ms)
    return decision(FIRE, channel=channel, handle=who.reach[channel] if channel in HANDLE_CHANNELS else None)
