"""Products to recommend in a category, for one person (pure): the ``recommend(category)``
function of trigger payloads (streams/triggers/expr.py, streams/triggers/README.md).

Three lists, each in a deterministic order (ties: the smaller product id):

1. **new arrivals**: catalog products of the category flagged ``new_arrival``,
   the latest ``launched_on`` first (products without one last);
2. **best sellers**: products of the category by units ordered in the last
   ``n_days`` UTC days up to ``now_ms``'s day, summed over the partitions'
   summaries (streams/triggers/sales.py, topic ``products.sales``), most first;
3. **bought together**: products bought in the same orders as the products the
   person bought, by the number of such orders summed over what they bought
   and over partitions, most first (any category: what goes with what they
   have). Only summaries with units in the window count: a partition's entry
   is pruned by the latest order it saw, so a quiet partition may still hold
   older figures.

The result interleaves them, one from each list in that order (a new arrival, a
best seller, a bought-together product, a new arrival...), skipping a product
already taken, until ``count`` are taken or the lists run out. A product the
person bought is never recommended.

A product is in a category when its path is the category or under it
(``women/fashion/dresses`` is in ``women/fashion``); its path is the catalog's
``category_path``, else the one its sales summary carries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from streams.triggers.sales import first_day


def in_category(path: str | None, category: str) -> bool:
    return bool(path) and (path == category or str(path).startswith(category.rstrip("/") + "/"))


def _ranked(scores: Mapping[str, float]) -> list[str]:
    return [pid for pid, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if s > 0]


def new_arrivals(category: str, catalog_products: Iterable[Mapping[str, Any]]) -> list[str]:
    found = [p for p in catalog_products if p.get("new_arrival") and in_category(p.get("category_path"), category)]
    found.sort(key=lambda p: p["product_id"])
    found.sort(key=lambda p: p.get("launched_on") or "", reverse=True)  # stable: ties keep the id order
    return [p["product_id"] for p in found]


def best_sellers(category: str, now_ms: int, sales: Iterable[Mapping[str, Any]], n_days: int,
                 catalog_category: Mapping[str, str | None]) -> list[str]:
    start = first_day(now_ms, n_days)
    units: dict[str, float] = {}
    for s in sales:
        pid = s["product_id"]
        if in_category(catalog_category.get(pid) or s.get("category"), category):
            units[pid] = units.get(pid, 0) + sum(n for d, n in (s.get("days") or {}).items() if d >= start)
    return _ranked(units)


def bought_together(now_ms: int, sales: Iterable[Mapping[str, Any]], bought: Collection[str],
                    n_days: int) -> list[str]:
    start = first_day(now_ms, n_days)
    together: dict[str, float] = {}
    for s in sales:
        if s["product_id"] in bought and any(d >= start for d in s.get("days") or ()):
            for other, n in (s.get("co") or {}).items():
                together[other] = together.get(other, 0) + n
    return _ranked(together)


def recommend(category: str, now_ms: int, catalog_products: Iterable[Mapping[str, Any]],
              sales: Iterable[Mapping[str, Any]], bought: Collection[str], n_days: int,
              count: int) -> list[str]:
    """Up to ``count`` product ids to recommend in ``category`` to a person who bought ``bought``
    (module docstring). ``sales``: ProductSales summaries (product_id, category, days, co)."""
    catalog = list(catalog_products)
    summaries = list(sales)
    paths = {p["product_id"]: p.get("category_path") for p in catalog}
    lists = [new_arrivals(category, catalog), best_sellers(category, now_ms, summaries, n_days, paths),
             bought_together(now_ms, summaries, bought, n_days)]
    taken: list[str] = []
    seen = set(bought)
    cursors = [iter(ids) for ids in lists]
    while len(taken) < count and cursors:
        for it in list(cursors):
            pid = next((p for p in it if p not in seen), None)
            if pid is None:
                cursors.remove(it)
                continue
            seen.add(pid)
            taken.append(pid)
            if len(taken) == count:
                break
    return taken
