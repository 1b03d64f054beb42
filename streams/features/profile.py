"""Pure core of member features: one person's rolling profile, built from enriched touchpoints.

``empty(person_id)``, ``apply(state, enriched, cfg)``, ``merge(a, b, cfg)`` and
``snapshot(state, now_ms, cfg)``. The state is a plain JSON-able dict (it
round-trips through a Faust table's JSON changelog) of bounded size: counters in
fixed-size time buckets (streams/features/windows.py), decayed category weights
(interest.py), a handful of first/latest markers and capped tallies -- never a
list of events. The clock is passed in; nothing reads wall time.

Order and merges. Every part of the state combines events with an operation that
does not care about order -- sums, min/max of (event time, event id) markers,
log-add-exp of decayed weights, unions -- and ``merge`` applies the same
operations to two states. So the state after any arrival order of a set of
events, and the merge of two persons' states, equals the state of the combined
events (decayed weights to float rounding), with two bounds beyond which results
may depend on order: more than ``max_categories`` categories or more than
``top_places`` stores (or guides) for one person. No lateness bound is needed: a
late event lands in the buckets of its event time, and one older than a window
keeps (relative to the person's newest event) counts only in the lifetime
features, as if it had come in order and aged out. The purchase model's inputs
(``purchases``: bgnbd.PurchaseDays of the days with an order, calendar days in
``cfg.day_zone``, the reporting zone, as the fit counts them) merge exactly
too, within its 4,096-day horizon. Replays are the agent's
concern (streams/redelivery.py keeps its marks under its own key of the state;
``apply`` and ``merge`` leave keys they do not own as they are, and ``merge``
keeps those of ``a``).

What is counted (event type -> metric): page_viewed/screen_viewed page views,
product_viewed product views, products_searched searches, product_added cart
adds, order_completed orders and revenue (``revenue``, else ``total``, in
integer cents so sums are exact), guide_chatted/service_consulted
consultations, minigame_played games; sessions from every event (windows.py).
Refunds are not netted. Touch details (first and last touch) are the event's
channel, context campaign/source/medium/search keyword (or the search query of
a products_searched)/KOL post/referrer URL, envelope referrer and store, and the
partner of a points exchange.

City and the store in it. ``city`` is the ``context.city`` of the person's latest
event (by event time) that carries one, spelled as that event spelled it (stripped);
two cities at the same event time: the larger string. The state keeps one
[event time, city] pair combined by max, so order and merges do not change it, and
imported (historical) events count like any other, as everywhere in this profile.
``city_store`` is chosen at snapshot time from the store reference records passed to
``snapshot`` (``city_store``): the person's home store if it is open in their city
that day, else the most recently opened store open there (equal opening days: the
smallest store id), else none. ``city_store_opened_ms`` is that store's ``opened_on``
at local midnight in the store table's zone (Asia/Shanghai, +08:00, as
streams/reference/view.py ``day_of`` reads days), and "open that day" is judged on the
local day of the snapshot's time. A store that opens, closes or is renamed reaches a
person only with their next snapshot (their next event or lifecycle boundary);
nobody re-checks every person when the store table changes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from streams.features import bgnbd, interest, segments, windows
from streams.features.config import DEFAULTS, FeatureSettings
from streams.reference.view import CHINA, day_of, stores_in
from streams.touchpoint.record import props
from streams.touchpoint.taxonomy import PAGE_TYPES, is_junk

State = dict[str, Any]
Marker = list[Any]  # [event time ms, event id, value]

METRIC_OF = {
    **dict.fromkeys(PAGE_TYPES, "page_views"), "product_viewed": "product_views",
    "products_searched": "searches", "product_added": "cart_adds", "order_completed": "orders",
    "guide_chatted": "consultations", "service_consulted": "consultations", "minigame_played": "games",
}
_INDEX = {m: i for i, m in enumerate(windows.METRICS)}
# Visit depth (page views per session) where both count the same span: a 1 h window's
# sessions count whole half-hours, its page views 5-minute buckets, so it has none.
DEPTH_WINDOWS = ("24h", "7d", "30d", "90d")
EPOCH_DAY = date(1970, 1, 1).toordinal()  # day numbers of the purchase model are date.toordinal()
CATEGORISED = ("product_viewed", "product_added")  # their family record carries a category
ENTRY_RULES: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("partner_exchange", lambda t: "partner" in t or t.get("medium") == "points_exchange"),
    ("campus", lambda t: t.get("medium") == "campus"),
    ("kol", lambda t: "kol_post_id" in t or t.get("medium") == "kol"),
    ("search", lambda t: "search_keyword" in t),
    ("referral", lambda t: "referrer_id" in t),
    ("store", lambda t: "store_id" in t or t["channel"] == "store_pos"),
    ("campaign", lambda t: "campaign" in t),
)


def empty(person_id: str) -> State:
    return {
        "person_id": person_id, "member": None, "first_ms": None, "last_ms": None,
        "buckets": windows.empty(),
        # lifetime orders: also the purchase model's inputs (first and last purchase)
        "orders": {"count": 0, "revenue_cents": 0, "first_ms": None, "last_ms": None},
        "purchases": None,  # the purchase model's inputs: bgnbd.PurchaseDays (distinct order days, cfg.day_zone)
        "channels": {},  # channel -> [first seen ms, last seen ms]
        "first_touch": None, "last_touch": None, "referrer": None,  # markers
        "stores": {}, "guides": {},  # id -> [orders, events], the top ``top_places``
        "interest": {},
        "consent": {},  # "channel:purpose" -> [event time ms, event id, given]
        "follow": None,  # marker of the latest WeChat follow (True) or unfollow (False)
        "engaged": {},  # contact channel -> messages opened and clicked
        "id_types": [],
        "city": None,  # [event time ms, city] of the latest event with a context.city (max of the pair)
    }


def _earlier(a: Marker | None, b: Marker | None) -> Marker | None:
    return a if b is None or (a is not None and a[:2] <= b[:2]) else b


def _later(a: Marker | None, b: Marker | None) -> Marker | None:
    return a if b is None or (a is not None and a[:2] >= b[:2]) else b


def _latest_city(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    """The later [event time, city] pair; the larger city at the same time (a total order)."""
    return a if b is None or (a is not None and tuple(a) >= tuple(b)) else b


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _counts(kind: str, p: Mapping[str, Any]) -> list[int]:
    counts = [0] * len(windows.METRICS)
    metric = METRIC_OF.get(kind)
    if metric is not None:
        counts[_INDEX[metric]] = 1
    if kind == "order_completed":
        counts[_INDEX["revenue_cents"]] = _cents(p)
    return counts


def _cents(order: Mapping[str, Any]) -> int:
    return round(float(order.get("revenue") or order.get("total") or 0.0) * 100)


def _touch(tp: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    ctx = tp.get("context") or {}
    values = {
        "channel": tp["channel"], "campaign": ctx.get("campaign"), "source": ctx.get("source"),
        "medium": ctx.get("medium"), "search_keyword": ctx.get("search_keyword") or p.get("query"),
        "kol_post_id": ctx.get("kol_post_id"), "referrer_id": tp.get("referrer_id"),
        "referrer_url": ctx.get("referrer_url"), "partner": p.get("partner"), "store_id": tp.get("store_id"),
    }
    return {k: v for k, v in values.items() if v is not None}


def entry(touch: Mapping[str, Any]) -> str:
    """How a touch brought the person in: the first of ``ENTRY_RULES`` that fits, else direct."""
    return next((name for name, fits in ENTRY_RULES if fits(touch)), "direct")


def _tally(top: dict[str, list[int]], key: str, orders: int, cap: int) -> None:
    current = top.get(key, [0, 0])
    top[key] = [current[0] + orders, current[1] + 1]
    _cap(top, cap)


def _ranked(top: Mapping[str, list[int]]) -> list[str]:
    return sorted(top, key=lambda k: (-top[k][0], -top[k][1], k))


def _cap(top: dict[str, list[int]], cap: int) -> dict[str, list[int]]:
    for key in _ranked(top)[cap:]:
        del top[key]
    return top


def _widen(channels: dict[str, list[int]], channel: str, first: int, last: int) -> None:
    seen = channels.get(channel)
    channels[channel] = [first, last] if seen is None else [min(seen[0], first), max(seen[1], last)]


def _state_consent(consent: dict[str, list[Any]], key: str, said: list[Any]) -> None:
    current = consent.get(key)
    consent[key] = list(said) if current is None else list(max(current, said, key=segments.consent_rank))


def apply(state: State, enriched: Mapping[str, Any], cfg: FeatureSettings = DEFAULTS) -> State:
    """Add one enriched touchpoint to the person's state (in place; returned for chaining)."""
    tp = enriched["touchpoint"]
    t, eid, kind, channel = tp["event_time_ms"], tp["event_id"], tp["type"], tp["channel"]
    p = props(tp)
    newest = state["last_ms"]
    if newest is None or t > newest:
        if newest is not None:
            state["buckets"] = windows.moved(state["buckets"], newest, t)
        state["last_ms"] = newest = t
    state["first_ms"] = _min(state["first_ms"], t)
    windows.add(state["buckets"], newest, t, _counts(kind, p))
    if enriched.get("member_id"):
        state["member"] = _later(state["member"], [t, eid, enriched["member_id"]])
    _widen(state["channels"], channel, t, t)
    for key, pick in (("first_touch", _earlier), ("last_touch", _later)):
        if pick(state[key], [t, eid]) is not state[key]:
            state[key] = [t, eid, _touch(tp, p)]
    if tp.get("referrer_id"):
        state["referrer"] = _earlier(state["referrer"], [t, eid, tp["referrer_id"]])
    ordered = int(kind == "order_completed")
    if ordered:
        o = state["orders"]
        o["count"] += 1
        o["revenue_cents"] += _cents(p)
        o["first_ms"], o["last_ms"] = _min(o["first_ms"], t), _max(o["last_ms"], t)
        day = purchase_day(t, cfg.day_zone)
        days = state.get("purchases")
        state["purchases"] = (bgnbd.PurchaseDays.single(day) if days is None
                              else bgnbd.PurchaseDays.from_json(days).add(day)).to_json()
    for key, place in (("stores", tp.get("store_id")), ("guides", tp.get("guide_id"))):
        if place:
            _tally(state[key], place, ordered, cfg.top_places)
    if kind in CATEGORISED:
        paths = [p.get("category")]
    else:
        paths = [line.get("category") for line in p.get("products") or ()] if ordered else []
    interest.add(state["interest"], [c for c in paths if c], t, cfg)
    if kind in ("consent_given", "consent_withdrawn"):
        about, purpose = p.get("consent_channel"), p.get("purpose")
        if about in segments.CONSENT_CHANNELS and purpose in segments.PURPOSES:  # else not one we act on
            _state_consent(state["consent"], f"{about}:{purpose}", [t, eid, kind == "consent_given"])
    elif kind in ("wechat_followed", "wechat_unfollowed"):
        state["follow"] = _later(state["follow"], [t, eid, kind == "wechat_followed"])
    elif kind in ("message_opened", "message_clicked") and p.get("message_channel") in segments.CONTACT_CHANNELS:
        state["engaged"][p["message_channel"]] = state["engaged"].get(p["message_channel"], 0) + 1
    city = ((tp.get("context") or {}).get("city") or "").strip()
    if city:
        state["city"] = _latest_city(state.get("city"), [t, city])
    ids = {k for k, v in (tp.get("identifiers") or {}).items() if isinstance(v, str) and not is_junk(v)}
    if not ids <= set(state["id_types"]):
        state["id_types"] = sorted(ids.union(state["id_types"]))
    return state


