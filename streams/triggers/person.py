"""One person's entry in the triggers stage's ``trigger-pending`` table, and its records. Pure.

An entry wraps the engine's per-person state (``streams/triggers/engine.py``)
with what the stage needs around it:

- ``engine``: the engine state (waits, deferred decisions, decided keys, delivery counters);
- ``features``: the person's latest features snapshot, cut to what the loaded
  definitions and delivery read (``kept_keys``): the features agent carries each snapshot
  it publishes on ``internal.featured`` as a ``features`` op of the batch it was
  taken after, so the entry holds exactly the last published one;
- ``handles``: the WeChat openids seen on the person's own events, per channel
  (``wechat_oa``, ``mini_program``): the recipient handle of those channels;
- ``zone``: [event time, IANA zone] of the person's latest live event that
  names its device's time zone (``context.timezone``), or None: quiet hours
  are kept in that zone (without one, in the delivery policy's);
- ``bought``: product id -> event time of the latest order of it, the latest
  ``BOUGHT_KEPT`` products the person ordered (live and imported orders both),
  what ``recommend`` never offers them; a map, so an order applied twice
  changes nothing, and a merge keeps the latest of both;
- ``src``: the redelivery marks (streams/redelivery.py);
- ``absorbed``: the persons already merged into this one (the latest
  ``redelivery.ABSORBED_KEPT``), so a merged-away person's state handed over twice is
  folded in once;
- ``partition``: the person's partition, for the due index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import cache
from typing import Any

from streams import redelivery
from streams.features.profile import city_store
from streams.touchpoint.record import props
from streams.triggers import delivery, engine
from streams.triggers.engine import Context
from streams.triggers.vocabulary import AS_OF_NOW, FEATURES

Entry = dict[str, Any]
# What the entry keeps of a snapshot whatever the definitions read: the recipient's facts, and the
# city and home store its city store is judged from again at each step (``context``). Its person
# and member ids are the engine state's (``context`` puts them back).
RECIPIENT_KEYS = frozenset({"consent", "reachable", "preferred_channel", "home_store", "city"})
# Every feature a condition may read, and the recipient's facts (``kept_keys`` narrows it).
FEATURE_KEYS = frozenset(FEATURES) | RECIPIENT_KEYS
PUBLISHED = (delivery.FIRE, delivery.HOLDOUT, delivery.SUPPRESSED)  # final decisions go on triggers.fired
BOUGHT_KEPT = 50
# recommend(category, bought products) -> product ids, as the triggers agent wires it (recommend.py)
Recommender = Callable[[str, Collection[str]], list[str]]


def empty(person_id: str, partition: int) -> Entry:
    return {"engine": engine.empty(person_id), "features": None, "handles": {}, "zone": None, "bought": {},
            "absorbed": [], "partition": partition}


Kept = Mapping[str, "frozenset[str] | None"]  # feature -> the keys kept of its map (None: all of it)
EVERYTHING: Kept = dict.fromkeys(FEATURE_KEYS)


def kept_keys(definitions: Iterable[Any]) -> Kept:
    """What entries keep of a snapshot for these definitions (definitions.Definition): each
    feature their expressions read, only the keys they read of a map feature (``features.
    channels.store_pos`` keeps that channel of ``channels``), the times features read as of now
    count from (AS_OF_NOW), and the recipient's facts. Most of a snapshot (windows, channels,
    touches, interest distributions) is read by no built-in rule: kept whole it was most of a
    person's trigger state. A definition added later reads from each person's next snapshot on."""
    subkeys: dict[str, set[str] | None] = {}
    for d in definitions:
        for e in d.expressions():
            for path in e.paths():
                names = path.names
                if names[0] != "features" or len(names) < 2 or names[1] not in FEATURE_KEYS:
                    continue
                have = subkeys.setdefault(names[1], set())
                if len(names) == 2 or have is None:
                    subkeys[names[1]] = None  # read whole
                else:
                    have.add(names[2])
    for name in [n for n in subkeys if n in AS_OF_NOW]:
        subkeys[AS_OF_NOW[name]] = None
    out: dict[str, frozenset[str] | None] = {k: None if v is None else frozenset(v) for k, v in subkeys.items()}
    return {**out, **dict.fromkeys(RECIPIENT_KEYS)}


def keep_features(entry: Entry, snapshot: Mapping[str, Any], kept: Kept = EVERYTHING) -> None:
    """Keep what ``kept`` names of the person's latest features snapshot in their entry, nulls
    left out (an absent feature reads as null)."""
    features: dict[str, Any] = {}
    for k, v in snapshot.items():
        if k not in kept or v is None:  # an absent feature reads as null (expr.evaluate)
            continue
        sub = kept[k]
        features[k] = {s: v[s] for s in sub if s in v} if sub is not None and isinstance(v, Mapping) else v
    if "interest_category" in kept and features.get("interest_category") is None:
        category = interest_category(snapshot)
        if category is not None:
            features["interest_category"] = category
    entry["features"] = features


def interest_category(snapshot: Mapping[str, Any]) -> str | None:
    """The category the short-term interest moved to, where the snapshot does not name it: the one
    whose short-term share gained most over its long-term share (None without a gain)."""
    short, long = snapshot.get("interest_short") or {}, snapshot.get("interest_long") or {}
    gains = {c: share - long.get(c, 0.0) for c, share in short.items()}
    best = max(sorted(gains), key=lambda c: gains[c], default=None)
    return best if best is not None and gains[best] > 0 else None


def note_handles(entry: Entry, enriched: Mapping[str, Any]) -> None:
    """Remember the openid of a live WeChat event (the handle of that channel) and the time zone a
    live event names, the latest by event time."""
    tp = enriched["touchpoint"]
    if tp.get("historical"):
        return
    openid = (tp.get("identifiers") or {}).get("wechat_openid")
    if openid and tp["channel"] in delivery.HANDLE_CHANNELS:
        entry["handles"][tp["channel"]] = openid
    zone = (tp.get("context") or {}).get("timezone")
    if zone:
        entry["zone"] = _later(entry.get("zone"), [tp["event_time_ms"], zone])


def note_bought(entry: Entry, enriched: Mapping[str, Any]) -> None:
    """Remember the products of an order (``order_completed``, live or imported) the person placed."""
    tp = enriched["touchpoint"]
    if tp["type"] != "order_completed":
        return
    t = tp["event_time_ms"]
    lines = [line["product_id"] for line in props(tp).get("products") or () if line.get("product_id")]
    if lines:
        entry["bought"] = _latest_bought(entry.get("bought") or {}, dict.fromkeys(lines, t))


def _latest_bought(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Both maps of product -> latest order time, the latest ``BOUGHT_KEPT`` products (ties: the larger id)."""
    joined = dict(a)
    for pid, t in b.items():
        joined[pid] = max(t, joined.get(pid, t))
    kept = sorted(joined.items(), key=lambda kv: (kv[1], kv[0]))[-BOUGHT_KEPT:]
    return dict(sorted(kept))


