"""Pure core of sessionisation: each person's visits, cut in the stream.

A session is a maximal run of one person's events with no gap longer than
the timeout, by event time: events at t and t + timeout share a session,
events at t and t + timeout + 1 ms do not.

State is one plain dict per person (it round-trips through a Faust table's
JSON changelog): the person's open sessions, each a few counters plus "the
earliest event having X" markers. Events are counted, never stored; the
agent applies a person's ops only from batches the state has not applied yet
(streams/redelivery.py), so a replay after a crash counts nothing twice.

Arrival order. An event joins every open session whose
[start - timeout, end + timeout] holds its time, moving that session's start
or end; an event that bridges two open sessions merges them. A session is
closed (published) only when stream time -- the event-time watermark, passed
in, never the wall clock -- exceeds end + timeout. So every event applied
before stream time passes its own event time lands in the session it would
have offline, whatever the arrival order: the open sessions are always
exactly what sorting the events applied so far and splitting on gaps
> timeout gives.

Lateness. Closed sessions are final. An event applied after stream time has
passed its time may find the session it belonged to already closed; it then
fits no open session and starts a new one (or extends another late one),
published as soon as stream time exceeds its end + timeout -- that is, at
the very next close check when the event is older than stream time -
timeout. Imported history, far behind stream time, is therefore grouped into
sessions only within what arrives between two close checks (one batch).

Merges. When a person is merged away into another person, its open sessions
are closed at once and published under the old person id (``close_all``);
they are not moved to the survivor.

Ids and fields. ``session_id`` is a blake2b hash (16 bytes, hex) of the
person id and the event id of the session's earliest event, earliest by
(event time, event id): a replay republishes the same id, and after a merge
of sessions the id follows the earliest event. channel, landing_page,
campaign, source and store_id come from the earliest event having them
(landing_page: context.page_url of a page_viewed/screen_viewed, else its
page url, else its page or screen name); member_id from the latest event
(by event time) that carries one, so it too does not depend on arrival
order. Revenue (order_completed revenue, else total) is summed in integer
millionths, so its sum is the same in any order.
"""

from __future__ import annotations

import hashlib
from typing import Any

from streams.touchpoint.record import props as record_props
from streams.touchpoint.taxonomy import PAGE_TYPES

MICROS = 1_000_000
FIRST_HAVING = ("channel", "landing_page", "campaign", "source", "store_id")


def empty(person_id: str, partition: int) -> dict[str, Any]:
    return {"person_id": person_id, "partition": partition, "open": []}


def session_id(person_id: str, first_event_id: str) -> str:
    return hashlib.blake2b(f"{person_id}|{first_event_id}".encode(), digest_size=16).hexdigest()


def on_event(state: dict[str, Any], enriched: dict[str, Any], timeout_ms: int) -> None:
    """Add one enriched touchpoint to the person's sessions."""
    tp = enriched["touchpoint"]
    merged = _single(enriched)
    t = tp["event_time_ms"]
    keep = []
    for s in state["open"]:
        if s["start_ms"] - timeout_ms <= t <= s["end_ms"] + timeout_ms:
            merged = _merge(merged, s)
        else:
            keep.append(s)
    state["open"] = sorted([*keep, merged], key=lambda s: (s["start_ms"], s["first_id"]))


def next_close(state: dict[str, Any], timeout_ms: int) -> int | None:
    """The earliest stream time at which ``close_due`` closes a session (end + timeout + 1)."""
    return min((s["end_ms"] + timeout_ms + 1 for s in state["open"]), default=None)


def close_due(state: dict[str, Any], stream_time_ms: int, timeout_ms: int) -> list[dict[str, Any]]:
    """Close every session with end + timeout < stream time; returns Session records."""
    due = [s for s in state["open"] if s["end_ms"] + timeout_ms < stream_time_ms]
    state["open"] = [s for s in state["open"] if s["end_ms"] + timeout_ms >= stream_time_ms]
    return [_record(state["person_id"], s, stream_time_ms) for s in due]


def close_all(state: dict[str, Any], stream_time_ms: int) -> list[dict[str, Any]]:
    """Close every open session now (the person was merged away); returns Session records."""
    due, state["open"] = state["open"], []
    return [_record(state["person_id"], s, stream_time_ms) for s in due]


def _single(enriched: dict[str, Any]) -> dict[str, Any]:
    """A session of one event."""
    tp = enriched["touchpoint"]
    t, eid, kind = tp["event_time_ms"], tp["event_id"], tp["type"]
    ctx = tp.get("context") or {}
    props = record_props(tp)
    landing = None
    if kind in PAGE_TYPES:
        landing = ctx.get("page_url") or props.get("url") or props.get("name")
    revenue = 0
    if kind == "order_completed":
        revenue = round(float(props.get("revenue") or props.get("total") or 0.0) * MICROS)
    values = {"channel": tp["channel"], "landing_page": landing, "campaign": ctx.get("campaign"),
              "source": ctx.get("source"), "store_id": tp.get("store_id")}
    member = enriched.get("member_id")
    return {
        "start_ms": t, "first_id": eid, "end_ms": t, "events": 1,
        "page_views": int(kind in PAGE_TYPES), "orders": int(kind == "order_completed"),
        "revenue_micros": revenue, "historical": bool(tp.get("historical")),
        **{k: None if v is None else [t, eid, v] for k, v in values.items()},
        "member_id": [t, eid, member] if member else None,
    }


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One session of two (commutative and associative, so order never matters)."""
    first = min(a, b, key=lambda s: (s["start_ms"], s["first_id"]))
    out = {
        "start_ms": first["start_ms"], "first_id": first["first_id"], "end_ms": max(a["end_ms"], b["end_ms"]),
        **{k: a[k] + b[k] for k in ("events", "page_views", "orders", "revenue_micros")},
        "historical": a["historical"] and b["historical"],
    }
    for k in FIRST_HAVING:
        out[k] = min((m for m in (a[k], b[k]) if m is not None), key=lambda m: (m[0], m[1]), default=None)
    out["member_id"] = max((m for m in (a["member_id"], b["member_id"]) if m is not None),
                           key=lambda m: (m[0], m[1]), default=None)
    return out


def _record(person_id: str, s: dict[str, Any], closed_at_ms: int) -> dict[str, Any]:
    """The Session record published for a closed session."""
    def value(k: str) -> Any:
        return None if s[k] is None else s[k][2]

    return {
        "session_id": session_id(person_id, s["first_id"]), "person_id": person_id,
        "member_id": value("member_id"), "start_ms": s["start_ms"], "end_ms": s["end_ms"],
        "channel": value("channel"), "landing_page": value("landing_page"), "campaign": value("campaign"),
        "source": value("source"), "store_id": value("store_id"), "events": s["events"],
        "page_views": s["page_views"], "orders": s["orders"], "revenue": s["revenue_micros"] / MICROS,
        "converted": s["orders"] > 0, "historical": s["historical"], "closed_at_ms": closed_at_ms,
    }
