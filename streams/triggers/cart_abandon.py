"""Pure core of the cart-abandon trigger.

A ``product_added`` with a cart id arms (or re-arms) a timer for that cart at
event time + delay. A ``checkout_started`` for the cart, or any
``order_completed`` by the person, disarms it when it happened between the
add and the due time (by event time, so arrival order within the watermark
does not matter: an order placed after the reminder was due cancels nothing). When stream time (the
event-time watermark, never the wall clock directly) passes the due time, the
trigger fires once per cart: its id is a hash of rule, cart and person, and
fired carts are remembered so a replayed add cannot arm it again.
Historical (imported) events never arm anything.
"""

from __future__ import annotations

from typing import Any

from streams.touchpoint.record import props as record_props
from streams.triggers.delivery import trigger_id  # the engine's ids: the same trigger, the same id

RULE = "cart_abandon"
FIRED_MEMORY = 256


def empty(person_id: str, partition: int) -> dict[str, Any]:
    return {"person_id": person_id, "partition": partition, "member_id": None, "carts": {}, "fired": []}


def on_event(state: dict[str, Any], enriched: dict[str, Any], delay_ms: int) -> bool:
    """Update the person's pending carts; True if the state changed."""
    tp = enriched["touchpoint"]
    if tp["historical"]:
        return False
    props = record_props(tp)
    cart_id = props.get("cart_id")
    kind = tp["type"]
    if enriched.get("member_id"):
        state["member_id"] = enriched["member_id"]
    if kind == "product_added" and cart_id:
        if cart_id in state["fired"]:
            return False
        cart = state["carts"].get(cart_id)
        due = tp["event_time_ms"] + delay_ms
        if cart is not None and cart["due"] >= due:
            return False
        state["carts"][cart_id] = {
            "due": due, "added_ms": tp["event_time_ms"], "event_id": tp["event_id"],
            "product_id": props.get("product_id") or "",
        }
        return True
    if kind == "checkout_started" and cart_id in state["carts"]:
        return _cancel(state, [str(cart_id)], tp["event_time_ms"])
    if kind == "order_completed" and state["carts"]:
        return _cancel(state, list(state["carts"]), tp["event_time_ms"])
    return False


def _cancel(state: dict[str, Any], cart_ids: list[str], at_ms: int) -> bool:
    gone = [c for c in cart_ids if state["carts"][c]["added_ms"] <= at_ms <= state["carts"][c]["due"]]
    for c in gone:
        del state["carts"][c]
    return bool(gone)


def next_due(state: dict[str, Any]) -> int | None:
    return min((c["due"] for c in state["carts"].values()), default=None)


def fire_due(state: dict[str, Any], stream_time_ms: int) -> list[dict[str, Any]]:
    """Fire every cart due at or before stream time; returns Trigger records."""
    fired = []
    for cart_id, cart in sorted(state["carts"].items()):
        if cart["due"] > stream_time_ms:
            continue
        person = state["person_id"]
        fired.append({
            "trigger_id": trigger_id(RULE, cart_id, person), "rule": RULE, "person_id": person,
            "member_id": state["member_id"], "correlation_key": cart_id,
            "source_event_id": cart["event_id"], "due_at_ms": cart["due"],
            "fired_at_ms": stream_time_ms, "payload": {"cart_id": cart_id, "product_id": cart["product_id"]},
        })
    for t in fired:
        del state["carts"][t["correlation_key"]]
        state["fired"] = (state["fired"] + [t["correlation_key"]])[-FIRED_MEMORY:]
    return fired