def _added(a: Mapping[str, list[int]], b: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Key-wise sum of two tallies of [orders, events]."""
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out[k] = [x + y for x, y in zip(out.get(k, [0, 0]), v, strict=True)]
    return out


def merge(a: State, b: State, cfg: FeatureSettings = DEFAULTS) -> State:
    """The state of both persons' events together, kept under ``a``'s person id."""
    out = copy.deepcopy(a)
    out["buckets"] = windows.merge(a["buckets"], a["last_ms"], b["buckets"], b["last_ms"])
    out["first_ms"], out["last_ms"] = _min(a["first_ms"], b["first_ms"]), _max(a["last_ms"], b["last_ms"])
    for key, pick in (("member", _later), ("first_touch", _earlier), ("last_touch", _later),
                      ("referrer", _earlier), ("follow", _later)):
        out[key] = copy.deepcopy(pick(a[key], b[key]))
    oa, ob = a["orders"], b["orders"]
    out["orders"] = {"count": oa["count"] + ob["count"], "revenue_cents": oa["revenue_cents"] + ob["revenue_cents"],
                     "first_ms": _min(oa["first_ms"], ob["first_ms"]), "last_ms": _max(oa["last_ms"], ob["last_ms"])}
    pa, pb = a.get("purchases"), b.get("purchases")
    out["purchases"] = pa if pb is None else pb if pa is None else (
        bgnbd.PurchaseDays.from_json(pa).combine(bgnbd.PurchaseDays.from_json(pb)).to_json())
    for c, (first, last) in b["channels"].items():
        _widen(out["channels"], c, first, last)
    for key in ("stores", "guides"):
        out[key] = _cap(_added(a[key], b[key]), cfg.top_places)
    out["interest"] = interest.merge(a["interest"], b["interest"], cfg)
    for key, said in b["consent"].items():
        _state_consent(out["consent"], key, said)
    out["engaged"] = {c: a["engaged"].get(c, 0) + b["engaged"].get(c, 0) for c in a["engaged"].keys() | b["engaged"].keys()}
    out["id_types"] = sorted(set(a["id_types"]) | set(b["id_types"]))
    out["city"] = copy.deepcopy(_latest_city(a.get("city"), b.get("city")))
    return out


def _touch_view(marker: Marker | None) -> dict[str, Any] | None:
    return None if marker is None else {"at_ms": marker[0], "entry": entry(marker[2]), **marker[2]}


def purchase_day(t_ms: int, zone: str = "UTC") -> int:
    """The purchase model's day number of an event time: its calendar day in ``zone``
    (date.toordinal()), as ClickHouse's ``toDate(event_time, zone)`` that the fit reads."""
    if zone == "UTC":
        return EPOCH_DAY + t_ms // windows.DAY_MS
    return datetime.fromtimestamp(t_ms // 1000, ZoneInfo(zone)).toordinal()


def day_start_ms(day: int, zone: str = "UTC") -> int:
    """Epoch ms of the midnight that starts day number ``day`` in ``zone``."""
    return int(datetime.combine(date.fromordinal(day), time(), ZoneInfo(zone)).timestamp()) * 1000


def purchase_outlook(days: Mapping[str, Any] | None, now_ms: int,
                     model: bgnbd.Params | None, zone: str = "UTC") -> dict[str, Any]:
    """The purchase model's view of a person at ``now_ms`` (published in every snapshot): P(alive)
    and the expected purchases in the next 30 days (BG/NBD, for the loaded parameters; None without
    parameters or before a first order) and the expected next purchase (last purchase day plus the
    mean interval, the midnight starting that day in ``zone``, the zone of the days; None before a
    second purchase day)."""
    out: dict[str, Any] = {"p_alive": None, "expected_purchases_30d": None, "next_purchase_ms": None}
    if days is None:
        return out
    state = bgnbd.PurchaseDays.from_json(days)
    nxt = state.next_purchase_day()
    if nxt is not None:
        out["next_purchase_ms"] = day_start_ms(nxt, zone)
    if model is not None:
        inputs = state.inputs(max(purchase_day(now_ms, zone), state.last))
        out["p_alive"] = bgnbd.p_alive(model, inputs)
        out["expected_purchases_30d"] = bgnbd.conditional_expected(model, inputs, 30 / bgnbd.DAYS_PER_WEEK)
    return out


def opened_ms(store: Mapping[str, Any]) -> int:
    """A store's ``opened_on`` as epoch ms: local midnight in the store table's zone (+08:00)."""
    return int(datetime.combine(date.fromisoformat(store["opened_on"]), time(), CHINA).timestamp() * 1000)


def city_store(stores: Iterable[Mapping[str, Any]], city: str | None, home_store: str | None,
               now_ms: int) -> tuple[str | None, int | None]:
    """(store id, opened ms) of the person's store in ``city`` among the store reference records
    ``stores``, judged on the local day of ``now_ms``: ``home_store`` if open in the city that day,
    else the most recently opened store open there (same day: the smallest store id); (None, None)
    without a city or such a store. Cities match case-insensitively, as ``ReferenceData.stores_in``."""
    if not city:
        return None, None
    open_here = stores_in(stores, city, day_of(now_ms))
    if not open_here:
        return None, None
    home = [s for s in open_here if s["store_id"] == home_store]
    best = home[0] if home else min(open_here, key=lambda s: (-date.fromisoformat(s["opened_on"]).toordinal(),
                                                               s["store_id"]))
    return best["store_id"], opened_ms(best)


def snapshot(state: State, now_ms: int, cfg: FeatureSettings = DEFAULTS,
             model: bgnbd.Params | None = None, stores: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The person's features at ``now_ms`` (event time; the person's newest event time if later),
    with the purchase outlook for the BG/NBD parameters ``model`` (None: none loaded) and the
    person's store among the store reference records ``stores`` (none given: no city store)."""
    last, orders = state["last_ms"], state["orders"]
    now = now_ms if last is None else max(now_ms, last)
    out: dict[str, Any] = {
        "person_id": state["person_id"], "member_id": state["member"] and state["member"][2],
        "first_seen_ms": state["first_ms"], "last_seen_ms": last,
        "days_since_last_visit": None if last is None else (now - last) // windows.DAY_MS,
        "days_since_last_order": None if orders["last_ms"] is None else (now - orders["last_ms"]) // windows.DAY_MS,
        "orders_total": orders["count"], "revenue_total": orders["revenue_cents"] / 100,
        "first_order_ms": orders["first_ms"], "last_order_ms": orders["last_ms"],
    }
    sums = windows.totals(state["buckets"], last, now)
    for name, s in sums.items():
        for metric in ("sessions", *windows.METRICS):
            if metric != "revenue_cents":
                out[f"{metric}_{name}"] = s[metric]
        out[f"revenue_{name}"] = s["revenue_cents"] / 100
        out[f"aov_{name}"] = round(s["revenue_cents"] / s["orders"] / 100, 2) if s["orders"] else None
        if name in DEPTH_WINDOWS:
            out[f"visit_depth_{name}"] = s["page_views"] / s["sessions"] if s["sessions"] else None
    long_term, short_term = interest.distribution(state["interest"], 0), interest.distribution(state["interest"], 1)
    shift = interest.divergence(long_term, short_term) if long_term else None
    evidence = interest.short_events(state["interest"], now, cfg)
    consent = segments.consents(state["consent"])
    reach = segments.reachable(consent.get("marketing", {}), state["id_types"],
                               bool(state["follow"] and state["follow"][2]), state["channels"])
    grid = sums[cfg.grid_window]
    out |= {
        "channels": {c: {"first_seen_ms": f, "last_seen_ms": la} for c, (f, la) in sorted(state["channels"].items())},
        "first_touch": _touch_view(state["first_touch"]), "last_touch": _touch_view(state["last_touch"]),
        "referred_by": state["referrer"] and state["referrer"][2],
        "home_store": next(iter(_ranked(state["stores"])), None),
        "home_guide": next(iter(_ranked(state["guides"])), None),
        "interest_long": long_term, "interest_short": short_term,
        "interest_divergence": shift, "interest_short_events": evidence,
        "interest_shift": shift is not None and shift >= cfg.shift_threshold and evidence >= cfg.shift_min_events,
        "member_grid": segments.member_grid(grid["orders"], grid["revenue_cents"], cfg),
        "browse_without_buying": segments.browses_without_buying(sums[cfg.browse_window], cfg),
        "lifecycle": segments.lifecycle(state["first_ms"], last, now, cfg),
        "consent": consent, "reachable": reach,
        "preferred_channel": segments.preferred_channel(reach, state["engaged"]),
    }
    out |= purchase_outlook(state.get("purchases"), now, model, cfg.day_zone)
    city = state.get("city")
    out["city"] = city and city[1]
    out["city_store"], out["city_store_opened_ms"] = city_store(stores, out["city"], out["home_store"], now)
    return out


def state_bytes(state: State) -> int:
    """Size of the state as a table changelog holds it (stdlib JSON, as Faust writes it)."""
    return len(json.dumps(state).encode())
