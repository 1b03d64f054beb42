"""Product sales per person-ops partition, for recommendations (pure).

The ``product-sales`` agent (streams/triggers/sales_agent.py) keeps ONE entry per
``internal.person-ops`` partition (``empty()``), and ``apply_batch`` adds a person
batch's live orders to it:

- ``products``: product id -> ``{"category", "days": {UTC day: units}, "co": {product: orders}}``:
  order units per UTC day for the last ``n_days`` days, the product's category
  (the order line's, which reference enrichment sets from the catalog, else
  ``category_of(product)``), and in how many orders each other product was
  bought with it (the ``top_co`` largest kept; ties: the smaller product id).
- ``latest_ms``: the latest order event time applied; the window is the
  ``n_days`` UTC days up to its day. Days before it are pruned after each
  batch; a product left without a day in the window leaves the entry (its
  co-purchase counts with it), so the entry holds what sold lately. An order
  older than the window counts nothing.
- ``src``: redelivery marks (streams/redelivery.py): a batch the entry has
  applied before is skipped whole, so a redelivered batch changes nothing.
  Hand-over batches (source partition -1) carry no events and are skipped.

Only live ``order_completed`` events count: imported history is a backfill of
old orders (``historical``), and the best sellers are about what sells now.
A person's own bought products (streams/triggers/person.py) count both.

``apply_batch`` returns the product ids whose summary changed; ``summary`` is
what goes on ``products.sales`` for one of them (None: gone, a tombstone).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from streams import redelivery
from streams.reference.view import day_of
from streams.touchpoint.record import props
from streams.triggers.delivery import DAY_MS

Entry = dict[str, Any]
TOP_CO = 20


def empty() -> Entry:
    return {"src": {}, "latest_ms": None, "products": {}}


def utc_day(t_ms: int) -> str:
    return day_of(t_ms, dt.UTC)


def first_day(latest_ms: int, n_days: int) -> str:
    """The first UTC day of the ``n_days``-day window ending on ``latest_ms``'s day."""
    return utc_day(latest_ms - (max(n_days, 1) - 1) * DAY_MS)


def order_lines(enriched: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The line items of a live ``order_completed`` event; None for any other event."""
    tp = enriched["touchpoint"]
    if tp["type"] != "order_completed" or tp.get("historical"):
        return None
    return [line for line in props(tp).get("products") or () if line.get("product_id")]


def apply_batch(entry: Entry, batch: Mapping[str, Any], n_days: int,
                category_of: Callable[[str], str | None] = lambda _: None, top_co: int = TOP_CO) -> set[str]:
    """Add the batch's live orders to the partition's entry (in place); the products whose summary changed."""
    if batch["source_partition"] < 0 or not redelivery.claim(entry, batch):
        return set()
    orders = [(op["event"]["touchpoint"]["event_time_ms"], lines) for op in batch["ops"]
              if op["kind"] == "event" and op.get("event") and (lines := order_lines(op["event"])) is not None]
    if not orders:
        return set()
    entry["latest_ms"] = max([t for t, _ in orders] + ([entry["latest_ms"]] if entry["latest_ms"] is not None else []))
    start = first_day(entry["latest_ms"], n_days)
    products = entry["products"]
    changed: set[str] = set()
    for t, lines in orders:
        day = utc_day(t)
        if day < start:
            continue
        units: dict[str, int] = {}
        for line in lines:
            pid = line["product_id"]
            units[pid] = units.get(pid, 0) + max(int(line.get("quantity") or 1), 1)
            rec = products.setdefault(pid, {"category": None, "days": {}, "co": {}})
            rec["category"] = line.get("category") or category_of(pid) or rec["category"]
        for pid, n in units.items():
            rec = products[pid]
            rec["days"][day] = rec["days"].get(day, 0) + n
            for other in units:
                if other != pid:
                    rec["co"][other] = rec["co"].get(other, 0) + 1
            rec["co"] = _top(rec["co"], top_co)
            changed.add(pid)
    for pid in list(products):
        rec = products[pid]
        kept = {d: n for d, n in rec["days"].items() if d >= start}
        if len(kept) != len(rec["days"]):
            changed.add(pid)
            rec["days"] = kept
        if not kept:
            del products[pid]
    return changed


def _top(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """The ``k`` largest counts (ties: the smaller key), by key."""
    kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return dict(sorted(kept))


def summary(entry: Entry, partition: int, product_id: str) -> dict[str, Any] | None:
    """The ProductSales record of a product in the entry of ``partition`` (None: not in it any more)."""
    rec = entry["products"].get(product_id)
    if rec is None:
        return None
    return {"partition": partition, "product_id": product_id, "category": rec["category"],
            "days": dict(sorted(rec["days"].items())), "co": dict(sorted(rec["co"].items()))}


def record_key(partition: int, product_id: str) -> str:
    return f"{partition}|{product_id}"
