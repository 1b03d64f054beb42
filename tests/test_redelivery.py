"""Redelivered person batches are skipped whole (streams/redelivery.py), so the stages after
identity count nothing twice however many events a person has and wherever a crash lands."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import redelivery
from streams.features import member, profile
from streams.sessions import core as sessions
from tests.conftest import T0, touchpoint

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT = 30 * 60_000


def enriched(tp: dict[str, Any]) -> dict[str, Any]:
    return {"person_id": "p-1", "member_id": None, "processed_at_ms": T0,
            "raw_partition": 0, "raw_offset": 0, "touchpoint": tp}


def batch(source: int, offset: int, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"batch_id": f"b{source}-{offset}", "source_partition": source, "watermark_ms": 0,
            "source_offset": offset, "ops": [{"kind": "event", "event": e} for e in events or []]}


def test_a_batch_at_or_below_the_last_offset_of_its_source_is_a_redelivery() -> None:
    s: dict[str, Any] = {}
    assert redelivery.claim(s, batch(0, 5))
    assert not redelivery.claim(s, batch(0, 5))
    assert not redelivery.claim(s, batch(0, 3))
    assert redelivery.claim(s, batch(1, 3))  # another identity partition has its own offsets
    assert redelivery.claim(s, batch(0, 6))
    assert json.loads(json.dumps(s)) == {"src": {"0": 6, "1": 3}}  # survives the JSON changelog


def test_moves_and_unstamped_batches_are_always_applied() -> None:
    s: dict[str, Any] = {}
    move = batch(-1, -1)
    assert redelivery.claim(s, move) and redelivery.claim(s, move)
    legacy = batch(0, 0)
    del legacy["source_offset"]  # written before PersonBatch v3
    assert redelivery.claim(s, legacy) and redelivery.claim(s, legacy)


def _apply(state: dict[str, Any], b: dict[str, Any]) -> None:
    """What the features and sessions agents do with one person's ops in a batch."""
    if redelivery.claim(state["features"], b):
        for op in b["ops"]:
            profile.apply(state["features"]["profile"], op["event"])
    if redelivery.claim(state["sessions"], b):
        for op in b["ops"]:
            sessions.on_event(state["sessions"], op["event"], TIMEOUT)


kinds = st.sampled_from(["page_viewed", "product_viewed", "product_added", "order_completed"])


@FAST
@given(
    # batches of one person from two identity partitions, up to 200 events: far more than
    # any "recent ids" memory would hold
    st.lists(st.tuples(st.integers(0, 1), st.lists(st.tuples(kinds, st.integers(0, 10**7)), min_size=1, max_size=40)),
             min_size=1, max_size=8),
    st.data(),
)
def test_replaying_any_suffix_after_a_crash_counts_nothing_twice(
    plan: list[tuple[int, list[tuple[str, int]]]], data: st.DataObject,
) -> None:
    offsets = {0: 0, 1: 0}
    batches = []
    n = 0
    for source, evs in plan:
        events = []
        for kind, t in evs:
            n += 1
            events.append(enriched(touchpoint(f"e{n}", kind, T0 + t, identifiers={"anonymous_id": "c1"},
                                              properties={"revenue": 1.0} if kind == "order_completed" else None)))
        batches.append(batch(source, offsets[source], events))
        offsets[source] += 1

    once = {"features": member.empty("p-1", 0), "sessions": sessions.empty("p-1", 0)}
    for b in batches:
        _apply(once, b)

    # A crash after any prefix: the state as last written goes through the changelog, then
    # the uncommitted tail is delivered again (commits are per source, so a suffix of each).
    crash = data.draw(st.integers(0, len(batches)))
    replayed = {"features": member.empty("p-1", 0), "sessions": sessions.empty("p-1", 0)}
    for b in batches[:crash]:
        _apply(replayed, b)
    replayed = json.loads(json.dumps(replayed))
    done = {s: sum(1 for b in batches[:crash] if b["source_partition"] == s) for s in (0, 1)}
    committed = {s: data.draw(st.integers(0, done[s])) for s in (0, 1)}  # never past what was applied
    tail = [b for b in batches if b["source_offset"] >= committed[b["source_partition"]]]
    for b in tail:
        _apply(replayed, b)

    now = T0 + 10**7
    assert member.record(replayed["features"], now) == member.record(once["features"], now)
    assert replayed["sessions"]["open"] == once["sessions"]["open"]
