"""What trigger expressions may name: the roots, their fields and types (pure).

- ``event``: the touchpoint that starts or cancels a trigger, typed from the
  current Touchpoint contract (``schemas/com.touchline.touchpoint.*.avsc``),
  so ``event.properties.cart.cart_id`` is checked against the schema. Longs
  named ``*_time_ms`` are times.
- ``features``: the person's feature snapshot. ``FEATURES`` is the one list
  of the features triggers may use, with their types; the features core must
  publish each of them under that name (a test can hold the two together).
- ``calendar``: the campaign calendar as seen now (``calendar_now``): the next
  campaign that has not ended, its phase and how long until its sale starts.
- ``now``: the time the condition is evaluated (stream time), a time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from streams.reference.view import CHINA, campaign_phase, day_of
from streams.touchpoint.record import NS, named_schemas
from streams.triggers.expr import BOOL, DURATION, NUMBER, STRING, TIME, ListOf, MapOf, Record, Type

# name -> (type, meaning). Times are epoch milliseconds, durations milliseconds.
FEATURES: dict[str, tuple[Type, str]] = {
    "lifecycle": (STRING, "new | active | at_risk | lapsed"),
    "acquisition_channel": (STRING, "touchpoint channel of the person's first touch"),
    "city": (STRING, "the person's city, as touchpoint contexts and the store table spell it"),
    "home_store_id": (STRING, "an open store in the person's city (the nearest), else null"),
    "home_store_opened_at": (TIME, "when that store opened"),
    "store_visits_365d": (NUMBER, "store visits in the last 365 days"),
    "sessions_14d": (NUMBER, "sessions in the last 14 days"),
    "consultations_14d": (NUMBER, "shopping-guide chats and customer-service consultations, 14 days"),
    "minigames_14d": (NUMBER, "points mini-games played, 14 days"),
    "orders_90d": (NUMBER, "orders placed in the last 90 days"),
    "revenue_365d": (NUMBER, "revenue of the last 365 days"),
    "last_order_at": (TIME, "when the person last ordered"),
    "days_since_last_order": (NUMBER, "whole days since the last order"),
    "interest_shift": (NUMBER, "divergence of short-term from long-term category interest, 0..1"),
    "interest_shift_evidence": (NUMBER, "events behind the short-term interest"),
    "interest_category": (STRING, "the category the short-term interest moved to"),
    "p_alive": (NUMBER, "probability the person is still a customer (BG/NBD)"),
    "expected_purchases_30d": (NUMBER, "expected purchases in the next 30 days (BG/NBD)"),
    "next_purchase_at": (TIME, "when the person's own rhythm or the purchase model puts the next purchase"),
}

CALENDAR: dict[str, tuple[Type, str]] = {
    "campaign_id": (STRING, "the next campaign that has not ended (running or coming)"),
    "phase": (STRING, "upcoming | warmup | sale"),
    "starts_in": (DURATION, "from now to the first sale day (local midnight); not positive once it started"),
}

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
