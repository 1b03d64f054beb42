"""Rolling event-time windows of one person's activity, in fixed-size buckets. Pure.

Three tiers of counters, each a list of buckets anchored at the person's newest
event time (index 0: the bucket holding it; index i: i buckets earlier):

| tier | bucket          | kept | serves          |
|------|-----------------|------|-----------------|
| m    | 5 minutes       | 12   | 1 h             |
| h    | 1 hour          | 24   | 24 h            |
| d    | 1 day (UTC)     | 90   | 7 d, 30 d, 90 d |

A bucket is its counts in ``METRICS`` order with trailing zeros left out (``[]``
when empty) and a tier leaves out trailing empty buckets, so the same events
always give the same lists. Sessions come from ``slots``: one bit per half-hour
with activity, newest half-hour at bit 0, back to the start of the oldest day
bucket (at most 90 x 48 bits, kept as base64).

Exactness. A window of length W ending at ``now`` sums the W/g buckets ending with
the one holding ``now`` (g: its tier's bucket length), so it covers event times
from the start of its oldest bucket to ``now``: 1 h covers the last 55-60 minutes,
24 h the last 23-24 hours, 7/30/90 d the last 6-7, 29-30, 89-90 days (from a UTC
midnight). Within that span every count and sum is exact; events in the rest of
the true window (at most one bucket, at its far end) are left out.

Sessions in a window are the maximal runs of active half-hours among the
half-hours overlapping its span (a session crossing the span's start counts).
Two events in one half-hour are at most 30 minutes apart, so they are always in
one session of streams/sessions/core.py at its default 30-minute timeout; events
with a whole empty half-hour between them are more than 30 minutes apart, so
never. The count differs from the session stage's only when two sessions fall in
adjacent half-hours (a 30-60 minute gap not spanning an empty half-hour): they
count as one.

Arrival order. An event older than a tier keeps (relative to the newest event)
skips that tier, exactly as in-order arrival would have dropped its bucket when
the newer event came. So the buckets are a function of the set of events alone:
any arrival order, any lateness, and a merge of two persons' buckets (both moved
to the newer anchor, added bucket by bucket, slots OR-ed) give the same lists.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any, TypeVar

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
SLOT_MS = 30 * MINUTE_MS
SLOTS_PER_DAY = DAY_MS // SLOT_MS

METRICS = ("page_views", "product_views", "searches", "cart_adds", "orders", "revenue_cents",
           "consultations", "games")
TIERS = {"m": (5 * MINUTE_MS, 12), "h": (HOUR_MS, 24), "d": (DAY_MS, 90)}  # bucket ms, buckets kept
WINDOWS = {"1h": ("m", 12), "24h": ("h", 24), "7d": ("d", 7), "30d": ("d", 30), "90d": ("d", 90)}

Buckets = dict[str, Any]
T = TypeVar("T")


def empty() -> Buckets:
    return {tier: [] for tier in TIERS} | {"slots": ""}


def _kept_slots(newest_ms: int) -> int:
    """Half-hours kept: from the start of the oldest day bucket to the newest event's."""
    oldest_day = newest_ms // DAY_MS - TIERS["d"][1] + 1
    return newest_ms // SLOT_MS - oldest_day * SLOTS_PER_DAY + 1


def _slots(b: Buckets) -> int:
    return int.from_bytes(base64.b64decode(b["slots"]), "little")


def _encode(slots: int) -> str:
    return base64.b64encode(slots.to_bytes((slots.bit_length() + 7) // 8, "little")).decode()


def _trimmed(items: list[T]) -> list[T]:
    """``items`` without its trailing empty (falsy) ones: zero counts, empty buckets. In place."""
    while items and not items[-1]:
        items.pop()
    return items


def _add(row: Sequence[int], counts: Sequence[int]) -> list[int]:
    return _trimmed([x + y for x, y in zip_longest(row, counts, fillvalue=0)])


def _summed(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    empty_row: list[int] = []
    return _trimmed([_add(x, y) for x, y in zip_longest(a, b, fillvalue=empty_row)])


def moved(b: Buckets, old_ms: int, new_ms: int) -> Buckets:
    """The buckets re-anchored from newest event time ``old_ms`` to a later ``new_ms``."""
    out: Buckets = {}
    for tier, (size, kept) in TIERS.items():
        shift = min(new_ms // size - old_ms // size, kept)
        out[tier] = _trimmed([[] for _ in range(shift)] + b[tier][: kept - shift])
    shift, kept = new_ms // SLOT_MS - old_ms // SLOT_MS, _kept_slots(new_ms)
    out["slots"] = _encode((_slots(b) << min(shift, kept)) & ((1 << kept) - 1))
    return out


def add(b: Buckets, newest_ms: int, t_ms: int, counts: Sequence[int]) -> None:
    """Count one event at ``t_ms`` (at most ``newest_ms``, the buckets' anchor) in place."""
    for tier, (size, kept) in TIERS.items():
        i = newest_ms // size - t_ms // size
        if i < kept:
            rows = b[tier]
            rows.extend([] for _ in range(i + 1 - len(rows)))
            rows[i] = _add(rows[i], counts)
            _trimmed(rows)
    j = newest_ms // SLOT_MS - t_ms // SLOT_MS
    if j < _kept_slots(newest_ms):
        b["slots"] = _encode(_slots(b) | 1 << j)


def merge(a: Buckets, a_newest: int | None, b: Buckets, b_newest: int | None) -> Buckets:
    """The buckets of both persons' events, anchored at the newer of the two newest events."""
    if a_newest is None or b_newest is None:
        return copy.deepcopy(b if a_newest is None else a)
    newest = max(a_newest, b_newest)
    a, b = moved(a, a_newest, newest), moved(b, b_newest, newest)
    out: Buckets = {tier: _summed(a[tier], b[tier]) for tier in TIERS}
    out["slots"] = _encode(_slots(a) | _slots(b))
    return out


def totals(b: Buckets, newest_ms: int | None, now_ms: int) -> dict[str, dict[str, int]]:
    """Sessions and each metric's sum per window, the windows ending at ``now_ms``
    (taken as ``newest_ms`` when earlier: the buckets keep nothing older than that needs)."""
    slots = _slots(b)
    out = {}
    for name, (tier, n) in WINDOWS.items():
        sums: list[int] = []
        sessions = 0
        if newest_ms is not None:
            size, now = TIERS[tier][0], max(now_ms, newest_ms)
            rows = b[tier][: max(0, n - (now // size - newest_ms // size))]
            sums = [sum(column) for column in zip_longest(*rows, fillvalue=0)]
            start = (now // size - n + 1) * size
            span = newest_ms // SLOT_MS - start // SLOT_MS + 1  # half-hours from the window's first
            if span > 0:
                active = slots & ((1 << span) - 1)
                sessions = (active & ~(active >> 1)).bit_count()  # earliest half-hour of each run
        out[name] = {"sessions": sessions} | dict(zip(METRICS, sums + [0] * (len(METRICS) - len(sums)), strict=True))
    return out
