"""Recommended products in trigger payloads (issue 8), the pure parts: the recommender, the
per-partition sales entry, the ``recommend(...)`` call of the expression language, the person's
bought products. End to end: tests/test_recommendations_e2e.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.triggers import engine, expr, person, sales
from streams.triggers.definitions import BUILTIN_DIR, DefinitionError, load
from streams.triggers.delivery import Policy
from streams.triggers.recommend import recommend
from streams.triggers.vocabulary import roots, signatures
from tests.conftest import T0, touchpoint

D = 86_400_000
NOW = T0 + 40 * D  # 2026-12-11 00:00 +08:00, i.e. 2026-12-10 16:00 UTC


def product(pid: str, path: str, new: bool = False, launched: str | None = None) -> dict[str, Any]:
    return {"product_id": pid, "name": pid, "category_path": path, "price": 1.0, "currency": "CNY",
            "new_arrival": new, "tags": [], "launched_on": launched}


def summary(pid: str, category: str | None, days: dict[str, int], co: dict[str, int] | None = None,
            partition: int = 0) -> dict[str, Any]:
    return {"partition": partition, "product_id": pid, "category": category, "days": days, "co": co or {}}


# ---------------------------------------------------------------------------- the recommender

CATALOG = [
    product("N1", "women/fashion/dresses", new=True, launched="2026-12-01"),
    product("N2", "women/fashion/tops", new=True, launched="2026-12-05"),
    product("N3", "women/fashion/tops", new=True, launched="2026-12-05"),
    product("N4", "men/shoes/basketball", new=True, launched="2026-12-09"),  # another category
    product("B1", "women/fashion/dresses"),
    product("B2", "women/fashion/tops"),
    product("B3", "women/fashionable"),  # not under women/fashion
    product("S1", "men/shoes/basketball"),
    product("C1", "men/socks"),
]
SALES = [
    # B1: 3 + 2 units over two partitions in the window; B2: 4; a day before the 30-day window
    # (2026-11-11 .. 2026-12-10 UTC) does not count: B2's 9 units of 2026-11-10.
    summary("B1", "women/fashion/dresses", {"2026-12-01": 3}, partition=0),
    summary("B1", "women/fashion/dresses", {"2026-12-09": 2}, partition=1),
    summary("B2", "women/fashion/tops", {"2026-11-10": 9, "2026-11-11": 4}, partition=1),
    summary("B3", "women/fashionable", {"2026-12-09": 50}),
    summary("N2", "women/fashion/tops", {"2026-12-09": 1}),
    # the person bought S1: bought with it, C1 in 3 orders over two partitions, B2 in 2, N1 in 1
    summary("S1", "men/shoes/basketball", {"2026-12-02": 5}, co={"C1": 2, "B2": 2, "N1": 1}, partition=0),
    summary("S1", "men/shoes/basketball", {"2026-12-03": 1}, co={"C1": 1}, partition=1),
    # a product only the sales know, under the category by its summary
    summary("X1", "women/fashion/shoes", {"2026-12-10": 1}),
]


def test_recommend_interleaves_new_arrivals_best_sellers_and_bought_together() -> None:
    # new arrivals of women/fashion: N2, N3 (12-05, by id), then N1 (12-01); best sellers: B1 (5),
    # B2 (4), N2 (1), X1 (1); bought with S1: C1 (3), B2 (2), N1 (1). Interleaved, nothing twice.
    assert recommend("women/fashion", NOW, CATALOG, SALES, {"S1"}, 30, 8) == [
        "N2", "B1", "C1", "N3", "B2", "N1", "X1"]
    assert recommend("women/fashion", NOW, CATALOG, SALES, {"S1"}, 30, 3) == ["N2", "B1", "C1"]


def test_recommend_never_offers_what_the_person_bought() -> None:
    assert recommend("women/fashion", NOW, CATALOG, SALES, {"S1", "N2", "B1", "C1"}, 30, 8) == [
        "N3", "B2", "N1", "X1"]
    assert recommend("women/fashion", NOW, CATALOG, SALES, set(), 30, 8) == ["N2", "B1", "N3", "B2", "N1", "X1"]


def test_recommend_window_counts_days_back_from_now() -> None:
    # a 1-day window (2026-12-10 UTC): only X1 sold in it, and S1's co-purchases are older
    assert recommend("women/fashion", NOW, [], SALES, {"S1"}, 1, 5) == ["X1"]
    # 8 days (from 2026-12-03): only partition 1's summary of S1 counts, C1 once, before B2
    assert recommend("women/fashion", NOW, [], SALES, {"S1"}, 8, 3) == ["B1", "C1", "N2"]
    # 40 days back: B2's old 9 units count, 13 > B1's 5
    assert recommend("women/fashion", NOW, [], SALES, set(), 40, 2) == ["B2", "B1"]


@given(st.lists(st.sampled_from(["B1", "B2", "B3", "N1", "N2", "N3", "N4", "S1", "C1", "X1"]), max_size=6),
       st.integers(1, 12), st.permutations(SALES))
@settings(max_examples=200, deadline=None)
def test_a_bought_product_never_appears_and_order_does_not_matter(
        bought: list[str], count: int, sales_order: list[dict[str, Any]]) -> None:
    got = recommend("women/fashion", NOW, CATALOG, sales_order, set(bought), 30, count)
    assert not set(got) & set(bought)
    assert len(got) == len(set(got)) <= count
    assert got == recommend("women/fashion", NOW, list(reversed(CATALOG)), SALES, set(bought), 30, count)


# ---------------------------------------------------------------------------- the sales entry

def order(eid: str, t: int, lines: list[tuple[str, int | None]], historical: bool = False,
          category: str | None = None) -> dict[str, Any]:
    tp = touchpoint(eid, "order_completed", t, properties={
        "order_id": eid, "revenue": 1.0,
        "products": [{"product_id": p, "quantity": q, "category": category} for p, q in lines]})
    tp["historical"] = historical
    return {"kind": "event", "person_id": f"p-{eid}", "event": {"touchpoint": tp}, "other_person": None}


def batch(offset: int, ops: list[dict[str, Any]], source: int = 0) -> dict[str, Any]:
    return {"batch_id": f"b{source}-{offset}", "source_partition": source, "watermark_ms": 0,
            "source_offset": offset, "ops": ops}


CATS = {"A": "women/fashion/tops", "B": "women/fashion/dresses", "C": "men/socks"}


def test_orders_count_units_per_utc_day_category_and_co_purchases() -> None:
    entry = sales.empty()
    t = T0 + 10 * D + 3_600_000  # 2026-11-11 01:00 +08:00 = 2026-11-10 17:00 UTC
    changed = sales.apply_batch(entry, batch(5, [
        order("o1", t, [("A", 2), ("B", None)]),
        order("o2", t + 1000, [("A", 1), ("C", 1), ("A", 1)]),
        order("o3", t, [("A", 7)], historical=True),  # imported history: not counted
        {"kind": "event", "person_id": "p", "event": {"touchpoint": touchpoint("v", "product_viewed", t)},
         "other_person": None},
    ]), 30, CATS.get)
    assert changed == {"A", "B", "C"}
    assert sales.summary(entry, 3, "A") == {"partition": 3, "product_id": "A", "category": "women/fashion/tops",
                                             "days": {"2026-11-10": 4}, "co": {"B": 1, "C": 1}}
    assert sales.summary(entry, 3, "B") == {"partition": 3, "product_id": "B", "category": "women/fashion/dresses",
                                             "days": {"2026-11-10": 1}, "co": {"A": 1}}
    assert sales.summary(entry, 3, "C")["co"] == {"A": 1}
    # the order line's category wins over the catalog lookup
    sales.apply_batch(entry, batch(6, [order("o4", t, [("Z", 1)], category="kids/toys")]), 30, CATS.get)
    assert sales.summary(entry, 3, "Z")["category"] == "kids/toys"


def test_a_redelivered_batch_and_a_hand_over_change_nothing() -> None:
    entry = sales.empty()
    b = batch(7, [order("o1", T0, [("A", 1), ("B", 1)])])
    assert sales.apply_batch(entry, b, 30, CATS.get) == {"A", "B"}
    before = copy.deepcopy(entry)
    assert sales.apply_batch(entry, copy.deepcopy(b), 30, CATS.get) == set()
    assert sales.apply_batch(entry, batch(6, [order("o0", T0, [("A", 1)])]), 30, CATS.get) == set()  # older offset
    hand_over = {**batch(-1, [order("o9", T0, [("A", 1)])], source=-1)}
    assert sales.apply_batch(entry, hand_over, 30, CATS.get) == set()
    assert entry == before
    # another identity partition's offsets are its own
    assert sales.apply_batch(entry, batch(1, [order("o5", T0, [("A", 1)])], source=1), 30, CATS.get) == {"A"}
    assert entry["products"]["A"]["days"] == {sales.utc_day(T0): 2}


def test_days_older_than_the_window_are_pruned_and_late_orders_count_nothing() -> None:
    entry = sales.empty()
    sales.apply_batch(entry, batch(1, [order("o1", T0, [("A", 1), ("B", 1)])]), 3, CATS.get)
    sales.apply_batch(entry, batch(2, [order("o2", T0 + 2 * D, [("A", 1)])]), 3, CATS.get)
    assert entry["products"]["A"]["days"] == {"2026-10-31": 1, "2026-11-02": 1}
    # three days later: T0's day leaves the 3-day window; B had nothing else and leaves the entry
    changed = sales.apply_batch(entry, batch(3, [order("o3", T0 + 3 * D, [("C", 1)])]), 3, CATS.get)
    assert changed == {"A", "B", "C"}
    assert sorted(entry["products"]) == ["A", "C"] and sales.summary(entry, 0, "B") is None
    assert entry["products"]["A"]["days"] == {"2026-11-02": 1}
    # an order from before the window counts nothing
    assert sales.apply_batch(entry, batch(4, [order("o4", T0 - 5 * D, [("B", 1)])]), 3, CATS.get) == set()
    assert "B" not in entry["products"]


def test_co_purchase_counts_keep_the_top_k() -> None:
    entry = sales.empty()
    ops = [order(f"o{i}", T0, [("A", 1), *[(f"P{j}", 1) for j in range(i + 1)]]) for i in range(5)]
    sales.apply_batch(entry, batch(1, ops), 30, CATS.get, top_co=3)
    # P0 bought with A in 5 orders, P1 in 4, P2 in 3, P3 in 2, P4 in 1
    assert entry["products"]["A"]["co"] == {"P0": 5, "P1": 4, "P2": 3}


# ---------------------------------------------------------------------------- recommend(...) in expressions

FEATURE_ROOTS = roots(with_event=False)


def test_a_call_parses_type_checks_and_prints_back() -> None:
    e = expr.compile("recommend(features.interest_category)", FEATURE_ROOTS, functions=signatures())
    assert e.type == expr.ListOf(expr.STRING)
    assert str(e.node) == "recommend(features.interest_category)"
    assert [str(p) for p in e.paths()] == ["features.interest_category"]
    assert expr.parse(str(e.node)) == e.node
    got = e({"features": {"interest_category": "women/fashion"},
             expr.CALLS: {"recommend": lambda c: [c.upper(), "P1"]}})
    assert got == ["WOMEN/FASHION", "P1"]
    assert e({"features": {}, expr.CALLS: {"recommend": lambda c: ["P1"]}}) is None  # null argument
    assert e({"features": {"interest_category": "x"}}) is None  # no implementation at hand


@pytest.mark.parametrize("source, functions, pos, needle", [
    ("recomend(features.interest_category)", True, 0, "unknown function 'recomend' (did you mean 'recommend'?)"),
    ("recommend(features.interest_category)", False, 0, "no function can be called here"),
    ("recommend(features.revenue_total)", True, 10, "argument 1 needs string, not number"),
    ("recommend()", True, 0, "takes 1 argument(s), not 0"),
    ("recommend('a', 'b')", True, 0, "takes 1 argument(s), not 2"),
    ("features.lifecycle == recommend('a')", True, 19, "cannot compare string with list of string"),
    ("recommend('a'", True, 13, "expected ')'"),
])
def test_call_errors_carry_their_position(source: str, functions: bool, pos: int, needle: str) -> None:
    with pytest.raises(expr.ExprError) as info:
        expr.compile(source, FEATURE_ROOTS, functions=signatures() if functions else None)
    assert needle in info.value.message and info.value.pos == pos


def _definition(tmp_path: Path, when: str, payload: str) -> Path:
    (tmp_path / "shift_recs.yaml").write_text(f"""name: shift_recs
