"""What trigger expressions may name: the roots, their fields and types (pure).

- ``event``: the touchpoint that starts or cancels a trigger, typed from the
  current Touchpoint contract (``schemas/com.touchline.touchpoint.*.avsc``),
  so ``event.properties.cart.cart_id`` is checked against the schema. Longs
  named ``*_time_ms`` are times.
- ``features``: the person's feature snapshot (``streams/features/profile.py``).
  ``FEATURES`` is the one list of the features triggers may use, with their
  types; tests/test_trigger_defs.py compares it with a real snapshot and
  names the ones the features core does not publish yet.
- ``calendar``: the campaign calendar as seen now (``calendar_now``): the next
  campaign that has not ended, its phase and how long until its sale starts.
- ``now``: the time the condition is evaluated (stream time), a time.

``FUNCTIONS`` are what a payload value may call (streams/triggers/expr.py), with
their signatures; the triggers stage supplies their implementations per person
(streams/triggers/person.py ``context``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from streams.reference.view import CHINA, campaign_phase, day_of
from streams.touchpoint.record import NS, named_schemas
from streams.triggers.delivery import DAY_MS
from streams.triggers.expr import (
    BOOL,
    DURATION,
    NUMBER,
    STRING,
    TIME,
    ListOf,
    MapOf,
    Record,
    Signature,
    Type,
)

_TOUCH = Record("touch", {"at_ms": TIME, "entry": STRING, "channel": STRING, "campaign": STRING, "source": STRING,
                          "medium": STRING, "search_keyword": STRING, "kol_post_id": STRING, "partner": STRING,
                          "store_id": STRING})
_SEEN = Record("seen", {"first_seen_ms": TIME, "last_seen_ms": TIME})

# name -> (type, meaning), as the features snapshot (streams/features/profile.py) publishes them.
# Times are epoch milliseconds, durations milliseconds.
FEATURES: dict[str, tuple[Type, str]] = {
    "lifecycle": (STRING, "new | active | at_risk | lapsed"),
    "browse_without_buying": (BOOL, "visits, consults and plays for points, but no order lately"),
    "interest_shift": (BOOL, "short-term category interest moved from the long-term one, on enough evidence"),
    "interest_divergence": (NUMBER, "how far it moved (Jensen-Shannon divergence)"),
    "interest_category": (STRING, "the category the short-term interest moved to"),
    "days_since_last_order": (NUMBER, "whole days since the last order"),
    "last_order_ms": (TIME, "when the person last ordered"),
    "revenue_total": (NUMBER, "revenue of all the person's orders"),
    "first_touch": (_TOUCH, "how the person first came in: channel, entry, campaign..."),
    "channels": (MapOf(_SEEN), "touchpoint channel -> first and last seen there"),
    "city": (STRING, "the person's city, as touchpoint contexts and the store table spell it"),
    "city_store": (STRING, "an open store in the person's city (their home store if it is one, else the latest opened), else null"),
    "city_store_opened_ms": (TIME, "when that store opened"),
    "p_alive": (NUMBER, "probability the person is still a customer (BG/NBD)"),
    "expected_purchases_30d": (NUMBER, "expected purchases in the next 30 days (BG/NBD)"),
    "next_purchase_ms": (TIME, "when the person's own rhythm or the purchase model puts the next purchase"),
}

# Features a snapshot gives as of its own time that conditions read as of ``now`` instead: name -> the
# time feature they count whole days from. A rule reading one changes with time alone (``as_of``).
AS_OF_NOW: dict[str, str] = {"days_since_last_order": "last_order_ms"}


def as_of(features: Mapping[str, Any], now_ms: int) -> Mapping[str, Any]:
    """The snapshot with its ``AS_OF_NOW`` features counted to ``now_ms`` (as the features core counts
    them: whole days since, never negative); the snapshot itself when it is as of ``now_ms`` already."""
    if not features or features.get("as_of_ms") == now_ms:
        return features
    out = dict(features)
    for name, since in AS_OF_NOW.items():
        t = features.get(since)
        if t is not None:
            out[name] = max(0, now_ms - t) // DAY_MS
    return out


CALENDAR: dict[str, tuple[Type, str]] = {
    "campaign_id": (STRING, "the next campaign that has not ended (running or coming)"),
    "phase": (STRING, "upcoming | warmup | sale"),
    "starts_in": (DURATION, "from now to the first sale day (local midnight); not positive once it started"),
}

# name -> (signature, meaning): the functions payload values may call.
FUNCTIONS: dict[str, tuple[Signature, str]] = {
    "recommend": (Signature((STRING,), ListOf(STRING)),
                  "product ids to recommend in a category to this person: the category's new arrivals, its best "
                  "sellers of the last days, products often bought with what they bought; never one they bought "
                  "(streams/triggers/recommend.py)"),
}


def signatures() -> dict[str, Signature]:
    return {name: sig for name, (sig, _) in FUNCTIONS.items()}


_AVRO: dict[str, Type] = {"string": STRING, "boolean": BOOL, "int": NUMBER, "long": NUMBER,
                          "float": NUMBER, "double": NUMBER}


def _avro_type(t: Any, named: Mapping[str, Any]) -> Type:
    if isinstance(t, list):
        return _avro_type(next(b for b in t if b != "null"), named)
    if isinstance(t, str):
        return _AVRO[t] if t in _AVRO else _avro_type(named[t], named)
    if t["type"] == "array":
        return ListOf(_avro_type(t["items"], named))
    if t["type"] == "map":
        return MapOf(_avro_type(t["values"], named))
    fields = {f["name"]: TIME if f["name"].endswith("_time_ms") else _avro_type(f["type"], named)
              for f in t["fields"]}
    return Record(t["name"].rsplit(".", 1)[-1], fields)


@cache
def event_type() -> Record:
    """The Touchpoint record as an expression type."""
    t = _avro_type(NS + "Touchpoint", named_schemas())
    assert isinstance(t, Record)
    return t


def _record(name: str, fields: Mapping[str, tuple[Type, str]]) -> Record:
    return Record(name, {n: t for n, (t, _) in fields.items()})


def roots(with_event: bool) -> dict[str, Type]:
    """The roots an expression may start from; ``event`` only where an event is at hand."""
    found: dict[str, Type] = {"event": event_type()} if with_event else {}
    return found | {"features": _record("features", FEATURES), "calendar": _record("calendar", CALENDAR),
                    "now": TIME}


def calendar_now(campaigns: Iterable[dict[str, Any]], now_ms: int, tz: dt.tzinfo = CHINA) -> dict[str, Any]:
    """The ``calendar`` root at ``now_ms`` from the campaign reference records ({} when none is ahead)."""
    today = day_of(now_ms, tz)
    ahead = [c for c in campaigns if c["ends_on"] >= today]
    if not ahead:
        return {}
    c = min(ahead, key=lambda c: (c["starts_on"], c["campaign_id"]))
    start = dt.datetime.combine(dt.date.fromisoformat(c["starts_on"]), dt.time(), tz)
    return {"campaign_id": c["campaign_id"], "phase": campaign_phase(c, today) or "upcoming",
            "starts_in": int(start.timestamp() * 1000) - now_ms}
