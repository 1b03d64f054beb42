"""Member features, the pure core (streams/features/profile.py and its parts): hand-computed
cases per feature, and property tests for arrival order, merges and JSON round trips."""

from __future__ import annotations

import json
import math
import random
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.features import bgnbd, interest, profile, segments
from streams.features.config import SHIFT_THRESHOLD, FeatureSettings
from streams.features.windows import DAY_MS, HOUR_MS, MINUTE_MS
from tests.conftest import T0, touchpoint

MIN, HOUR, DAY = MINUTE_MS, HOUR_MS, DAY_MS
NOW = (T0 // DAY + 10) * DAY + 12 * HOUR + 30 * MIN  # 12:30 UTC
MIDNIGHT = NOW - NOW % DAY
CFG = FeatureSettings()


def enriched(tp: dict[str, Any], member_id: str | None = None) -> dict[str, Any]:
    return {"person_id": "p-1", "member_id": member_id, "processed_at_ms": NOW, "touchpoint": tp}


def built(events: list[dict[str, Any]], cfg: FeatureSettings = CFG) -> dict[str, Any]:
    state = profile.empty("p-1")
    for e in events:
        profile.apply(state, e, cfg)
    return state


def features(events: list[dict[str, Any]], now: int = NOW, cfg: FeatureSettings = CFG,
             stores: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return profile.snapshot(built(events, cfg), now, cfg, stores=stores)


def page(eid: str, t: int, channel: str = "web", **fields: Any) -> dict[str, Any]:
    return enriched(touchpoint(eid, "page_viewed", t, channel, **fields))


def view(eid: str, t: int, category: str) -> dict[str, Any]:
    return enriched(touchpoint(eid, "product_viewed", t, properties={"product_id": f"P-{eid}", "category": category}))


def order(eid: str, t: int, revenue: float | None = None, total: float | None = None,
          categories: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    lines = [{"product_id": f"P{i}", "category": c} for i, c in enumerate(categories)]
    return enriched(touchpoint(eid, "order_completed", t, properties={
        "order_id": f"o-{eid}", "revenue": revenue, "total": total, "products": lines}, **fields))


def consent(eid: str, t: int, channel: str, given_: bool, purpose: str = "marketing") -> dict[str, Any]:
    kind = "consent_given" if given_ else "consent_withdrawn"
    return enriched(touchpoint(eid, kind, t, "app", properties={"consent_channel": channel, "purpose": purpose}))


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal, floats to 1e-9 relative (decayed interest weights are summed in float)."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (path, sorted(a.keys() ^ b.keys()))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


# --------------------------------------------------------------------------- windows

WINDOW_EVENTS = [  # (minutes before NOW, in which windows)
    (5, "1h"), (25, "1h"), (62, "24h"), (3 * 60, "24h"), (23 * 60, "24h"),
    (23 * 60 + 45, "7d"),  # before the 24 h window's first hour bucket (23-24 h covered)
    (6 * 1440 + 12 * 60, "7d"),  # the 7 d window starts at a midnight 6.5 days back
    (6 * 1440 + 13 * 60, "30d"), (29 * 1440, "30d"), (89 * 1440, "90d"), (90 * 1440, None), (200 * 1440, None),
]


def test_each_window_counts_the_buckets_ending_with_now() -> None:
    f = features([page(f"e{i}", NOW - m * MIN) for i, (m, _) in enumerate(WINDOW_EVENTS)])
    assert [f[f"page_views_{w}"] for w in ("1h", "24h", "7d", "30d", "90d")] == [2, 5, 7, 9, 10]
    # Sessions: runs of active half-hours; 12:05 and 12:25 share one, 11:28 is alone (11:30 empty).
    assert [f[f"sessions_{w}"] for w in ("1h", "24h", "7d", "30d", "90d")] == [1, 4, 6, 8, 9]
    assert f["visit_depth_24h"] == 5 / 4 and "visit_depth_1h" not in f
    assert f["first_seen_ms"] == NOW - 200 * DAY and f["last_seen_ms"] == NOW - 5 * MIN
    assert f["days_since_last_visit"] == 0


def test_sessions_follow_half_hours() -> None:
    def sessions(*minutes: int) -> int:
        return features([page(f"e{m}", MIDNIGHT + 10 * HOUR + m * MIN) for m in minutes])["sessions_24h"]

    assert sessions(1, 29) == 1  # one half-hour
    assert sessions(1, 40, 75, 100) == 1  # adjacent half-hours, gaps under 30 min
    assert sessions(1, 61) == 2  # 10:30-11:00 empty: more than 30 min apart
    assert sessions(1, 59) == 1  # 58 min apart but in adjacent half-hours: the documented undercount


def test_a_late_event_lands_in_the_windows_of_its_event_time() -> None:
    state = built([page("now", NOW), page("late", NOW - 3 * HOUR)])
    f = profile.snapshot(state, NOW)
    assert (f["page_views_1h"], f["page_views_24h"]) == (1, 2)
    profile.apply(state, page("ancient", NOW - 120 * DAY))  # older than every window kept
    f = profile.snapshot(state, NOW)
    assert (f["page_views_90d"], f["first_seen_ms"], f["days_since_last_visit"]) == (2, NOW - 120 * DAY, 0)


def test_windows_move_with_the_clock() -> None:
    state = built([page("a", NOW)])
    assert profile.snapshot(state, NOW + 2 * HOUR)["page_views_1h"] == 0
    later = profile.snapshot(state, NOW + 10 * DAY)
    assert (later["page_views_7d"], later["page_views_30d"], later["days_since_last_visit"]) == (0, 1, 10)
    # A clock behind the person's newest event answers for that event's time.
    assert profile.snapshot(state, NOW - DAY)["page_views_1h"] == 1


def test_orders_revenue_and_average_order_value() -> None:
    f = features([order("a", NOW - 20 * HOUR, revenue=100.0), order("b", NOW - 2 * DAY, revenue=250.5),
                  order("c", NOW - 40 * DAY, total=1000.0)])  # no revenue: the total counts
    assert (f["orders_7d"], f["revenue_7d"], f["aov_7d"]) == (2, 350.5, 175.25)
    assert (f["orders_90d"], f["revenue_90d"], f["aov_90d"]) == (3, 1350.5, 450.17)
    assert (f["orders_24h"], f["aov_24h"]) == (1, 100.0)
    assert (f["orders_total"], f["revenue_total"], f["days_since_last_order"]) == (3, 1350.5, 0)
    assert (f["first_order_ms"], f["last_order_ms"]) == (NOW - 40 * DAY, NOW - 20 * HOUR)
    assert profile.snapshot(built([order("a", NOW - 20 * HOUR, 1.0)]), NOW + 2 * DAY)["days_since_last_order"] == 2


def test_event_types_count_in_their_metric() -> None:
    events = [
        enriched(touchpoint("s", "products_searched", NOW, properties={"query": "court pro"})),
        enriched(touchpoint("c", "product_added", NOW, properties={"cart_id": "c1", "product_id": "P1"})),
        enriched(touchpoint("g", "guide_chatted", NOW, "store_pos", guide_id="G1")),
        enriched(touchpoint("k", "service_consulted", NOW, "customer_service")),
        enriched(touchpoint("m", "minigame_played", NOW, "mini_program", properties={"game_id": "spin"})),
        enriched(touchpoint("v", "screen_viewed", NOW, "app")),
        view("p", NOW, "men/shoes/basketball"),
    ]
    f = features(events)
    assert {m: f[f"{m}_1h"] for m in ("searches", "cart_adds", "consultations", "games", "page_views",
                                      "product_views", "orders", "sessions")} == {
        "searches": 1, "cart_adds": 1, "consultations": 2, "games": 1, "page_views": 1, "product_views": 1,
        "orders": 0, "sessions": 1}


def test_first_and_last_seen_per_channel() -> None:
    f = features([page("a", NOW - 5 * DAY, "web"), page("b", NOW - DAY, "app"), page("c", NOW - 2 * DAY, "web")])
    assert f["channels"] == {"app": {"first_seen_ms": NOW - DAY, "last_seen_ms": NOW - DAY},
                             "web": {"first_seen_ms": NOW - 5 * DAY, "last_seen_ms": NOW - 2 * DAY}}


# --------------------------------------------------------------------------- acquisition

def test_first_and_last_touch_and_referrer() -> None:
    kol = enriched(touchpoint("a", "signed_up", NOW - 9 * DAY, "mini_program", referrer_id="kol:lily-runs",
                              context={"kol_post_id": "xhs-note-8812", "source": "xiaohongshu", "medium": "kol"}))
    exchange = enriched(touchpoint("b", "points_exchanged", NOW, "partner", referrer_id="partner:airline-miles",
                                   properties={"points": 800, "partner": "airline-miles"}))
    f = features([exchange, page("c", NOW - DAY), kol])
    assert f["first_touch"] == {"at_ms": NOW - 9 * DAY, "entry": "kol", "channel": "mini_program",
                                "source": "xiaohongshu", "medium": "kol", "kol_post_id": "xhs-note-8812",
                                "referrer_id": "kol:lily-runs"}
    assert f["last_touch"] == {"at_ms": NOW, "entry": "partner_exchange", "channel": "partner",
                               "referrer_id": "partner:airline-miles", "partner": "airline-miles"}
    assert f["referred_by"] == "kol:lily-runs"


@pytest.mark.parametrize("touch, entry", [
    ({"channel": "partner", "medium": "points_exchange"}, "partner_exchange"),
    ({"channel": "mini_program", "medium": "campus", "kol_post_id": "campus-fair-3"}, "campus"),
    ({"channel": "web", "search_keyword": "running shoes", "campaign": "d11"}, "search"),
    ({"channel": "app", "referrer_id": "M000123"}, "referral"),
    ({"channel": "store_pos"}, "store"),
    ({"channel": "web", "store_id": "S001", "campaign": "d11"}, "store"),
    ({"channel": "web", "campaign": "d11"}, "campaign"),
    ({"channel": "web", "referrer_url": "https://news.example"}, "direct"),
])
def test_entry_of_a_touch(touch: dict[str, Any], entry: str) -> None:
    assert profile.entry(touch) == entry


def test_a_search_event_gives_its_query_as_the_keyword() -> None:
    f = features([enriched(touchpoint("s", "products_searched", NOW, properties={"query": "court pro"}))])
    assert f["first_touch"]["search_keyword"] == "court pro" and f["first_touch"]["entry"] == "search"


def test_home_store_and_shopping_guide() -> None:
    events = [order("o1", NOW - 3 * DAY, 100.0, store_id="S1", channel="store_pos"),
              order("o2", NOW - 2 * DAY, 100.0, store_id="S1", guide_id="G2", channel="store_pos")]
    events += [enriched(touchpoint(f"v{i}", "store_visited", NOW - i * HOUR, "store_pos", store_id="S2"))
               for i in range(3)]
    events += [enriched(touchpoint(f"g{i}", "guide_chatted", NOW - i * HOUR, "store_pos", guide_id="G1"))
               for i in range(3)]
    f = features(events)
    assert (f["home_store"], f["home_guide"]) == ("S1", "G2")  # orders first, then events
    assert features(events[2:])["home_store"] == "S2" and features(events[2:])["home_guide"] == "G1"


def store(store_id: str, city: str, opened_on: str, closed_on: str | None = None) -> dict[str, Any]:
    return {"store_id": store_id, "name": store_id, "city": city, "latitude": 31.2, "longitude": 121.5,
            "opened_on": opened_on, "closed_on": closed_on}


def city_page(eid: str, t: int, city: str | None, channel: str = "web") -> dict[str, Any]:
    return page(eid, t, channel, context={"city": city})


def test_city_is_that_of_the_latest_event_carrying_one() -> None:
    events = [city_page("a", NOW - 3 * DAY, "Hangzhou"), city_page("b", NOW - 2 * DAY, "Shanghai"),
              city_page("c", NOW - DAY, None), city_page("d", NOW - 5 * DAY, "Beijing"),
              city_page("e", NOW - HOUR, "  ")]
    assert features(events)["city"] == "Shanghai"  # c and e carry no city; d is older
    for seed in range(5):  # any arrival order
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        assert features(shuffled)["city"] == "Shanghai"
    tie = [city_page("x", NOW - DAY, "Hangzhou"), city_page("y", NOW - DAY, "Shanghai")]
    assert features(tie)["city"] == features(tie[::-1])["city"] == "Shanghai"  # same time: the larger string
    assert features([page("p", NOW)])["city"] is None
    assert built([city_page("s", NOW, " Shanghai ")])["city"] == [NOW, "Shanghai"]  # one time, one string


def test_merge_takes_the_later_city() -> None:
    early, late = built([city_page("a", NOW - 2 * DAY, "Shanghai")]), built([city_page("b", NOW - DAY, "Hangzhou")])
    both = [city_page("a", NOW - 2 * DAY, "Shanghai"), city_page("b", NOW - DAY, "Hangzhou")]
    for merged in (profile.merge(early, late), profile.merge(late, early)):
        assert merged["city"] == built(both)["city"] == [NOW - DAY, "Hangzhou"]
    assert profile.merge(early, profile.empty("p-2"))["city"] == [NOW - 2 * DAY, "Shanghai"]
    assert profile.merge(profile.empty("p-2"), early)["city"] == [NOW - 2 * DAY, "Shanghai"]


# NOW is 2026-11-10 20:30 +08:00. 2026-10-20 00:00 +08:00 = 2026-10-19 16:00 UTC, 12 days before
# T0 (2026-11-01 00:00 +08:00): 1_793_462_400_000 - 12 * 86_400_000.
OCT20 = 1_792_425_600_000
STORES = (store("S1", "Shanghai", "2020-01-01"), store("S3", "Shanghai", "2026-10-20"),
          store("S2", "Shanghai", "2026-10-20"), store("S4", "Shanghai", "2026-12-01"),
          store("S5", "Shanghai", "2018-06-01", "2026-11-01"), store("S6", "Hangzhou", "2021-01-01"))


@pytest.mark.parametrize(("city", "home", "want"), [
    ("Shanghai", "S1", ("S1", 1_577_808_000_000)),  # the home store, open in the city (2020-01-01 +08:00)
    ("Shanghai", None, ("S2", OCT20)),  # else the latest opened; S2 and S3 the same day: smaller id
    ("Shanghai", "S6", ("S2", OCT20)),  # home store in another city
    ("Shanghai", "S5", ("S2", OCT20)),  # home store closed (2026-11-01)
    ("Shanghai", "S4", ("S2", OCT20)),  # home store not open yet (2026-12-01)
    (" shanghai ", None, ("S2", OCT20)),  # cities match as stores_in matches them
    ("Hangzhou", "S1", ("S6", 1_609_430_400_000)),
    ("Beijing", None, (None, None)),  # no store in the city
    (None, "S1", (None, None)),  # no city known
])
def test_city_store_by_hand(city: str | None, home: str | None, want: tuple[str | None, int | None]) -> None:
    assert profile.city_store(STORES, city, home, NOW) == want


def test_city_store_opens_and_closes_at_local_midnight() -> None:
    only = (store("S9", "Shanghai", "2026-10-20", "2026-11-05"),)
    assert profile.city_store(only, "Shanghai", None, OCT20 - 1) == (None, None)  # 2026-10-19 23:59:59.999 +08:00
    assert profile.city_store(only, "Shanghai", None, OCT20) == ("S9", OCT20)
    closing = OCT20 + 16 * DAY  # 2026-11-05 00:00 +08:00
    assert profile.city_store(only, "Shanghai", None, closing - 1) == ("S9", OCT20)
    assert profile.city_store(only, "Shanghai", None, closing) == (None, None)
    assert profile.city_store((), "Shanghai", None, NOW) == (None, None)


def test_the_snapshot_publishes_city_and_city_store() -> None:
    events = [city_page("a", NOW - 2 * DAY, "Shanghai"),
              enriched(touchpoint("v", "store_visited", NOW - DAY, "store_pos", store_id="S1"))]
    f = features(events, stores=STORES)
    assert (f["home_store"], f["city"], f["city_store"], f["city_store_opened_ms"]) == (
        "S1", "Shanghai", "S1", 1_577_808_000_000)
    f = features(events[:1], stores=STORES)
    assert (f["city"], f["city_store"], f["city_store_opened_ms"]) == ("Shanghai", "S2", OCT20)
    assert features(events[:1], now=NOW + 30 * DAY, stores=STORES)["city_store"] == "S4"  # opened 2026-12-01
    f = features(events[:1])  # no store records at hand
    assert (f["city"], f["city_store"], f["city_store_opened_ms"]) == ("Shanghai", None, None)


def test_places_beyond_the_cap_keep_the_strongest() -> None:
    cfg = FeatureSettings(top_places=2)
    events = [enriched(touchpoint(f"v{s}{i}", "store_visited", NOW - i * HOUR, "store_pos", store_id=s))
              for s, n in (("S1", 3), ("S2", 2), ("S3", 1)) for i in range(n)]
    assert built(events, cfg)["stores"] == {"S1": [0, 3], "S2": [0, 2]}


# --------------------------------------------------------------------------- interest

def test_interest_distributions_by_hand() -> None:
    f = features([view("a", NOW - 3 * DAY, "women/fashion/dresses"), view("b", NOW, "men/shoes/basketball")])
    # Short term (3-day half-life): the older view weighs 1/2.
    assert f["interest_short"] == pytest.approx({"men/shoes": 2 / 3, "women/fashion": 1 / 3})
    older = 2 ** (-3 / 90)  # long term: 90-day half-life
    assert f["interest_long"] == pytest.approx({"men/shoes": 1 / (1 + older), "women/fashion": older / (1 + older)})
    assert f["interest_short_events"] == pytest.approx(1.5)
    assert f["interest_divergence"] == pytest.approx(reference_js(f["interest_long"], f["interest_short"]))
    same_time = features([view("a", NOW, "women/fashion/coats"), view("b", NOW, "men/shoes/running")])
    assert same_time["interest_short"] == same_time["interest_long"] == pytest.approx(
        {"men/shoes": 0.5, "women/fashion": 0.5})
    assert same_time["interest_divergence"] == 0.0
    assert features([page("a", NOW)])["interest_divergence"] is None


def test_divergence_bounds() -> None:
    assert interest.divergence({"a": 1.0}, {"b": 1.0}) == 1.0
    assert interest.divergence({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    # JS(P, Q) with P = (1, 0), Q = (1/2, 1/2): 1/2 KL(P||M) + 1/2 KL(Q||M), M = (3/4, 1/4).
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert interest.divergence({"a": 1.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(expected)


def test_order_lines_count_in_interest_and_depth_cuts_paths() -> None:
    f = features([order("o", NOW, 10.0, categories=("beauty/skincare/serum", "beauty/skincare/serum",
                                                     "women/fashion/coats"))])
    assert f["interest_long"] == pytest.approx({"beauty/skincare": 2 / 3, "women/fashion": 1 / 3})
    full = features([view("a", NOW, "women/fashion/coats")], cfg=FeatureSettings(interest_depth=0))
    assert full["interest_long"] == {"women/fashion/coats": 1.0}


def test_categories_beyond_the_cap_drop_the_lightest() -> None:
    cfg = FeatureSettings(max_categories=2)
    state = built([view("a", NOW - 10 * DAY, "kids/shoes/school"), view("b", NOW, "men/shoes/x"),
                   view("c", NOW - DAY, "women/fashion/coats")], cfg)
    assert sorted(state["interest"]) == ["men/shoes", "women/fashion"]


def reference_js(p: dict[str, float], q: dict[str, float]) -> float:
    m = {c: (p.get(c, 0) + q.get(c, 0)) / 2 for c in p.keys() | q.keys()}
    return sum(d[c] * math.log2(d[c] / m[c]) for d in (p, q) for c in d if d[c] > 0) / 2


def reference_shares(events: list[tuple[int, str]], now: int, half_life_days: float) -> dict[str, float]:
    weights: dict[str, float] = {}
    for t, c in events:
        weights[c] = weights.get(c, 0.0) + 2 ** ((t - now) / (half_life_days * DAY))
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()}


def shift_case(fashion: list[int], basketball_days: int) -> tuple[dict[str, Any], float]:
    """Basketball shoes viewed at noon on each of the last ``basketball_days`` days (counted back
    from day -3 when fashion views follow), then women's fashion views at ``fashion`` times."""
    last_day = 0 if len(fashion) == 1 else 3
    basketball = [MIDNIGHT - d * DAY + 12 * HOUR for d in range(last_day, last_day + basketball_days)]
    times = [(t, "men/shoes") for t in basketball] + [(t, "women/fashion") for t in fashion]
    events = [view(f"b{i}", t, "men/shoes/basketball") for i, t in enumerate(basketball)]
    events += [view(f"f{i}", t, "women/fashion/dresses") for i, t in enumerate(fashion)]
    f = features(events, now=MIDNIGHT + 23 * HOUR)
    expected = reference_js(reference_shares(times, MIDNIGHT + 23 * HOUR, 90),
                            reference_shares(times, MIDNIGHT + 23 * HOUR, 3))
    return f, expected


def test_interest_shift_three_days_of_womens_fashion_after_basketball_shoes() -> None:
    fashion = [MIDNIGHT - d * DAY + h * HOUR for d in range(3) for h in (10, 14, 20)]
    f, expected = shift_case(fashion, 197)
    assert f["interest_divergence"] == pytest.approx(expected)
    assert 0.37 < f["interest_divergence"] < 0.38 and f["interest_divergence"] > SHIFT_THRESHOLD
    assert f["interest_short"]["women/fashion"] == pytest.approx(0.755, abs=1e-3)
    assert f["interest_short_events"] > CFG.shift_min_events and f["interest_shift"] is True


def test_one_stray_view_is_no_shift() -> None:
    f, expected = shift_case([MIDNIGHT + 22 * HOUR], 200)
    assert f["interest_divergence"] == pytest.approx(expected)
    assert 0.07 < f["interest_divergence"] < 0.08 < SHIFT_THRESHOLD and f["interest_shift"] is False


# --------------------------------------------------------------------------- segments

@pytest.mark.parametrize("orders, revenue, label", [
    (3, 1500.0, "high_frequency_high_basket"), (3, 300.0, "high_frequency_low_basket"),
    (1, 500.0, "low_frequency_high_basket"), (2, 200.0, "low_frequency_low_basket"),
])
def test_member_grid(orders: int, revenue: float, label: str) -> None:
    f = features([order(f"o{i}", NOW - (i * 20 + 1) * DAY, revenue / orders) for i in range(orders)])
    assert f["member_grid"] == label


def test_member_grid_needs_an_order_in_its_window() -> None:
    assert features([order("o", NOW - 100 * DAY, 900.0), page("p", NOW)])["member_grid"] is None


def test_browse_without_buying() -> None:
    visits = [page(f"v{d}", NOW - d * DAY) for d in range(2)]
    game = enriched(touchpoint("g", "minigame_played", NOW - 3 * DAY, "mini_program", properties={"game_id": "spin"}))
    assert features(visits)["browse_without_buying"] is False  # two sessions: not enough
    f = features([*visits, game])  # two sessions and a mini-game (which is a session of its own)
    assert (f["sessions_30d"], f["games_30d"], f["browse_without_buying"]) == (3, 1, True)
    assert features([*visits, game, order("o", NOW - 20 * DAY, 10.0)])["browse_without_buying"] is False
    assert features([*visits, game, order("o", NOW - 40 * DAY, 10.0)])["browse_without_buying"] is True


def test_lifecycle_by_event_time() -> None:
    state = built([page("a", NOW - 40 * DAY), page("b", NOW - DAY)])
    assert profile.snapshot(state, NOW)["lifecycle"] == "active"
    assert profile.snapshot(state, NOW + 29 * DAY - 1)["lifecycle"] == "active"
    assert profile.snapshot(state, NOW + 29 * DAY)["lifecycle"] == "at_risk"  # 30 days without an event
    assert profile.snapshot(state, NOW + 89 * DAY)["lifecycle"] == "lapsed"
    assert features([page("a", NOW - 10 * DAY)])["lifecycle"] == "new"
    assert features([])["lifecycle"] is None


def test_consent_latest_by_event_time_wins() -> None:
    given_, withdrawn = consent("c1", NOW - 5 * DAY, "sms", True), consent("c2", NOW - 2 * DAY, "sms", False)
    late_old = consent("c0", NOW - 9 * DAY, "sms", True)  # arrives last, happened first
    assert features([given_, withdrawn, late_old])["consent"] == {"marketing": {"sms": False}}
    everything = consent("c3", NOW - DAY, "all", True)
    assert features([given_, withdrawn, everything])["consent"]["marketing"] == {
        c: True for c in segments.CONTACT_CHANNELS}
    tie = [consent("z", NOW, "email", True), consent("a", NOW, "email", False)]
    assert features(tie)["consent"] == features(tie[::-1])["consent"] == {"marketing": {"email": False}}
    profiling = features([consent("p", NOW, "wechat", True, "profiling")])["consent"]
    assert profiling == {"profiling": {"wechat": True}}
    unknown = [consent("x", NOW, "fax", True), enriched(touchpoint("y", "consent_given", NOW))]  # no properties
    assert features(unknown)["consent"] == {}


def test_reachable_and_preferred_channel() -> None:
    ids = {"phone": "h-phone", "email": "h-mail", "anonymous_id": "null"}  # "null" is junk
    events = [
        page("a", NOW - DAY, "app", identifiers=ids),
        consent("c1", NOW - DAY, "sms", True), consent("c2", NOW - DAY, "app_push", True),
        consent("c3", NOW - DAY, "wechat", True),
        enriched(touchpoint("f", "wechat_followed", NOW - DAY, "wechat_oa", properties={"account_id": "oa"})),
    ]
    f = features(events)
    assert f["reachable"] == ["wechat", "app_push", "sms"]  # email: no consent; phone_call: none
    assert f["preferred_channel"] == "wechat"  # a tie in engagement: the first contact channel
    opened = [enriched(touchpoint(f"m{i}", "message_opened", NOW, "sms",
                                  properties={"message_id": f"m{i}", "message_channel": "sms"})) for i in range(2)]
    assert features(events + opened)["preferred_channel"] == "sms"
    unfollowed = enriched(touchpoint("u", "wechat_unfollowed", NOW, "wechat_oa", properties={"account_id": "oa"}))
    assert features([*events, unfollowed])["reachable"] == ["app_push", "sms"]
    assert built(events)["id_types"] == ["email", "phone"]


def test_member_id_is_the_latest_by_event_time() -> None:
    events = [enriched(touchpoint("b", "page_viewed", NOW), "M2"), enriched(touchpoint("a", "page_viewed", NOW - DAY), "M1")]
    assert features(events)["member_id"] == "M2"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        FeatureSettings(grid_window="2d")
    with pytest.raises(ValueError):
        FeatureSettings(at_risk_days=90, lapsed_days=30)


# --------------------------------------------------------------------------- properties

KINDS = ("page_viewed", "screen_viewed", "product_viewed", "products_searched", "product_added",
         "order_completed", "guide_chatted", "service_consulted", "minigame_played", "store_visited",
         "consent_given", "consent_withdrawn", "wechat_followed", "wechat_unfollowed", "message_opened",
         "points_exchanged", "signed_up")
CATEGORIES = ("men/shoes/basketball", "women/fashion/dresses", "women/fashion/coats", "beauty/skincare/serum",
              "kids/shoes/school")
BASE = NOW - 100 * DAY

spec = st.fixed_dictionaries({
    "day": st.sampled_from([0, 1, 2, 40, 91, 95, 98, 99, 100]), "minute": st.integers(0, 900),
    "kind": st.sampled_from(KINDS), "channel": st.sampled_from(("web", "app", "store_pos", "partner")),
    "category": st.sampled_from(CATEGORIES), "store": st.sampled_from((None, "S1", "S2", "S3")),
    "guide": st.sampled_from((None, "G1", "G2")), "cents": st.integers(0, 200_000),
    "consent_channel": st.sampled_from(("sms", "email", "all")), "purpose": st.sampled_from(("marketing", "profiling")),
    "context": st.sampled_from((None, {"campaign": "d11"}, {"medium": "kol", "kol_post_id": "x1"},
                                {"search_keyword": "shoes"}, {"city": "Shanghai"}, {"city": "Hangzhou"},
                                {"city": "Beijing", "campaign": "d11"})),
    "ids": st.sampled_from(({}, {"phone": "h1"}, {"email": "h2"})), "member": st.sampled_from((None, "M1", "M2")),
    "referrer": st.sampled_from((None, "kol:lily")),
})


def event_of(i: int, s: dict[str, Any]) -> dict[str, Any]:
    kind, cat = s["kind"], s["category"]
    props: dict[str, Any] = {
        "product_id": f"P{i}", "category": cat, "query": "shoes", "cart_id": "c1", "order_id": f"o{i}",
        "revenue": s["cents"] / 100, "products": [{"product_id": f"P{i}", "category": cat}], "game_id": "spin",
        "consent_channel": s["consent_channel"], "purpose": s["purpose"], "account_id": "oa",
        "message_id": f"m{i}", "message_channel": "sms", "points": 100, "partner": "airline-miles",
    }
    tp = touchpoint(f"e{i}", kind, BASE + s["day"] * DAY + s["minute"] * MIN, s["channel"], properties=props,
                    store_id=s["store"], guide_id=s["guide"], context=s["context"], identifiers=s["ids"],
                    referrer_id=s["referrer"])
    return enriched(tp, s["member"])


events_strategy = st.lists(spec, max_size=30).map(lambda specs: [event_of(i, s) for i, s in enumerate(specs)])
NOWS = (NOW, NOW + 45 * DAY)
# S2 opens between the two NOWS and S4 closes between them, so city_store differs by snapshot time.
PROPERTY_STORES = (store("S1", "Shanghai", "2020-01-01"), store("S2", "Shanghai", "2026-12-01"),
                   store("S3", "Hangzhou", "2024-03-01"), store("S4", "Shanghai", "2019-01-01", "2026-12-01"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, seed=st.integers(0, 2**32))
def test_any_arrival_order_gives_the_same_features(events: list[dict[str, Any]], seed: int) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    in_order = sorted(events, key=lambda e: e["touchpoint"]["event_time_ms"])
    a, b = built(in_order), built(shuffled)
    assert {k: v for k, v in a.items() if k != "interest"} == {k: v for k, v in b.items() if k != "interest"}
    for now in NOWS:
        assert_same(profile.snapshot(a, now, stores=PROPERTY_STORES), profile.snapshot(b, now, stores=PROPERTY_STORES))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, split=st.lists(st.booleans(), min_size=30, max_size=30))
def test_merge_equals_the_features_of_the_combined_events(events: list[dict[str, Any]], split: list[bool]) -> None:
    left = [e for e, side in zip(events, split[: len(events)], strict=True) if side]
    right = [e for e, side in zip(events, split[: len(events)], strict=True) if not side]
    merged = profile.merge(built(left), built(right))
    for now in NOWS:
        assert_same(profile.snapshot(merged, now, stores=PROPERTY_STORES), features(events, now, stores=PROPERTY_STORES))
    assert_same(profile.merge(built(events), profile.empty("p-2")), built(events))
    assert_same(profile.merge(profile.empty("p-1"), built(events)), built(events))


@settings(max_examples=50, deadline=None)
@given(events=events_strategy)
def test_state_round_trips_through_json_and_apply_is_deterministic(events: list[dict[str, Any]]) -> None:
    half = len(events) // 2
    state = built(events[:half])
    restored = json.loads(json.dumps(state))
    assert restored == state
    for e in events[half:]:
        profile.apply(restored, e)
    assert restored == built(events)


# --------------------------------------------------------------------------- bounded state

def heavy_year() -> dict[str, Any]:
    """A year of a heavy member: three visits every day (web, app, mini-program) with page and
    product views over six categories, a search and a cart add, an order every third day at one of
    three stores with one of two guides, weekly consultations, mini-games and message opens."""
    cats = (*CATEGORIES, "men/apparel/jackets")
    ids = {"anonymous_id": "c-1", "device_id": "d-1", "member_id": "M1", "phone": "h-p", "email": "h-e"}
    state = profile.empty("p-1")
    start = MIDNIGHT - 365 * DAY
    n = 0

    def add(kind: str, t: int, channel: str = "web", **fields: Any) -> None:
        nonlocal n
        n += 1
        profile.apply(state, enriched(touchpoint(f"e{n}", kind, t, channel, identifiers=ids, **fields), "M1"))

    for c in ("sms", "email", "wechat", "app_push"):
        add("consent_given", start, "app", properties={"consent_channel": c, "purpose": "marketing"})
    add("wechat_followed", start, "wechat_oa", properties={"account_id": "oa"})
    for d in range(365):
        day = start + d * DAY
        for v, (hour, channel) in enumerate(((1, "web"), (5, "app"), (12, "mini_program"))):
            t = day + hour * HOUR + (d * 7 % 25) * MIN
            for i in range(6):
                add("page_viewed", t + i * MIN, channel, context={"campaign": "d11", "source": "douyin"})
            for i in range(4):
                add("product_viewed", t + (6 + i) * MIN, channel,
                    properties={"product_id": f"P{i}", "category": cats[(d + v + i) % 6], "price": 399.0})
            add("products_searched", t + 10 * MIN, channel, properties={"query": "sneakers"})
            add("product_added", t + 11 * MIN, channel, properties={"cart_id": f"c{d}", "product_id": "P1",
                                                                    "category": cats[d % 6]})
        if d % 3 == 0:
            add("order_completed", day + 8 * HOUR, "store_pos", store_id=f"S{d % 3}", guide_id=f"G{d % 2}",
                properties={"order_id": f"o{d}", "revenue": 1234.56,
                            "products": [{"product_id": "P1", "category": cats[d % 6]}]})
        if d % 7 == 0:
            add("guide_chatted", day + 9 * HOUR, "store_pos", store_id="S1", guide_id="G1")
            add("minigame_played", day + 13 * HOUR, "mini_program", properties={"game_id": "spin"})
            add("message_opened", day + 14 * HOUR, "sms", properties={"message_id": f"m{d}", "message_channel": "sms"})
    return state


# Upper bounds, from the shape of the state: 90 + 24 + 12 buckets of at most eight counts, at
# most 4,320 half-hour bits (720 base64 characters), at most 12 categories, 10 channels, 8 stores
# and 8 guides, 18 consent statements and 9 identifier types; only the digits of counts grow.
HEAVY_BYTES = 4608
BUSIEST_BYTES = 8192


def test_state_stays_bounded_after_a_heavy_year() -> None:
    state = heavy_year()
    size = profile.state_bytes(state)
    print(f"state bytes after a heavy year: {size}")
    assert size <= HEAVY_BYTES
    assert len(state["buckets"]["d"]) == 90 and len(state["interest"]) == 5


def test_state_stays_bounded_for_the_busiest_person() -> None:
    """Every metric in every half-hour for 120 days (a store kiosk), at ten stores and guides."""
    templates = [touchpoint("t", kind, 0, "store_pos", properties=props) for kind, props in (
        ("page_viewed", {}), ("product_viewed", {"product_id": "P1", "category": "men/shoes/x"}),
        ("products_searched", {"query": "q"}), ("product_added", {"cart_id": "c", "product_id": "P1"}),
        ("order_completed", {"order_id": "o", "revenue": 9999.99}), ("guide_chatted", {}),
        ("minigame_played", {"game_id": "g"}))]
    state = profile.empty("p-1")
    start = MIDNIGHT - 120 * DAY
    for slot in range(120 * 48):
        for i, tp in enumerate(templates):
            profile.apply(state, enriched({**tp, "event_id": f"e{slot}-{i}", "event_time_ms": start + slot * 30 * MIN,
                                           "store_id": f"S{slot % 10}", "guide_id": f"G{slot % 10}"}))
    size = profile.state_bytes(state)
    print(f"state bytes of the busiest person: {size}")
    assert size <= BUSIEST_BYTES


CDNOW = bgnbd.Params(0.243, 4.414, 0.793, 2.426)  # the published fit on the CDNOW sample


def test_purchase_model_outlook_by_hand() -> None:
    """Orders on days 0, 0 (again), 14 and 28 of the history: 3 distinct purchase days, so x = 2,
    t_x = 4 weeks; at NOW (day 100 of BASE) T = 100 / 7 weeks. Next purchase: the last day plus the
    mean interval (28 / 2 = 14 days)."""
    day0 = BASE - BASE % DAY  # midnight UTC
    events = [order("o1", day0 + 1 * HOUR, 10.0), order("o2", day0 + 15 * HOUR, 20.0),
              order("o3", day0 + 14 * DAY + HOUR, 5.0), order("o4", day0 + 28 * DAY, 7.0)]
    state = built(events)
    base_day = profile.purchase_day(day0)
    assert bgnbd.PurchaseDays.from_json(state["purchases"]).inputs(base_day + 100) == bgnbd.Inputs(2, 4.0, 100 / 7)
    got = profile.purchase_outlook(state["purchases"], NOW, CDNOW)
    inputs = bgnbd.Inputs(2, 4.0, (profile.purchase_day(NOW) - base_day) / 7)
    assert got["p_alive"] == bgnbd.p_alive(CDNOW, inputs) and 0 < got["p_alive"] < 1
    assert got["expected_purchases_30d"] == bgnbd.conditional_expected(CDNOW, inputs, 30 / 7)
    assert got["next_purchase_ms"] == day0 + 42 * DAY
    # without parameters no probability, and one purchase day gives no next purchase
    unfitted = profile.purchase_outlook(state["purchases"], NOW, None)
    assert unfitted == {"p_alive": None, "expected_purchases_30d": None, "next_purchase_ms": day0 + 42 * DAY}
    one = profile.purchase_outlook(built(events[:2])["purchases"], NOW, CDNOW)
    assert one["p_alive"] == 1.0 and one["next_purchase_ms"] is None  # x = 0: never seen to drop out
    assert profile.purchase_outlook(built([page("p", BASE)])["purchases"], NOW, CDNOW)["p_alive"] is None


SHANGHAI = FeatureSettings(day_zone="Asia/Shanghai")


def test_purchase_days_are_calendar_days_of_the_reporting_zone() -> None:
    """Orders at 20:00 UTC and 02:00 UTC the next day are one Shanghai day (04:00 and 10:00
    local) but two UTC days; an order at 17:00 UTC is the next Shanghai day already. The
    expected next purchase is the Shanghai midnight that starts its day."""
    day0 = BASE - BASE % DAY  # midnight UTC
    events = [order("o1", day0 + 20 * HOUR, 10.0), order("o2", day0 + DAY + 2 * HOUR, 10.0),
              order("o3", day0 + 9 * DAY + 17 * HOUR, 10.0)]
    utc = bgnbd.PurchaseDays.from_json(built(events)["purchases"])
    local = bgnbd.PurchaseDays.from_json(built(events, SHANGHAI)["purchases"])
    first = profile.purchase_day(day0 + 20 * HOUR, "Asia/Shanghai")
    assert first == profile.purchase_day(day0, "UTC") + 1
    assert local.inputs(first + 10) == bgnbd.Inputs(1, 9 / 7, 10 / 7)  # days first and first + 9
    assert utc.inputs(first + 10) == bgnbd.Inputs(2, 9 / 7, 11 / 7)  # days first - 1, first and first + 9
    got = profile.purchase_outlook(built(events, SHANGHAI)["purchases"], NOW, None, "Asia/Shanghai")
    assert got["next_purchase_ms"] == day0 + 19 * DAY - 8 * HOUR  # day first + 18 (UTC day0 + 19), 00:00 at +08:00
    with pytest.raises(ValueError, match="time zone"):
        FeatureSettings(day_zone="Mars/Olympus")


@settings(max_examples=30, deadline=None)
@given(times=st.lists(st.integers(946_684_800_000, 4_102_444_800_000), min_size=1, max_size=40),
       zone=st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin", "Asia/Kolkata"]))
def test_purchase_days_match_the_fit_reading_clickhouse(times: list[int], zone: str) -> None:
    """The stream's day of an order is the day ``touchline fit-purchase-model --source clickhouse``
    reads for it (``toDate(event_time, zone)``, fit_cli.clickhouse_orders), DST zones too,
    for order times from 2000 to 2100 (ClickHouse Date starts at 1970-01-01 in every zone)."""
    chdb = pytest.importorskip("chdb")
    values = ",".join(f"({t})" for t in times)
    got = chdb.query(f"SELECT toString(toDate(fromUnixTimestamp64Milli(toInt64(t), 'UTC'), '{zone}')) "
                     f"FROM values('t Int64', {values})", "CSV").data()
    days = [date.fromisoformat(line.strip('"')).toordinal() for line in got.split()]
    assert days == [profile.purchase_day(t, zone) for t in times]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, split=st.lists(st.booleans(), min_size=30, max_size=30), seed=st.integers(0, 2**32))
def test_purchase_outlook_merges_and_ignores_order(events: list[dict[str, Any]], split: list[bool], seed: int) -> None:
    left = [e for e, side in zip(events, split[: len(events)], strict=True) if side]
    right = [e for e, side in zip(events, split[: len(events)], strict=True) if not side]
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    for now in NOWS:
        want = profile.purchase_outlook(built(events)["purchases"], now, CDNOW)
        for state in (profile.merge(built(left), built(right)), built(shuffled)):
            assert profile.purchase_outlook(state["purchases"], now, CDNOW) == want
