"""Trigger engine, pure core: one person's pending waits, fired memory and deliveries over their inputs.

``step(state, definitions, input, now_ms, ctx) -> (state, decisions)`` applies
one input to the person's state (a JSON-able dict, kept in a table keyed by
person id) and returns the trigger records decided by it. ``now_ms`` is
stream time (the event-time watermark), never the wall clock. An input is

- an enriched event (a mapping with a ``touchpoint``): it cancels the waits it
  falls within, starts the definitions it is a start event of, and decides at
  once those without a wait;
- a features snapshot (any other mapping, ``streams/features/profile.py``):
  the definitions without start events are evaluated on it;
- ``None``, a clock advance: the waits due at or before ``now_ms`` and the
  deferred decisions whose quiet hours ended are decided, and the definitions
  without start events that change with time alone (they read ``now`` or a
  feature counted to now, ``Definition.changes_with_time``) are evaluated
  again on ``ctx.features``.

Conditions read the features as of ``now``: a snapshot's days since the last
order are counted again to ``now`` (``vocabulary.as_of``), so a quiet person's
``features.days_since_last_order >= 60`` becomes true on the 60th day without
a new snapshot. Such rules need a clock advance to be looked at again: the
agent steps a person with a snapshot at least at every ``RECHECK_MS``
boundary of stream time (``next_recheck``; UTC midnights), so a rule that
changes with time starts on the first recheck at or after the moment its
condition holds, at the latest a day late (P(alive) and expected purchases
stay those of the latest snapshot, which lifecycle boundaries refresh).

Waits. A start event computes the key (``Definition.key_of``); a wait is
pending per (rule, key), due at the start event's time + the wait. Another
start event for a pending (rule, key) restarts it: the latest start by event
time counts, so the due time moves later and never earlier (an earlier add
arriving late adds its values but leaves the due time), the last add of a cart
counts. A cancelling event cancels a pending wait when its event time lies
between the counting start and the due time, in whatever order the start
events and the cancel arrive while the wait is pending; one that arrives
after the wait was decided cancels nothing, and one that arrives before any
start of the key cancels nothing either (no cancel history is kept: a late
add behind its own checkout starts a wait, as in ``cart_abandon.py``). Only a clock
advance decides waits, so a late start event whose due time has already
passed is decided at the next advance, after the rest of its batch (its
cancel included) has been applied: this is what ``cart_abandon.py`` does, and
``tests/test_trigger_engine.py`` checks the two agree on random journeys.
Values to ``collect`` accumulate per wait, the latest ``MAX_COLLECTED`` by
event time, one per event id; they go into the payload as a JSON list.

Once. Each (rule, key) gets one final decision (fire, hold-out or suppressed,
with its reason); after it the (rule, key) is remembered and never starts or
decides again. A deferred decision (quiet hours) is kept and decided again
at its ``until_ms`` with the candidates of that step; a cancelling event that
falls after its start drops it too (the person bought the cart overnight).

Historical (imported) events are ignored: they neither start nor cancel.

Bounds (``state_bytes`` measures them in the tests): at most ``MAX_WAITS``
pending waits (a new one evicts the earliest due of the others; ``evicted`` counts them),
``MAX_DEFERRED`` deferred decisions (the lowest priority, then latest, goes),
``MAX_COLLECTED`` values per collected field and ``MAX_EVENT_IDS`` event ids
per wait, and the fired memory holds (rule, key) for ``FIRED_RETAIN_MS`` after
the decision, at most ``FIRED_MEMORY`` of them (the oldest go first). A key
forgotten that way could start again: a win-back whose quiet spell outlasts
the retention, a cart re-added half a year later.

Merges. ``merge_states(survivor, merged)`` keeps everything of both under the
survivor's person id: fired memory is the union (and a wait or deferred
decision of a (rule, key) decided in either is dropped), waits pending in
both for one (rule, key) become one whose counting start is the later one
-- the same rule as a restart, so the merged state is the state one person
would have with both histories -- with the values and event ids of both, and
the delivery counters add up (``delivery.merge_states``). A cancel seen by one
person before the merge is not applied to the other's waits: the state keeps
no cancel history.

Replays. Applying an input twice is the agent's to prevent
(``streams/redelivery.py``), but a repeated event changes nothing here: its
start counts once (event ids), its cancel finds nothing left, and a decided
(rule, key) is remembered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from streams.triggers import delivery
from streams.triggers.definitions import Definition
from streams.triggers.delivery import (
    CHANNELS,
    CONSENT_OF,
    HANDLE_CHANNELS,
    Candidate,
    Decision,
    Policy,
    Recipient,
)
from streams.triggers.expr import CALLS
from streams.triggers.vocabulary import as_of

State = dict[str, Any]
Input = Mapping[str, Any] | None  # an enriched event, a features snapshot, or None: the clock moved

MAX_WAITS = 64
MAX_DEFERRED = 16
MAX_COLLECTED = 20
MAX_EVENT_IDS = 8
FIRED_MEMORY = 256
FIRED_RETAIN_MS = 180 * delivery.DAY_MS


@dataclass(frozen=True)
class Context:
    """What conditions and delivery read besides the state and the input."""

    policy: Policy = field(default_factory=Policy)
    recipient: Recipient | None = None  # the person's delivery facts (``recipient_of``); None: unreachable
    features: Mapping[str, Any] | None = None  # the person's latest snapshot, for events and clock advances
    calendar: Mapping[str, Any] = field(default_factory=dict)  # vocabulary.calendar_now at now_ms
    wait_ms: Mapping[str, int] = field(default_factory=dict)  # rule -> wait overriding its definition's
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)  # what payloads may call (recommend)


def recipient_of(snapshot: Mapping[str, Any], handles: Mapping[str, str] | None = None,
                 identifiers: tuple[str, ...] = (), timezone: str | None = None) -> Recipient:
    """The delivery facts of a features snapshot: marketing consent, the channels that reach the
    person (a WeChat channel only with its openid in ``handles``), their preferred channel.

    The snapshot's reachable channels are those with consent, so a withdrawn consent would read as
    unreachable: a WeChat channel whose openid is known and whose consent was answered no stays in
    reach, and delivery suppresses it as ``no_consent``."""
    handles = handles or {}
    reachable = set(snapshot.get("reachable") or ())
    consent = dict((snapshot.get("consent") or {}).get("marketing", {}))

    def reaches(ch: str) -> bool:
        if ch not in HANDLE_CHANNELS:
            return CONSENT_OF[ch] in reachable
        return bool(handles.get(ch)) and (CONSENT_OF[ch] in reachable or consent.get(CONSENT_OF[ch]) is False)

    reach = {ch: handles.get(ch) for ch in CHANNELS if reaches(ch)}
    return Recipient(snapshot["person_id"], snapshot.get("member_id"), identifiers, consent, reach, timezone,
                     snapshot.get("preferred_channel"))


def empty(person_id: str) -> State:
    return {"person_id": person_id, "member_id": None, "clock": None, "waits": {}, "deferred": {}, "fired": {},
            "delivery": delivery.empty_state(), "evicted": 0}


def _slot(rule: str, key: str) -> str:
    return f"{rule}|{key}"  # rule names have no "|" (the schema's pattern)


def next_due(state: State) -> int | None:
    """The stream time at which a clock advance will decide something pending."""
    times = [w["due_ms"] for w in state["waits"].values()] + [d["until_ms"] for d in state["deferred"].values()]
    return min(times, default=None)


RECHECK_MS = delivery.DAY_MS


def next_recheck(state: State) -> int | None:
    """The next stream time (a UTC midnight) at which rules that change with time are looked at again,
    for a person the engine has stepped; None before the first step."""
    clock = state["clock"]
    return None if clock is None else (clock // RECHECK_MS + 1) * RECHECK_MS


def state_bytes(state: State) -> int:
    return len(json.dumps(state).encode())


# ---------------------------------------------------------------------------- one step

def step(state: State, definitions: Mapping[str, Definition], input: Input, now_ms: int,
         ctx: Context) -> tuple[State, list[dict[str, Any]]]:
    """Apply one input (in place; the state is returned for chaining) and decide what it makes due."""
    now = now_ms if state["clock"] is None else max(now_ms, state["clock"])
    state["clock"] = now
    defs = [definitions[name] for name in sorted(definitions)]
    due: list[dict[str, Any]] = []
    if input is None:
        features = ctx.features
        if features is not None:  # before the due ones leave the state: a deferred key does not start again
            due += _feature_starts(state, [d for d in defs if not d.events and d.changes_with_time], features, now,
                                   ctx)
        due += _due_waits(state, now) + _due_deferred(state, now)
    elif "touchpoint" in input:
        due += _on_event(state, defs, input, now, ctx)
    else:
        if input.get("member_id"):
            state["member_id"] = input["member_id"]
        due += _feature_starts(state, [d for d in defs if not d.events], input, now, ctx)
    records = _decide(state, definitions, due, now, ctx)
    _forget(state, now)
    return state, records


def _context(ctx: Context, now: int, features: Mapping[str, Any] | None,
             event: Mapping[str, Any] | None = None) -> dict[str, Any]:
    found = {"features": as_of(features or {}, now), "calendar": ctx.calendar, "now": now, CALLS: ctx.functions}
    return found if event is None else found | {"event": event}


def _pending(rule: str, key: str) -> dict[str, Any]:
    """A candidate: what a decision on (rule, key) needs, JSON-able (deferred ones are kept)."""
    return {"rule": rule, "key": key, "start_ms": None, "start_id": None, "due_ms": None, "events": [],
            "evidence": {}, "payload": {}}


def _on_event(state: State, defs: list[Definition], enriched: Mapping[str, Any], now: int,
              ctx: Context) -> list[dict[str, Any]]:
    tp = enriched["touchpoint"]
    if tp.get("historical"):
        return []
    if enriched.get("member_id"):
        state["member_id"] = enriched["member_id"]
    t, eid = tp["event_time_ms"], tp["event_id"]
    for d in defs:
        if d.wait is None:
            continue
        for slot, w in list(state["waits"].items()):
            if w["rule"] == d.name and w["start_ms"] <= t <= w["due_ms"] and d.cancels(tp, w["key"]):
                del state["waits"][slot]
        for slot, w in list(state["deferred"].items()):
            if w["rule"] == d.name and w["start_ms"] is not None and w["start_ms"] <= t and d.cancels(tp, w["key"]):
                del state["deferred"][slot]
    now_due = []
    context = _context(ctx, now, ctx.features, tp)
    for d in defs:
        key = _started(state, d, context) if d.events else None
        if key is None:
            continue
        if d.wait is None:
            now_due.append(_pending(d.name, key) | {
                "start_ms": t, "start_id": eid, "due_ms": t, "events": [[t, eid]], "evidence": d.evidence(context),
                "payload": d.payload_of(context)})
        else:
            _start_wait(state, d, key, context, ctx.wait_ms.get(d.name, d.wait.for_ms))
    return now_due


def _started(state: State, d: Definition, context: Mapping[str, Any]) -> str | None:
    """The key ``d`` starts under in ``context``; None when it does not start, has no key, or that
    (rule, key) is decided or deferred already."""
    if not d.starts(context):
        return None
    key = d.key_of(context)
    if not key or _slot(d.name, key) in state["fired"] or _slot(d.name, key) in state["deferred"]:
        return None
    return key


def _start_wait(state: State, d: Definition, key: str, context: Mapping[str, Any], wait_ms: int) -> None:
    assert d.wait is not None
    tp = context["event"]
    t, eid = tp["event_time_ms"], tp["event_id"]
    slot = _slot(d.name, key)
    w = state["waits"].get(slot)
    if w is None:
        w = state["waits"][slot] = _pending(d.name, key) | {"collected": {}}
    if w["start_ms"] is None or (t, eid) > (w["start_ms"], w["start_id"]):
        w |= {"start_ms": t, "start_id": eid, "due_ms": t + wait_ms, "evidence": d.evidence(context),
              "payload": d.payload_of(context)}
    w["events"] = _bounded([*w["events"], [t, eid]], MAX_EVENT_IDS)
    for name, e in d.wait.collect.items():
        value = e({"event": tp})
        if value is not None:
            w["collected"][name] = _bounded([*w["collected"].get(name, []), [t, eid, value]], MAX_COLLECTED)
    _evict_waits(state, keep=slot)


def _bounded(values: list[list[Any]], cap: int) -> list[list[Any]]:
    """[event time, event id, ...] once per event id, the latest ``cap`` by (time, id), in that order."""
    unique = {v[1]: v for v in values}
    return sorted(unique.values(), key=lambda v: (v[0], v[1]))[-cap:]


def _evict_waits(state: State, keep: str | None = None) -> None:
    """Over the cap, the earliest due waits go (never ``keep``, the one just started)."""
    waits = state["waits"]
    while len(waits) > MAX_WAITS:
        del waits[min((s for s in waits if s != keep), key=lambda s: (waits[s]["due_ms"], s))]
        state["evicted"] += 1


def _feature_starts(state: State, defs: list[Definition], features: Mapping[str, Any], now: int,
                    ctx: Context) -> list[dict[str, Any]]:
    out = []
    context = _context(ctx, now, features)
    for d in defs:
        key = _started(state, d, context)
        if key is None:
            continue
        out.append(_pending(d.name, key) | {"due_ms": now, "evidence": d.evidence(context),
                                                   "payload": d.payload_of(context)})
    return out


def _due_waits(state: State, now: int) -> list[dict[str, Any]]:
    due = [s for s, w in sorted(state["waits"].items()) if w["due_ms"] <= now]
    out = []
    for slot in due:
        w = state["waits"].pop(slot)
        collected = {name: json.dumps([v[2] for v in values]) for name, values in w.pop("collected").items()}
        out.append(w | {"payload": {**w["payload"], **collected}})
    return out


def _due_deferred(state: State, now: int) -> list[dict[str, Any]]:
    due = [s for s, d in sorted(state["deferred"].items()) if d["until_ms"] <= now]
    return [{k: v for k, v in state["deferred"].pop(s).items() if k != "until_ms"} for s in due]


# ---------------------------------------------------------------------------- delivery

def _decide(state: State, definitions: Mapping[str, Definition], due: list[dict[str, Any]], now: int,
            ctx: Context) -> list[dict[str, Any]]:
    if not due:
        return []
    by_slot = {_slot(c["rule"], c["key"]): c for c in due}  # one candidate per (rule, key)
    who = ctx.recipient or Recipient(state["person_id"])
    who = replace(who, person_id=state["person_id"], member_id=who.member_id or state["member_id"])
    candidates = [Candidate(definitions[c["rule"]].terms, c["key"]) for c in by_slot.values()]
    records = []
    for decision in delivery.decide(candidates, who, state["delivery"], now, ctx.policy):
        slot = _slot(decision.rule, decision.key)
        c = by_slot[slot]
        if decision.outcome == delivery.DEFERRED:
            state["deferred"][slot] = c | {"until_ms": decision.until_ms}
        else:
            state["fired"][slot] = now
        records.append(_record(decision, c))
    _evict_deferred(state, definitions)
    return records


def _record(d: Decision, c: Mapping[str, Any]) -> dict[str, Any]:
    return {"trigger_id": d.trigger_id, "rule": d.rule, "person_id": d.person_id, "member_id": d.member_id,
            "correlation_key": d.key, "outcome": d.outcome, "reason": d.reason, "channel": d.channel,
            "handle": d.handle, "until_ms": d.until_ms, "due_at_ms": c["due_ms"], "decided_at_ms": d.decided_at_ms,
            "evidence": dict(c["evidence"]), "event_ids": [e[1] for e in c["events"]], "payload": dict(c["payload"])}


def _evict_deferred(state: State, definitions: Mapping[str, Definition]) -> None:
    deferred = state["deferred"]
    while len(deferred) > MAX_DEFERRED:
        def rank(s: str) -> tuple[int, int, str]:
            return (definitions[deferred[s]["rule"]].terms.priority if deferred[s]["rule"] in definitions else -1,
                    -deferred[s]["due_ms"], s)
        del deferred[min(deferred, key=rank)]
        state["evicted"] += 1


def _forget(state: State, now: int) -> None:
    fired = state["fired"]
    for slot in [s for s, t in fired.items() if t < now - FIRED_RETAIN_MS]:
        del fired[slot]
    if len(fired) > FIRED_MEMORY:
        keep = sorted(fired, key=lambda s: (fired[s], s))[-FIRED_MEMORY:]
        state["fired"] = {s: fired[s] for s in sorted(keep)}


# ---------------------------------------------------------------------------- merges

def merge_states(survivor: State, merged: State, policy: Policy) -> State:
    """The survivor's state with the merged person's (module docstring: nothing twice, nothing lost)."""
    out = json.loads(json.dumps(survivor))
    other = json.loads(json.dumps(merged))
    out["member_id"] = out["member_id"] or other["member_id"]
    out["clock"] = max((t for t in (out["clock"], other["clock"]) if t is not None), default=None)
    for slot, t in other["fired"].items():
        out["fired"][slot] = max(t, out["fired"].get(slot, t))
    for slot, w in other["waits"].items():
        mine = out["waits"].get(slot)
        out["waits"][slot] = w if mine is None else _joined(mine, w)
    for slot, d in other["deferred"].items():
        mine = out["deferred"].get(slot)
        out["deferred"][slot] = d if mine is None or d["until_ms"] < mine["until_ms"] else mine
    for key in ("waits", "deferred"):
        out[key] = {s: v for s, v in sorted(out[key].items()) if s not in out["fired"]}
    for slot in set(out["deferred"]) & set(out["waits"]):
        del out["waits"][slot]
    out["delivery"] = delivery.merge_states(out["delivery"], other["delivery"], policy)
    out["evicted"] += other["evicted"]
    _evict_waits(out)
    if out["clock"] is not None:
        _forget(out, out["clock"])
    return out


def _joined(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One wait from two of the same (rule, key): the later counting start wins, values of both."""
    later, earlier = (a, b) if (a["start_ms"], a["start_id"]) >= (b["start_ms"], b["start_id"]) else (b, a)
    out = dict(later)
    out["events"] = _bounded([*earlier["events"], *later["events"]], MAX_EVENT_IDS)
    names = set(a["collected"]) | set(b["collected"])
    out["collected"] = {n: _bounded([*a["collected"].get(n, []), *b["collected"].get(n, [])], MAX_COLLECTED)
                        for n in sorted(names)}
    return out
