"""Pure core of the skeleton's member features: counters per person.

State is a plain dict so it round-trips through a Faust table's JSON
changelog. Counting is not idempotent by itself: the agent applies a person's
ops only from batches the state has not applied yet (streams/redelivery.py,
kept under ``src``), so a replay after a crash does not count twice.
"""

from __future__ import annotations

from typing import Any

from streams import redelivery
from streams.touchpoint.record import props
from streams.touchpoint.taxonomy import PAGE_TYPES


def empty(person_id: str) -> dict[str, Any]:
    return {
        "person_id": person_id, "member_id": None, "events": 0, "page_views": 0,
        "product_views": 0, "cart_adds": 0, "orders": 0, "revenue": 0.0,
        "first_seen_ms": 0, "last_seen_ms": 0, "merged_from": [],
    }


def apply_event(state: dict[str, Any], enriched: dict[str, Any]) -> None:
    """Count one enriched touchpoint."""
    tp = enriched["touchpoint"]
    t = tp["type"]
    state["events"] += 1
    if t in PAGE_TYPES:
        state["page_views"] += 1
    elif t == "product_viewed":
        state["product_views"] += 1
    elif t == "product_added":
        state["cart_adds"] += 1
    elif t == "order_completed":
        state["orders"] += 1
        order = props(tp)
        state["revenue"] += float(order.get("revenue") or order.get("total") or 0.0)
    when = tp["event_time_ms"]
    state["first_seen_ms"] = when if not state["first_seen_ms"] else min(state["first_seen_ms"], when)
    state["last_seen_ms"] = max(state["last_seen_ms"], when)
    if enriched.get("member_id"):
        state["member_id"] = enriched["member_id"]


def absorb(state: dict[str, Any], other: dict[str, Any]) -> bool:
    """Merge another person's counters into this one; False if already absorbed."""
    if other["person_id"] in state["merged_from"]:
        return False
    for k in ("events", "page_views", "product_views", "cart_adds", "orders", "revenue"):
        state[k] += other[k]
    firsts = [t for t in (state["first_seen_ms"], other["first_seen_ms"]) if t]
    state["first_seen_ms"] = min(firsts) if firsts else 0
    state["last_seen_ms"] = max(state["last_seen_ms"], other["last_seen_ms"])
    state["merged_from"] = state["merged_from"] + [other["person_id"], *other["merged_from"]]
    state["member_id"] = state["member_id"] or other["member_id"]
    return True


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """The MemberFeatures record published for this state."""
    return {k: v for k, v in state.items() if k != redelivery.KEY}
