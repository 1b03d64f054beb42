"""Pure core of the skeleton's member features: counters per person.

State is a plain dict so it round-trips through a Faust table's JSON
changelog. ``recent`` holds the last event ids applied, so an event seen again
(a producer retry or a replay after a crash) does not count twice.
"""

from __future__ import annotations

from typing import Any

from streams.touchpoint.record import props
from streams.touchpoint.taxonomy import PAGE_TYPES

RECENT_IDS = 64


def empty(person_id: str) -> dict[str, Any]:
    return {
        "person_id": person_id, "member_id": None, "events": 0, "page_views": 0,
        "product_views": 0, "cart_adds": 0, "orders": 0, "revenue": 0.0,
        "first_seen_ms": 0, "last_seen_ms": 0, "merged_from": [], "recent": [],
    }


def apply_event(state: dict[str, Any], enriched: dict[str, Any]) -> bool:
    """Count one enriched touchpoint; False if it was already counted."""
    tp = enriched["touchpoint"]
    if tp["event_id"] in state["recent"]:
        return False
    state["recent"] = (state["recent"] + [tp["event_id"]])[-RECENT_IDS:]
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
    return True


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
    state["recent"] = (state["recent"] + other.get("recent", []))[-RECENT_IDS:]  # a snapshot carries none
    state["member_id"] = state["member_id"] or other["member_id"]
    return True


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """The MemberFeatures record published for this state."""
    return {k: v for k, v in state.items() if k != "recent"}