def _later(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    return max((z for z in (a, b) if z), default=None)


StoreOf = Callable[[str | None, str | None], tuple[str | None, int | None]]  # (city, home store) -> store, opened


def city_stores(stores: Iterable[Mapping[str, Any]], now_ms: int) -> StoreOf:
    """``profile.city_store`` over the store reference records ``stores`` on the day of ``now_ms``,
    remembered per (city, home store): one batch's steps ask it for many persons of a few cities."""
    listed = list(stores)
    return cache(lambda city, home: city_store(listed, city, home, now_ms))


def context(entry: Entry, policy: delivery.Policy, calendar: Mapping[str, Any],
            wait_ms: Mapping[str, int], recommender: Recommender | None = None,
            store_of: StoreOf | None = None) -> Context:
    """The engine's context for this person: their latest features and the recipient they make, and
    the payload functions (``recommend(category)``: ``recommender`` given what they bought).
    With ``store_of`` (the city store of a city and a home store now: ``city_stores``), the person's
    city store is judged again at the step's time, so a store that opened in their city since their latest
    snapshot is theirs at the next clock advance. Without a snapshot yet the person reaches no
    channel (decisions are suppressed as unreachable)."""
    features = entry["features"]
    if features is not None:
        state = entry["engine"]  # its member id: the latest snapshot's (engine.step), else an event's
        features = {**features, "person_id": state["person_id"], "member_id": state["member_id"]}
    if features is not None and store_of is not None:
        store, opened = store_of(features.get("city"), features.get("home_store"))
        features = {**features, "city_store": store, "city_store_opened_ms": opened}
    zone = entry.get("zone")
    recipient = None if features is None else engine.recipient_of(features, entry["handles"],
                                                                  timezone=zone[1] if zone else None)
    functions: dict[str, Callable[..., Any]] = {}
    if recommender is not None:
        bought = frozenset(entry.get("bought") or ())
        functions["recommend"] = lambda category: recommender(category, bought)
    return Context(policy, recipient, features, calendar, wait_ms, functions)


def handed_over(entry: Mapping[str, Any]) -> str:
    """What a trigger_state op carries of a merged-away person to the survivor's partition."""
    return json.dumps({"engine": entry["engine"], "handles": entry["handles"], "zone": entry.get("zone"),
                       "bought": entry.get("bought") or {}, "absorbed": entry["absorbed"]})


def absorb(entry: Entry, person_id: str, gone: Mapping[str, Any], policy: delivery.Policy) -> bool:
    """Fold the merged-away ``person_id``'s handed-over state into ``entry``; False if already folded in."""
    if not redelivery.absorb_once(entry, entry["engine"]["person_id"], person_id, gone):
        return False
    entry["engine"] = engine.merge_states(entry["engine"], gone["engine"], policy)
    entry["handles"] = {**gone["handles"], **entry["handles"]}
    entry["zone"] = _later(entry.get("zone"), gone.get("zone"))
    entry["bought"] = _latest_bought(entry.get("bought") or {}, gone.get("bought") or {})
    return True


def next_due(entry: Mapping[str, Any], recheck: bool = False) -> int | None:
    """When a clock advance has something to do for the person: a wait or deferred decision due, or,
    with ``recheck`` (some rule changes with time alone), the next recheck once they have features."""
    due = engine.next_due(entry["engine"])
    if recheck and entry["features"] is not None:
        again = engine.next_recheck(entry["engine"])
        if again is not None:
            due = again if due is None else min(due, again)
    return due


def trigger_record(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The Trigger record (schemas/com.touchline.triggers.Trigger.avsc) of an engine decision."""
    ids = decision["event_ids"]
    return {
        "trigger_id": decision["trigger_id"], "rule": decision["rule"], "person_id": decision["person_id"],
        "member_id": decision["member_id"], "correlation_key": decision["correlation_key"],
        "source_event_id": ids[-1] if ids else "", "due_at_ms": decision["due_at_ms"],
        "fired_at_ms": decision["decided_at_ms"], "payload": decision["payload"], "outcome": decision["outcome"],
        "reason": decision["reason"], "channel": decision["channel"], "handle": decision["handle"],
        "evidence": decision["evidence"], "event_ids": list(ids),
    }