description: test
start:
  events: [product_viewed]
  when: {when}
key: features.interest_category
payload:
  products: {payload}
channels: [app_push]
priority: 10
""")
    return tmp_path


def test_definitions_allow_calls_in_payloads_only(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    ok = load(_definition(good, "features.interest_shift", "recommend(features.interest_category)"))
    ctx = {"features": {"interest_category": "c"}, expr.CALLS: {"recommend": lambda c: ["P1", "P2"]}}
    assert ok["shift_recs"].payload_of(ctx) == {"products": '["P1", "P2"]'}
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(DefinitionError) as info:
        load(_definition(bad, "recommend(features.interest_category) != null", "features.interest_category"))
    assert "start.when: no function can be called here" in str(info.value)


# ---------------------------------------------------------------------------- the person's bought products

def _ordered(entry: dict[str, Any], eid: str, t: int, pids: list[str], historical: bool = False) -> None:
    person.note_bought(entry, order(eid, t, [(p, 1) for p in pids], historical=historical)["event"])


def test_bought_products_are_the_latest_50_live_or_imported_and_replay_safe() -> None:
    entry = person.empty("p1", 0)
    _ordered(entry, "h1", T0, ["OLD"], historical=True)
    for i in range(55):
        _ordered(entry, f"o{i}", T0 + (i + 1) * 1000, [f"P{i:02d}"])
    assert len(entry["bought"]) == 50 and "OLD" not in entry["bought"] and "P04" not in entry["bought"]
    assert "P05" in entry["bought"] and "P54" in entry["bought"]
    before = copy.deepcopy(entry)
    _ordered(entry, "o54", T0 + 55 * 1000, ["P54"])  # the same order again
    assert entry == before
    person.note_bought(entry, {"touchpoint": touchpoint("v", "product_viewed", T0, properties={"product_id": "Q"})})
    assert entry == before


def test_bought_products_merge_on_absorb() -> None:
    survivor, gone = person.empty("p1", 0), person.empty("p2", 1)
    _ordered(survivor, "a", T0, ["A", "B"])
    _ordered(gone, "b", T0 + 5, ["B", "C"])
    handed = json.loads(person.handed_over(gone))
    assert person.absorb(survivor, "p2", handed, Policy())
    assert survivor["bought"] == {"A": T0, "B": T0 + 5, "C": T0 + 5}
    assert not person.absorb(survivor, "p2", handed, Policy())  # a repeated hand-over: folded in once
    assert survivor["bought"] == {"A": T0, "B": T0 + 5, "C": T0 + 5}


def test_the_engine_puts_the_recommended_products_in_the_interest_shift_payload() -> None:
    definitions = load(BUILTIN_DIR)
    entry = person.empty("p1", 0)
    _ordered(entry, "o", T0, ["S1"])
    snapshot = {"person_id": "p1", "member_id": "M1", "interest_shift": True, "interest_category": "women/fashion",
                "interest_divergence": 0.4, "reachable": ["app_push"], "consent": {}}
    person.keep_features(entry, snapshot)
    seen: list[tuple[str, frozenset[str]]] = []

    def recommender(category: str, bought: Any) -> list[str]:
        seen.append((category, frozenset(bought)))
        return recommend(category, NOW, CATALOG, SALES, bought, 30, 3)

    ctx = person.context(entry, Policy(), {}, {}, recommender)
    view = {"person_id": "p1", "member_id": "M1",
            "touchpoint": touchpoint("v1", "product_viewed", NOW - 3_600_000 * 6, properties={"product_id": "B1"})}
    _, records = engine.step(entry["engine"], definitions, view, NOW - 3_600_000 * 6, ctx)
    shift = [r for r in records if r["rule"] == "interest_shift"]
    assert len(shift) == 1 and seen == [("women/fashion", frozenset({"S1"}))]
    assert json.loads(shift[0]["payload"]["products"]) == ["N2", "B1", "C1"]
