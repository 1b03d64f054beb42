"""Every ClickHouse panel of the Grafana dashboards against numbers worked out by hand.

A small, known set of journeys (six persons over two days in Asia/Shanghai,
four channels, two stores, a KOL referrer, two campaigns, spend, sessions with
bounces, repeat orders) goes through the real pipeline: two Faust workers and
the sink on the embedded broker and chDB. Spend goes in with `touchline load`;
dead letters are written onto the dead-letter topic the way the workers write
them, with known failure times (the workers stamp the wall clock). Then each
panel's SQL, expanded by streams.dashboards.expand exactly as the Grafana
plugin would, runs over two time ranges that cut the data differently, and
its rows must equal the literals below, each worked out from the journeys
(the arithmetic is in the comments), never recomputed with SQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from streams import avro
from streams.dashboards import Panel, clickhouse_panels, dashboards, expand, variables
from streams.kafka.clients import producer
from streams.sink import query as ch
from streams.topics import DEAD_LETTERS, RAW
from tests.conftest import T0, Stack, encoded, touchpoint
from tests.panels import same

SHANGHAI = timezone(timedelta(hours=8))
DAY_MS = 86_400_000
DASHBOARD_UIDS = ("touchline-business-kpis", "touchline-stores-channels")


def at(day: int, hh: int, mm: int = 0) -> int:
    """Epoch ms of day 1 or 2 (2026-11-01 / 2026-11-02), hh:mm in Asia/Shanghai."""
    return T0 + (day - 1) * DAY_MS + (hh * 60 + mm) * 60_000


def local(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime.fromtimestamp(at(day, hh, mm) / 1000, tz=SHANGHAI)


# --- The journeys ------------------------------------------------------------------
# Times are Shanghai (UTC+8). D1 = 2026-11-01, D2 = 2026-11-02. "UTC Oct31" etc. marks
# events whose UTC day differs from their Shanghai day. E's two days are one UTC day (Nov1):
# bucketing by UTC day would make E new on "D2". First seen / first order / orders so far:
#   A D1 02:00 / D1 02:20 / 2 (500)   B D1 10:00 / D1 10:05 / 3 (300)   C D1 13:00 / D2 09:05 / 1 (40)
#   D D1 21:00 / D1 21:12 / 2 (200)   E D1 11:00 / D2 00:20 / 1 (60)    F D2 14:00 / - / 0
# First touch (channel, campaign, store): A (web, c-double11), B (store_pos, -, S1), C (web),
# D (mini_program, c-double11), E (app), F (app, c-app-launch). First referrer: D and E kol-lily.
#
# Person A (member MA): acquired on web by campaign c-double11 (source douyin).
#   D1 02:00 page_viewed web c-double11     (UTC Oct31 18:00)  session A1: 5 events, 1 page view
#   D1 02:05 product_viewed P1
#   D1 02:10 product_added cart cA1 qty 2
#   D1 02:15 checkout_started cA1
#   D1 02:20 order_completed OA1 revenue 200, 2 items (first order, online)
#   D2 03:00 store_visited store_pos S1      (UTC Nov1 19:00)  session A2: 2 events
#   D2 03:10 order_completed S1 OA2 revenue 300, 3 items (repeat purchase at S1)
# Person B (member MB): acquired at store S1.
#   D1 10:00 store_visited store_pos S1                       session B1: 2 events
#   D1 10:05 order_completed S1 OB1 revenue 100, 1 item (first order: not a repeat)
#   D1 12:10 screen_viewed app                                 session B2: 3 events, 1 page view
#   D1 12:15 product_viewed P2
#   D1 12:20 product_added cart cB1 (abandoned)
#   D2 10:00 order_completed S2 OB2 revenue 150, 2 items       session B3: 1 event (bounce)
#   D2 20:00 order_completed S1 OB3 revenue 50, 1 item         session B4: 1 event (bounce)
# Person C (anonymous cookie c-c, never a member): web, source baidu.
#   D1 13:00 page_viewed web                                   session C1: 1 event (bounce)
#   D2 09:00 page_viewed web                 (UTC Nov2 01:00)  session C2: 3 events, 1 page view
#   D2 09:02 product_viewed P1
#   D2 09:05 order_completed OC1 revenue 40, 1 item (online; a buyer without a member id)
# Person D (member MD): mini_program, campaign c-double11, brought by KOL kol-lily.
#   D1 21:00 page_viewed mini_program c-double11 referrer kol-lily   session D1: 4 events, 1 page view
#   D1 21:05 product_viewed P3
#   D1 21:10 product_added cart cD1
#   D1 21:12 order_completed OD1 revenue 80, 1 item (no checkout_started)
#   D2 01:00 page_viewed mini_program c-double11 (UTC Nov1 17:00)    session D2: 5 events, 1 page view
#   D2 01:05 product_viewed P3
#   D2 01:10 product_added cart cD2 qty 2
#   D2 01:15 checkout_started cD2
#   D2 01:20 order_completed OD2 revenue 120, 2 items
# Person E (member ME): app, first seen organically on D1, referred by kol-lily on D2.
#   D1 11:00 page_viewed app                 (UTC Nov1 03:00)  session E1: 1 event (bounce)
#   D2 00:10 page_viewed app referrer kol-lily (UTC Nov1 16:10) session E2: 3 events, 1 page view
#   D2 00:15 product_viewed P2
#   D2 00:20 order_completed OE1 revenue 60, 1 item
# Person F (anonymous device dev-f): app, campaign c-app-launch, day 2 only.
#   D2 14:00 screen_viewed app c-app-launch                    session F1: 3 events, 2 page views
#   D2 14:01 screen_viewed app
#   D2 14:02 product_viewed P2
MA, MB, MD, ME = ({"member_id": m} for m in ("MA", "MB", "MD", "ME"))
CC = {"anonymous_id": "c-c"}
DF = {"device_id": "dev-f"}
DOUBLE11 = {"campaign": "c-double11", "source": "douyin", "medium": "cpc"}


def _order(order_id: str, revenue: float, items: int, product: str) -> dict[str, Any]:
    return {"order_id": order_id, "revenue": revenue, "total": revenue,
            "products": [{"product_id": product, "quantity": items}]}


def journeys() -> list[dict[str, Any]]:
    tp = touchpoint
    events = [
        tp("a1", "page_viewed", at(1, 2, 0), "web", identifiers=MA, context=DOUBLE11, properties={"url": "/"}),
        tp("a2", "product_viewed", at(1, 2, 5), "web", identifiers=MA, properties={"product_id": "P1"}),
        tp("a3", "product_added", at(1, 2, 10), "web", identifiers=MA,
           properties={"cart_id": "cA1", "product_id": "P1", "quantity": 2}),
        tp("a4", "checkout_started", at(1, 2, 15), "web", identifiers=MA, properties={"cart_id": "cA1"}),
        tp("a5", "order_completed", at(1, 2, 20), "web", identifiers=MA, properties=_order("OA1", 200.0, 2, "P1")),
        tp("a6", "store_visited", at(2, 3, 0), "store_pos", identifiers=MA, store_id="S1"),
        tp("a7", "order_completed", at(2, 3, 10), "store_pos", identifiers=MA, store_id="S1",
           properties=_order("OA2", 300.0, 3, "P1")),
        tp("b1", "store_visited", at(1, 10, 0), "store_pos", identifiers=MB, store_id="S1"),
        tp("b2", "order_completed", at(1, 10, 5), "store_pos", identifiers=MB, store_id="S1",
           properties=_order("OB1", 100.0, 1, "P2")),
        tp("b3", "screen_viewed", at(1, 12, 10), "app", identifiers=MB, properties={"name": "home"}),
        tp("b4", "product_viewed", at(1, 12, 15), "app", identifiers=MB, properties={"product_id": "P2"}),
        tp("b5", "product_added", at(1, 12, 20), "app", identifiers=MB,
           properties={"cart_id": "cB1", "product_id": "P2", "quantity": 1}),
        tp("b6", "order_completed", at(2, 10, 0), "store_pos", identifiers=MB, store_id="S2",
           properties=_order("OB2", 150.0, 2, "P2")),
        tp("b7", "order_completed", at(2, 20, 0), "store_pos", identifiers=MB, store_id="S1",
           properties=_order("OB3", 50.0, 1, "P3")),
        tp("c1", "page_viewed", at(1, 13, 0), "web", identifiers=CC, context={"source": "baidu"},
           properties={"url": "/"}),
        tp("c2", "page_viewed", at(2, 9, 0), "web", identifiers=CC, properties={"url": "/p1"}),
        tp("c3", "product_viewed", at(2, 9, 2), "web", identifiers=CC, properties={"product_id": "P1"}),
        tp("c4", "order_completed", at(2, 9, 5), "web", identifiers=CC, properties=_order("OC1", 40.0, 1, "P1")),
        tp("d1", "page_viewed", at(1, 21, 0), "mini_program", identifiers=MD, referrer_id="kol-lily",
           context={**DOUBLE11, "source": "kol"}, properties={"url": "/mp"}),
        tp("d2", "product_viewed", at(1, 21, 5), "mini_program", identifiers=MD, properties={"product_id": "P3"}),
        tp("d3", "product_added", at(1, 21, 10), "mini_program", identifiers=MD,
           properties={"cart_id": "cD1", "product_id": "P3", "quantity": 1}),
        tp("d4", "order_completed", at(1, 21, 12), "mini_program", identifiers=MD,
           properties=_order("OD1", 80.0, 1, "P3")),
        tp("d5", "page_viewed", at(2, 1, 0), "mini_program", identifiers=MD, context=DOUBLE11,
           properties={"url": "/mp"}),
        tp("d6", "product_viewed", at(2, 1, 5), "mini_program", identifiers=MD, properties={"product_id": "P3"}),
        tp("d7", "product_added", at(2, 1, 10), "mini_program", identifiers=MD,
           properties={"cart_id": "cD2", "product_id": "P3", "quantity": 2}),
        tp("d8", "checkout_started", at(2, 1, 15), "mini_program", identifiers=MD, properties={"cart_id": "cD2"}),
        tp("d9", "order_completed", at(2, 1, 20), "mini_program", identifiers=MD,
           properties=_order("OD2", 120.0, 2, "P3")),
        tp("e1", "page_viewed", at(1, 11, 0), "app", identifiers=ME, properties={"url": "/app"}),
        tp("e2", "page_viewed", at(2, 0, 10), "app", identifiers=ME, referrer_id="kol-lily",
           context={"source": "kol"}, properties={"url": "/app"}),
        tp("e3", "product_viewed", at(2, 0, 15), "app", identifiers=ME, properties={"product_id": "P2"}),
        tp("e4", "order_completed", at(2, 0, 20), "app", identifiers=ME, properties=_order("OE1", 60.0, 1, "P2")),
        tp("f1", "screen_viewed", at(2, 14, 0), "app", identifiers=DF,
           context={"campaign": "c-app-launch", "source": "appstore"}, properties={"name": "home"}),
        tp("f2", "screen_viewed", at(2, 14, 1), "app", identifiers=DF, properties={"name": "list"}),
        tp("f3", "product_viewed", at(2, 14, 2), "app", identifiers=DF, properties={"product_id": "P2"}),
    ]
    return sorted(events, key=lambda e: (e["event_time_ms"], e["event_id"]))


SESSIONS = 13  # A1 A2 B1 B2 B3 B4 C1 C2 D1 D2 E1 E2 F1

# Spend (ref_spend), loaded with `touchline load`; days are Shanghai days.
SPEND_CSV = """day,channel,campaign_id,amount,currency,impressions,clicks,leads
2026-11-01,web,,100,CNY,5000,50,
2026-11-01,web,c-double11,300,CNY,9000,100,
2026-11-01,mini_program,c-double11,200,CNY,,40,
2026-11-02,mini_program,c-double11,200,CNY,,60,
2026-11-02,app,,50,CNY,,25,
2026-11-02,app,c-app-launch,120,CNY,,30,
"""

# Dead letters as the workers write them, failed at known times.
DEAD = [  # (name, reason, failed_at)
    ("dl-1", "not_wire_format", at(1, 2, 30)),   # D1 02:30 (UTC Oct31 18:30)
    ("dl-2", "not_wire_format", at(1, 14, 0)),   # D1 14:00
    ("dl-3", "unknown_schema", at(2, 1, 45)),    # D2 01:45 (UTC Nov1 17:45)
    ("dl-4", "avro_decode_error", at(2, 11, 0)),  # D2 11:00
]


def _produce_dead_letters(stack: Stack) -> None:
    from streams.deadletter.records import build
    from streams.deadletter.sealing import Sealer

    sealer = Sealer.from_settings(stack.settings)
    p = producer(stack.settings)
    topic = DEAD_LETTERS.name(stack.settings)
    for name, reason, failed_at in DEAD:
        record = build(sealer, reason=reason, detail="test", topic=RAW.name(stack.settings), partition=0,
                       offset=0, payload=b"\x00bad", failed_at_ms=failed_at, name=name)
        p.produce(topic, key=name.encode(), value=avro.encode(avro.DEAD_LETTER, record))
    assert p.flush(10) == 0


def fill(stack: Stack, tmp_path: Path) -> None:
    events = journeys()
    stack.produce([encoded(e) for e in events])
    spend = tmp_path / "spend.csv"
    spend.write_text(SPEND_CSV)
    touchline = str(Path(sys.executable).with_name("touchline"))
    out = subprocess.run([touchline, "load", str(spend), "--kind", "spend"], capture_output=True, text=True,
                         env={**os.environ, **stack.settings.to_env()})
    assert out.returncode == 0, out.stdout + out.stderr
    _produce_dead_letters(stack)
    # Every session closes once stream time passes its end + the timeout.
    stack.tick(max(e["event_time_ms"] for e in events) + int(stack.settings.session_timeout_s * 1000) + 1)
    want = [len(events), SESSIONS, len(SPEND_CSV.strip().splitlines()) - 1, len(DEAD)]
    sql = ("SELECT (SELECT count() FROM touchpoints_enriched FINAL), (SELECT count() FROM sessions FINAL), "
           "(SELECT count() FROM ref_spend FINAL), (SELECT count() FROM dead_letters FINAL)")
    deadline = time.monotonic() + 90
    got: list[Any] = []
    while time.monotonic() < deadline:
        assert not stack.supervisor.check_alive(), f"died; logs in {stack.supervisor.log_dir}"
        try:
            got = _rows(stack, sql)[0]
        except ch.QueryError:  # no sink answering yet, or tables not migrated yet
            got = []
        if got == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"ClickHouse holds {got} (events, sessions, spend, dead letters), expected {want}")


def _rows(stack: Stack, sql: str) -> list[list[Any]]:
    return ch.rows(stack.settings, sql, open_directly=False)


# --- Time ranges ---------------------------------------------------------------------
# ALL: both days whole. MID: from D1 12:30 to D2 10:00 Shanghai, i.e. UTC Nov1 04:30 to Nov2
# 02:00; panels take it in whole hours (every hour overlapping it: D1 12:00 .. D2 09:59) and
# the minute table in whole minutes. So MID drops A's D1 morning, B's D1 10:00 store visit,
# E's D1 11:00 visit, B's D2 10:00 order (its hour starts at `to`), F and B's D2 20:00 order;
# and it keeps B's app visit at D1 12:10, whose hour overlaps the range.
# interval_s is Grafana's $__interval: 1 day for ALL, 1 hour for MID.
RANGES: dict[str, tuple[datetime, datetime, int]] = {
    "all": (local(1, 0), local(1, 0) + timedelta(days=2), 86_400),
    "mid": (local(1, 12, 30), local(2, 10), 3_600),
}
D1, D2 = "2026-11-01", "2026-11-02"

# (dashboard uid, panel id) -> {range: (columns, rows)}
BUSINESS = "touchline-business-kpis"
STORES = "touchline-stores-channels"
EXPECTED: dict[tuple[str, int], dict[str, tuple[list[str], list[list[Any]]]]] = {
    # Traffic: uv, pv, sessions, visit depth = page views / sessions, bounce rate = 1-event sessions / sessions.
    (BUSINESS, 2): {
        # persons A-F; PV a1 e1 b3 c1 d1 e2 d5 c2 f1 f2; 13 sessions with 1+0+1+1+1+1+1+1+0+1+0+2+0 = 10 page
        # views; bounces E1 C1 B3 B4
        "all": (["uv", "pv", "sessions", "visit_depth", "bounce_rate"], [[6, 10, 13, 10 / 13, 4 / 13]]),
        # persons B C D E A; PV b3 c1 d1 e2 d5 c2; sessions B2 C1 D1 E2 D2 A2 C2 (1+1+1+1+1+0+1 = 6 page
        # views); bounce C1
        "mid": (["uv", "pv", "sessions", "visit_depth", "bounce_rate"], [[5, 6, 7, 6 / 7, 1 / 7]]),
    },
    # Traffic by day
    (BUSINESS, 3): {
        "all": (["day", "uv", "pv", "sessions", "visit_depth", "bounce_rate"], [
            [D1, 5, 5, 6, 5 / 6, 2 / 6],  # A B E C D; a1 e1 b3 c1 d1; A1 B1 E1 B2 C1 D1 (pv 1+0+1+1+1+1); E1 C1
            [D2, 6, 5, 7, 5 / 7, 2 / 7],  # E D A C B F; e2 d5 c2 f1 f2; E2 D2 A2 C2 B3 F1 B4 (1+1+0+1+0+2+0); B3 B4
        ]),
        "mid": (["day", "uv", "pv", "sessions", "visit_depth", "bounce_rate"], [
            [D1, 3, 3, 3, 1.0, 1 / 3],  # B C D; b3 c1 d1; B2 C1 D1 (1+1+1); C1
            [D2, 4, 3, 4, 3 / 4, 0.0],  # E D A C; e2 d5 c2; E2 D2 A2 C2 (1+1+0+1); none
        ]),
    },
    # New (first seen that day) and returning (uv - new) visitors by day
    (BUSINESS, 4): {
        "all": (["day", "uv", "new_visitors", "returning_visitors"], [
            [D1, 5, 5, 0],  # A B E C D all first seen on D1
            [D2, 6, 1, 5],  # only F is first seen on D2
        ]),
        "mid": (["day", "uv", "new_visitors", "returning_visitors"], [
            [D1, 3, 3, 0],  # B C D; B is new on D1 though first seen at 10:00, before the range
            [D2, 4, 0, 4],  # E D A C, all first seen on D1 (E on UTC Nov1, like these D2 events)
        ]),
    },
    # Sales: orders, GMV, AOV = GMV / orders, buyers, members' share of buyers
    (BUSINESS, 6): {
        # 200+100+80+60+120+300+40+150+50 = 1100 over 9 orders; buyers A B C D E, C is no member: 4/5
        "all": (["orders", "gmv", "aov", "buyers", "member_share_of_buyers"], [[9, 1100.0, 1100 / 9, 5, 0.8]]),
        # d4 80 + e4 60 + d9 120 + a7 300 + c4 40 = 600 over 5; buyers D E A C, members 3/4
        "mid": (["orders", "gmv", "aov", "buyers", "member_share_of_buyers"], [[5, 600.0, 120.0, 4, 0.75]]),
    },
    # Sales by day
    (BUSINESS, 7): {
        "all": (["day", "orders", "gmv", "aov", "buyers", "member_share_of_buyers"], [
            [D1, 3, 380.0, 380 / 3, 3, 1.0],  # a5 200 + b2 100 + d4 80; A B D all members
            [D2, 6, 720.0, 120.0, 5, 0.8],  # e4 60 + d9 120 + a7 300 + c4 40 + b6 150 + b7 50; E D A C B, 4/5
        ]),
        "mid": (["day", "orders", "gmv", "aov", "buyers", "member_share_of_buyers"], [
            [D1, 1, 80.0, 80.0, 1, 1.0],  # d4
            [D2, 4, 520.0, 130.0, 4, 0.75],  # e4 60 + d9 120 + a7 300 + c4 40; E D A C, 3/4
        ]),
    },
    # Funnel by day: persons with product_viewed, product_added, checkout_started, order_completed
    (BUSINESS, 9): {
        "all": (["day", "viewed", "added", "checked_out", "ordered", "view_to_add", "add_to_checkout",
                 "checkout_to_order", "view_to_order"], [
            [D1, 3, 3, 1, 3, 1.0, 1 / 3, 3.0, 1.0],  # viewed A B D; added A B D; checkout A; ordered A B D
            [D2, 4, 1, 1, 5, 1 / 4, 1.0, 5.0, 5 / 4],  # viewed E D C F; added D; checkout D; ordered E D A C B
        ]),
        "mid": (["day", "viewed", "added", "checked_out", "ordered", "view_to_add", "add_to_checkout",
                 "checkout_to_order", "view_to_order"], [
            [D1, 2, 2, 0, 1, 1.0, 0.0, None, 1 / 2],  # viewed B D; added B D; no checkout; ordered D
            [D2, 3, 1, 1, 4, 1 / 3, 1.0, 4.0, 4 / 3],  # viewed E D C; added D; checkout D; ordered E D A C
        ]),
    },
    # Ordered funnel in sessions. Steps reached in order: A1 4, B1 0, E1 0, B2 2 (view, add), C1 0,
    # D1 2 (view, add, then an order without checkout), E2 1 (view, order), D2 4, A2 0, C2 1, B3 0, F1 1, B4 0
    (BUSINESS, 10): {
        "all": (["day", "sessions", "viewed", "added", "checked_out", "ordered", "view_to_order"], [
            [D1, 6, 3, 3, 1, 1, 1 / 3],  # A1 B1 E1 B2 C1 D1; >=1: A1 B2 D1; >=2: same; >=3, 4: A1
            [D2, 7, 4, 1, 1, 1, 1 / 4],  # E2 D2 A2 C2 B3 F1 B4; >=1: E2 D2 C2 F1; >=2..4: D2
        ]),
        "mid": (["day", "sessions", "viewed", "added", "checked_out", "ordered", "view_to_order"], [
            [D1, 3, 2, 2, 0, 0, 0.0],  # B2 C1 D1; >=1: B2 D1; >=2: B2 D1
            [D2, 4, 3, 1, 1, 1, 1 / 3],  # E2 D2 A2 C2; >=1: E2 D2 C2; >=2..4: D2
        ]),
    },
    # Events by channel per $__timeInterval: UTC days for ALL, UTC hours for MID (minutes from 04:30 UTC)
    (BUSINESS, 12): {
        "all": (["time", "channel", "events"], [
            ["2026-10-31 00:00:00", "web", 5],  # a1-a5
            ["2026-11-01 00:00:00", "app", 7],  # e1 b3 b4 b5 e2 e3 e4
            ["2026-11-01 00:00:00", "mini_program", 9],  # d1-d9
            ["2026-11-01 00:00:00", "store_pos", 4],  # b1 b2 a6 a7
            ["2026-11-01 00:00:00", "web", 1],  # c1
            ["2026-11-02 00:00:00", "app", 3],  # f1-f3
            ["2026-11-02 00:00:00", "store_pos", 2],  # b6 b7
            ["2026-11-02 00:00:00", "web", 3],  # c2-c4
        ]),
        "mid": (["time", "channel", "events"], [  # b3-b5 (04:10-04:20 UTC) are before 04:30
            ["2026-11-01 05:00:00", "web", 1],  # c1
            ["2026-11-01 13:00:00", "mini_program", 4],  # d1-d4
            ["2026-11-01 16:00:00", "app", 3],  # e2-e4
            ["2026-11-01 17:00:00", "mini_program", 5],  # d5-d9
            ["2026-11-01 19:00:00", "store_pos", 2],  # a6 a7
            ["2026-11-02 01:00:00", "web", 3],  # c2-c4 (b6 at 02:00 is not before `to`)
        ]),
    },
    # Dead letters by reason per $__timeInterval (hour they failed, UTC)
    (BUSINESS, 13): {
        "all": (["time", "reason", "dead_letters"], [
            ["2026-10-31 00:00:00", "not_wire_format", 1],  # dl-1 18:30 UTC
            ["2026-11-01 00:00:00", "not_wire_format", 1],  # dl-2 06:00 UTC
            ["2026-11-01 00:00:00", "unknown_schema", 1],  # dl-3 17:45 UTC
            ["2026-11-02 00:00:00", "avro_decode_error", 1],  # dl-4 03:00 UTC
        ]),
        "mid": (["time", "reason", "dead_letters"], [
            ["2026-11-01 06:00:00", "not_wire_format", 1],  # dl-2
            ["2026-11-01 17:00:00", "unknown_schema", 1],  # dl-3
        ]),
    },
    # Channels: sessions by first event's channel, orders by the order's channel
    (STORES, 2): {
        "all": (["channel", "sessions", "bounce_rate", "visit_depth", "session_conversion", "orders", "gmv",
                 "aov"], [
            ["app", 4, 1 / 4, 5 / 4, 1 / 4, 1, 60.0, 60.0],  # E1 B2 E2 F1, bounce E1, pv 1+1+1+2, E2 ordered; e4
            ["mini_program", 2, 0.0, 1.0, 1.0, 2, 200.0, 100.0],  # D1 D2; d4 80 + d9 120
            ["store_pos", 4, 2 / 4, 0.0, 1.0, 4, 600.0, 150.0],  # B1 A2 B3 B4, bounces B3 B4; b2+a7+b6+b7
            ["web", 3, 1 / 3, 1.0, 2 / 3, 2, 240.0, 120.0],  # A1 C1 C2, bounce C1, A1 C2 ordered; a5 200 + c4 40
        ]),
        "mid": (["channel", "sessions", "bounce_rate", "visit_depth", "session_conversion", "orders", "gmv",
                 "aov"], [
            ["app", 2, 0.0, 1.0, 1 / 2, 1, 60.0, 60.0],  # B2 E2; e4
            ["mini_program", 2, 0.0, 1.0, 1.0, 2, 200.0, 100.0],  # D1 D2; d4 d9
            ["store_pos", 1, 0.0, 0.0, 1.0, 1, 300.0, 300.0],  # A2; a7
            ["web", 2, 1 / 2, 1.0, 1 / 2, 1, 40.0, 40.0],  # C1 C2; c4
        ]),
    },
    # Acquisition channel (first touch) of persons first seen in the range -> repurchase (2+ orders / 1+)
    (STORES, 3): {
        "all": (["channel", "persons", "buyers", "repeat_buyers", "repurchase_rate"], [
            ["app", 2, 1, 0, 0.0],  # E (1 order), F (0)
            ["mini_program", 1, 1, 1, 1.0],  # D (2)
            ["store_pos", 1, 1, 1, 1.0],  # B (3)
            ["web", 2, 2, 1, 1 / 2],  # A (2), C (1)
        ]),
        "mid": (["channel", "persons", "buyers", "repeat_buyers", "repurchase_rate"], [
            ["mini_program", 1, 1, 1, 1.0],  # D; first seen D1 21:00
            ["web", 1, 1, 0, 0.0],  # C; first seen D1 13:00 (A, B, E before, F after the range)
        ]),
    },
    # Referrers: persons first seen in the range whose first referred event names the referrer
    (STORES, 4): {
        "all": (["referrer", "persons", "buyers", "referred_orders", "referred_gmv"],
                [["kol-lily", 2, 2, 3, 260.0]]),  # D (2 orders, 200) and E (1, 60)
        "mid": (["referrer", "persons", "buyers", "referred_orders", "referred_gmv"],
                [["kol-lily", 1, 1, 2, 200.0]]),  # D only: E was first seen at D1 11:00
    },
    # Stores: orders at the store, GMV, basket, items per order, repeats (after the person's first order)
    (STORES, 6): {
        "all": (["store_id", "orders", "gmv", "basket_value", "items_per_order", "repeat_purchases"], [
            # b2 100/1 item (B's first order), a7 300/3 (A's first was a5), b7 50/1 (after b2): 450/3, 5/3
            ["S1", 3, 450.0, 150.0, 5 / 3, 2],
            ["S2", 1, 150.0, 150.0, 2.0, 1],  # b6 150/2 items, after b2
        ]),
        "mid": (["store_id", "orders", "gmv", "basket_value", "items_per_order", "repeat_purchases"], [
            ["S1", 1, 300.0, 300.0, 3.0, 1],  # a7 only
        ]),
    },
    # Stores: new members (first touch at the store, first seen in the range)
    (STORES, 7): {
        "all": (["store_id", "new_members"], [["S1", 1]]),  # B
        "mid": (["store_id", "new_members"], []),  # B was first seen at D1 10:00
    },
    # Spend by channel over the days the range touches (both days in both ranges):
    # web 100 + 300 = 400 (clicks 50 + 100), mini_program 200 + 200 = 400 (40 + 60), app 50 + 120 = 170 (25 + 30).
    # Leads: persons first seen in the range with that first-touch channel; their GMV so far.
    (STORES, 9): {
        "all": (["channel", "spend", "clicks", "leads", "cost_per_lead", "cost_per_click", "lead_gmv", "roi"], [
            ["app", 170.0, 55, 2, 85.0, 170 / 55, 60.0, (60 - 170) / 170],  # E F; E 60
            ["mini_program", 400.0, 100, 1, 400.0, 4.0, 200.0, -0.5],  # D 200
            ["web", 400.0, 150, 2, 200.0, 400 / 150, 540.0, (540 - 400) / 400],  # A 500 + C 40
        ]),
        "mid": (["channel", "spend", "clicks", "leads", "cost_per_lead", "cost_per_click", "lead_gmv", "roi"], [
            ["app", 170.0, 55, 0, None, 170 / 55, 0.0, -1.0],  # no lead
            ["mini_program", 400.0, 100, 1, 400.0, 4.0, 200.0, -0.5],  # D
            ["web", 400.0, 150, 1, 400.0, 400 / 150, 40.0, (40 - 400) / 400],  # C
        ]),
    },
    # Spend by campaign: c-double11 300 + 200 + 200 = 700 (clicks 100 + 40 + 60), c-app-launch 120 (30)
    (STORES, 10): {
        "all": (["campaign", "spend", "clicks", "leads", "cost_per_lead", "cost_per_click", "lead_gmv", "roi"], [
            ["c-app-launch", 120.0, 30, 1, 120.0, 4.0, 0.0, -1.0],  # F, no order
            ["c-double11", 700.0, 200, 2, 350.0, 3.5, 700.0, 0.0],  # A 500 + D 200
        ]),
        "mid": (["campaign", "spend", "clicks", "leads", "cost_per_lead", "cost_per_click", "lead_gmv", "roi"], [
            ["c-app-launch", 120.0, 30, 0, None, 4.0, 0.0, -1.0],
            ["c-double11", 700.0, 200, 1, 700.0, 3.5, 200.0, (200 - 700) / 700],  # D
        ]),
    },
}


def _panels() -> list[tuple[Path, Panel]]:
    return [(path, p) for path in dashboards() for p in clickhouse_panels(path) if p.dashboard_uid in DASHBOARD_UIDS]


def test_every_clickhouse_panel_has_an_expectation_for_every_range() -> None:
    from tests import test_identity_dashboard, test_members_dashboard, test_triggers_dashboard

    # every dashboard's panels are checked: these two here, the Identity, Members and Triggers ones with their
    # own journeys
    assert {p.dashboard_uid for path in dashboards() for p in clickhouse_panels(path)} == {
        *DASHBOARD_UIDS, test_identity_dashboard.UID, test_members_dashboard.UID, test_triggers_dashboard.UID}
    panels = _panels()
    keys = [(p.dashboard_uid, p.panel_id) for _, p in panels]
    assert len(keys) == len(set(keys)), "one ClickHouse query per panel"
    assert set(keys) == set(EXPECTED), (sorted(set(keys) - set(EXPECTED)), sorted(set(EXPECTED) - set(keys)))
    for key, by_range in EXPECTED.items():
        assert set(by_range) == set(RANGES), key


def test_reporting_tz_is_the_settings_default_and_buckets_every_day() -> None:
    from streams.settings import Settings

    for path in dashboards():
        panels = clickhouse_panels(path)
        if not panels:
            continue
        assert variables(path)["reporting_tz"] == Settings().reporting_timezone
        for p in panels:
            for call in ("toDate(", "toStartOfDay(", "toStartOfWeek(", "toStartOfMonth(", "toHour("):
                for arg in p.raw_sql.split(call)[1:]:
                    depth, i = 1, 0  # the call's arguments must name the reporting time zone
                    while depth:
                        depth += {"(": 1, ")": -1}.get(arg[i], 0)
                        i += 1
                    assert "'${reporting_tz}'" in arg[:i], (p.title, call + arg[:i])


@pytest.mark.e2e
def test_every_clickhouse_panel_returns_the_hand_computed_numbers(stack_factory, tmp_path) -> None:
    stack = stack_factory(workers=2)
    fill(stack, tmp_path)
    failures = []
    for path, panel in _panels():
        for name, (start, end, interval_s) in RANGES.items():
            sql = expand(panel.raw_sql, start, end, interval_s, variables(path))
            want_columns, want_rows = EXPECTED[(panel.dashboard_uid, panel.panel_id)][name]
            got = ch.query(stack.settings, sql, open_directly=False)
            columns_ok = got["columns"] == want_columns or (not got["rows"] and not got["columns"])  # empty: no header
            if not columns_ok or not same(got["rows"], want_rows):
                failures.append(f"{panel.dashboard_uid} #{panel.panel_id} {panel.title!r} over {name}:\n"
                                f"  got  {got['columns']} {got['rows']}\n  want {want_columns} {want_rows}")
    assert not failures, "\n".join(failures)
