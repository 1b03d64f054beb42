"""Recommended products in the interest-shift trigger's payload (issue 8), end to end on 2 workers.

The product catalog is loaded before the workers start. Other members order women's fashion
(the best sellers) and a basketball shoe with socks (bought together); the shifter, who once
bought that shoe and a best-selling dress (an imported order), moves from basketball shoes to
women's fashion. The fired interest_shift trigger lists, in the recommender's interleaved
order (streams/triggers/recommend.py), the category's new arrival, its best sellers and what
is bought with the shoe, never the dress or the shoe the shifter bought, nor another
category's new arrival. The per-partition sales summaries are checked on products.sales too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.reference import loader
from streams.reference.rows import write_file
from streams.tally import TopicReader
from streams.topics import PRODUCT_SALES
from streams.triggers.delivery import in_holdout
from tests.conftest import T0, encoded, touchpoint
from tests.test_pipeline_e2e import _wait_until_triggers_stream_time
from tests.test_triggers_e2e import Member, _view

pytestmark = pytest.mark.e2e
MIN, H, D = 60_000, 3_600_000, 86_400_000
DAY0 = T0 + 210 * D  # a local midnight (+08:00): 2027-05-30


def _product(pid: str, path: str, new: bool = False, launched: str = "2025-01-01") -> dict[str, Any]:
    return {"product_id": pid, "name": pid, "category_path": path, "price": 100.0, "currency": "CNY",
            "new_arrival": new, "tags": [], "launched_on": launched}


CATALOG = [
    _product("N1", "women/fashion/dresses", new=True, launched="2027-05-20"),  # the category's new arrival
    _product("N0", "men/shoes/basketball", new=True, launched="2027-05-25"),  # another category's
    _product("F1", "women/fashion/dresses"),
    _product("F2", "women/fashion/tops"),
    _product("F3", "women/fashion/skirts"),
    _product("S1", "men/shoes/basketball"),
    _product("C1", "men/socks"),
]


def _order(eid: str, t: int, member: str, lines: list[tuple[str, int]], **fields: Any) -> dict:
    return touchpoint(eid, "order_completed", t, channel="mini_program", identifiers={"member_id": member},
                      properties={"order_id": eid, "revenue": 100.0,
                                  "products": [{"product_id": p, "quantity": q} for p, q in lines]}, **fields)


def _sales_summaries(settings: Any, want: set[str], timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The latest products.sales record per key, read until it holds a summary of each product in ``want``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "recommendations-e2e",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(PRODUCT_SALES.name(settings), p, OFFSET_BEGINNING)
                     for p in range(PRODUCT_SALES.partitions(settings))])
    latest: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.2):
                if m.error() is None:
                    key = m.key().decode()
                    if m.value() is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = avro.decode_as(avro.PRODUCT_SALES, m.value())
            if want <= {r["product_id"] for r in latest.values()}:
                return latest
    finally:
        consumer.close()
    raise AssertionError(f"products.sales never held {sorted(want)}: {sorted(latest)}")


def test_interest_shift_recommends_new_arrivals_best_sellers_and_bought_together(
        stack_factory, tmp_path: Path) -> None:
    stack = stack_factory(workers=0, max_event_age_s=400 * 86400.0)
    assert loader.load(stack.settings, write_file(tmp_path / "products.jsonl", "products", CATALOG),
                       "products").loaded == len(CATALOG)  # before the workers start
    for i in range(2):
        stack.supervisor.start_worker(i)
    member = Member("MS1")
    shifter = {"member_id": member.member_id, "wechat_openid": member.openid}
    assert not in_holdout("interest_shift", "member_id:MS1", 0.1)  # so the shift is sent, not held out

    # Phase 1: the shifter follows the official account, consents, views basketball shoes at noon for
    # 197 days and once bought the shoe S1 and the dress F1 (an imported order); four other members
    # order within the last 30 days: fashion (F1 3 units, F2 2, F3 1) and S1 with socks C1 twice.
    t_hist = DAY0 - 3 * D + 12 * H + MIN
    history = [*member.reachable_on_wechat(DAY0 - 205 * D + 10 * H),
               _order("s-order", DAY0 - 150 * D + 12 * H, "MS1", [("S1", 1), ("F1", 1)], historical=True)]
    history += [_view(f"s-b{d}", DAY0 - d * D + 12 * H, "men/shoes/basketball", shifter) for d in range(3, 200)]
    t_buy = DAY0 - 5 * D + 12 * H
    buyers = [
        _order("b1", t_buy, "MB1", [("F1", 3), ("F2", 1)]),
        _order("b2", t_buy + MIN, "MB2", [("F2", 1), ("S1", 1), ("C1", 1)]),
        _order("b3", t_buy + 2 * MIN, "MB3", [("F3", 1), ("S1", 1), ("C1", 1)]),
        _order("b4", t_buy + 3 * MIN, "MB4", [("N0", 1)]),
    ]
    stack.produce([encoded(e) for e in history + buyers])
    stack.tick(t_hist)
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda t: len(t.event_ids) == len(history) + len(buyers))
    _wait_until_triggers_stream_time(stack, t_hist)
    # The workers read products.sales as a GlobalTable a moment after it holds the summaries; the
    # phase 2 events pass ingest, identity and features first.
    summaries = _sales_summaries(stack.settings, {"F1", "F2", "F3", "S1", "C1", "N0"})
    units: dict[str, int] = {}
    co_s1: dict[str, int] = {}
    for rec in summaries.values():
        units[rec["product_id"]] = units.get(rec["product_id"], 0) + sum(rec["days"].values())
        if rec["product_id"] == "S1":
            for other, n in rec["co"].items():
                co_s1[other] = co_s1.get(other, 0) + n
        assert rec["category"] == next(p["category_path"] for p in CATALOG if p["product_id"] == rec["product_id"])
    # the imported order of the shifter counts in no sales
    assert units == {"F1": 3, "F2": 2, "F3": 1, "S1": 2, "C1": 2, "N0": 1}
    assert co_s1 == {"C1": 2, "F2": 1, "F3": 1}

    # Phase 2: three days of women's fashion (10:00, 14:00, 20:00): the features report the shift.
    fashion = [_view(f"s-f{d}-{h}", DAY0 - d * D + h * H, "women/fashion/dresses", shifter)
               for d in (2, 1, 0) for h in (10, 14, 20)]
    stack.produce([encoded(e) for e in fashion])
    end = DAY0 + 20 * H + 30 * MIN
    stack.tick(end)
    total = len(history) + len(buyers) + len(fashion)
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == total and len(t.triggers) >= 1)
    _wait_until_triggers_stream_time(stack, end)
    reader.poll(timeout=1.0)
    reader.close()

    assert sorted((r["rule"], r["correlation_key"]) for r in tally.triggers.values()) == [
        ("interest_shift", "women/fashion")]
    shift = next(iter(tally.triggers.values()))
    assert (shift["person_id"], shift["outcome"], shift["channel"]) == (
        tally.person_of_event["s-f0-20"], "fire", "wechat_oa")
    assert shift["payload"]["category"] == "women/fashion"
    # new arrival N1; best sellers F1 (bought: skipped), F2, F3; bought with S1: C1 (2), F2, F3 (taken);
    # interleaved: N1, F2, C1, then F3. Never F1 or S1 (bought), nor N0 (men's shoes).
    assert json.loads(shift["payload"]["products"]) == ["N1", "F2", "C1", "F3"]
