"""The Identity dashboard's ClickHouse panels against numbers worked out by hand, and the
profile lookup's merge, conflict and split history, on the real pipeline (two Faust workers,
the sink, the embedded broker and chDB).

The identity graph's final clustering depends only on the set of events; the merges, splits
and conflicts it reports on the way depend on the order it learns things in. So the journeys
go in one step at a time, each waiting until the graph has settled it, and each step's
changes are worked out from the rules (streams/identity/graph.py: member ids are anchors,
one per person; an identifier seen with more than 2 distinct member ids is shared; of two
equally strong links, the one seen first wins).

Times are Shanghai (UTC+8) on 2026-11-01; changes are dated by the event behind them.
  10:00 a1 page_viewed   cookie c1                 c1 becomes a person of its own
  10:05 a2 login         cookie c1 + member M1     merge: p(c1) into p(M1)
  11:00 t1 order         member M1 + tablet tab    tab joins p(M1) (no change: tab is new)
  11:30 t2 order         member M2 + tablet tab    conflict: tab / M2 (tab-M1 came first; one member
                                                   id per person), tab stays with M1
  12:00 k1 store_visited member M3 + kiosk         kiosk joins p(M3)
  12:10 k2 store_visited member M4 + kiosk         conflict: kiosk / M4 (kiosk-M3 came first)
  12:20 k3 store_visited member M5 + kiosk         kiosk has 3 member ids: shared; split: p(M3) gives
                                                   up the kiosk, which is a person of its own
Final persons: p(M1) = {M1, c1, tab}; p(M2), p(M3), p(M4), p(M5) = their member id alone;
p(kiosk) = {kiosk}: 6 persons, 8 identifiers, 5 with a member id, the largest holds 3.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from streams.identity import profile
from streams.identity.links import person_id_for
from streams.sink import query as ch
from tests.conftest import T0, encoded, touchpoint
from tests.panels import panel_failures, until

pytestmark = pytest.mark.e2e

SHANGHAI = timezone(timedelta(hours=8))
UID = "touchline-identity"
MIN = 60_000


def at(hh: int, mm: int) -> int:
    return T0 + (hh * 60 + mm) * MIN


def utc(hh: int, mm: int) -> str:
    """How ClickHouse shows the event time of Shanghai hh:mm on 2026-11-01 (in UTC)."""
    return datetime.fromtimestamp(at(hh, mm) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def person(ident: str) -> str:
    return person_id_for(ident)


C1, TAB, KIOSK = "anonymous_id:c1", "device_id:tab", "anonymous_id:kiosk"
M = {n: f"member_id:M{n}" for n in range(1, 6)}
GRAPH = "SELECT kind, from_person, into_persons, identifiers FROM identity_changes FINAL WHERE resolver = 'graph' " \
        "ORDER BY event_time, kind"
ASSIGNED = "SELECT identifier, person_id FROM identity_assignments FINAL WHERE is_deleted = 0 ORDER BY identifier"
MEMBER_ONLY = "would give one person more member_id than allowed"

# Each step: its events, then what the graph's changes and assignments are once it is settled.
STEPS: list[tuple[list[dict[str, Any]], Callable[[list[list[Any]], dict[str, str]], bool]]] = [
    ([touchpoint("a1", "page_viewed", at(10, 0), identifiers={"anonymous_id": "c1"})],
     lambda changes, assigned: assigned.get(C1) == person(C1)),
    ([touchpoint("a2", "login", at(10, 5), identifiers={"anonymous_id": "c1", "member_id": "M1"})],
     lambda changes, assigned: assigned.get(C1) == person(M[1]) and len(changes) == 1),
    ([touchpoint("t1", "order_completed", at(11, 0), "app", identifiers={"member_id": "M1", "device_id": "tab"},
                 properties={"order_id": "o1", "revenue": 10.0})],
     lambda changes, assigned: assigned.get(TAB) == person(M[1])),
    ([touchpoint("t2", "order_completed", at(11, 30), "app", identifiers={"member_id": "M2", "device_id": "tab"},
                 properties={"order_id": "o2", "revenue": 20.0})],
     lambda changes, assigned: len(changes) == 2 and M[2] in assigned),
    ([touchpoint("k1", "store_visited", at(12, 0), "store_pos", store_id="S1",
                 identifiers={"member_id": "M3", "anonymous_id": "kiosk"})],
     lambda changes, assigned: assigned.get(KIOSK) == person(M[3])),
    ([touchpoint("k2", "store_visited", at(12, 10), "store_pos", store_id="S1",
                 identifiers={"member_id": "M4", "anonymous_id": "kiosk"})],
     lambda changes, assigned: len(changes) == 3 and M[4] in assigned),
    ([touchpoint("k3", "store_visited", at(12, 20), "store_pos", store_id="S1",
                 identifiers={"member_id": "M5", "anonymous_id": "kiosk"})],
     lambda changes, assigned: assigned.get(KIOSK) == person(KIOSK) and len(changes) == 5 and M[5] in assigned),
]

CHANGES = [  # kind, from, into, identifiers: in event time order (kinds alphabetical at one time)
    ["merge", person(C1), [person(M[1])], []],
    ["conflict", person(M[1]), [person(M[2])], [TAB, M[2]]],
    ["conflict", person(M[3]), [person(M[4])], [KIOSK, M[4]]],
    ["shared", person(KIOSK), [], [KIOSK]],
    ["split", person(M[3]), [person(KIOSK)], []],
]

RANGES = {  # name -> (from, to, interval in seconds)
    "all": (datetime(2026, 11, 1, tzinfo=SHANGHAI), datetime(2026, 11, 3, tzinfo=SHANGHAI), 86_400),
    "mid": (datetime(2026, 11, 1, 11, 15, tzinfo=SHANGHAI), datetime(2026, 11, 1, 12, 15, tzinfo=SHANGHAI), 3_600),
}
NOW = ["persons", "identifiers", "member_persons", "largest"], [[6, 8, 5, 3]]
SIZES = ["identifiers", "persons"], [["1", 5], ["3", 1]]
CONFLICT_ROWS = [[utc(11, 30), f"{TAB} / {M[2]}", MEMBER_ONLY], [utc(12, 10), f"{KIOSK} / {M[4]}", MEMBER_ONLY]]
EXPECTED: dict[int, dict[str, tuple[list[str], list[list[Any]]]]] = {
    # all: merge 10:05, conflicts 11:30 and 12:10, split and shared 12:20; mid (11:15-12:15): the two conflicts
    2: {"all": (["merges", "splits", "conflicts", "shared_identifiers"], [[1, 1, 2, 1]]),
        "mid": (["merges", "splits", "conflicts", "shared_identifiers"], [[0, 0, 2, 0]])},
    # all: one UTC day (Shanghai 10:05-12:20 is 02:05-04:20 UTC); mid: UTC hours 03:00 and 04:00
    3: {"all": (["time", "merges", "splits", "conflicts"], [["2026-11-01 00:00:00", 1, 1, 2]]),
        "mid": (["time", "merges", "splits", "conflicts"], [["2026-11-01 03:00:00", 0, 0, 1],
                                                             ["2026-11-01 04:00:00", 0, 0, 1]])},
    4: {"all": (["identifier", "found_at"], [[KIOSK, utc(12, 20)]]), "mid": ([], [])},
    5: {"all": (["time", "identifiers", "reason"], CONFLICT_ROWS),
        "mid": (["time", "identifiers", "reason"], CONFLICT_ROWS)},
    7: {"all": NOW, "mid": NOW},  # the clustering now, whatever the range
    8: {"all": SIZES, "mid": SIZES},
}


def _settle(settings: Any, done: Callable[[list[list[Any]], dict[str, str]], bool], what: str) -> None:
    """Until ``done(graph changes, assignments)``, read through the running sink."""
    def read() -> tuple[list[list[Any]], dict[str, str]]:
        try:
            return ch.rows(settings, GRAPH, open_directly=False), dict(ch.rows(settings, ASSIGNED, open_directly=False))
        except ch.SinkNotRunning:  # still starting
            return [], {}
    until(read, lambda got: done(*got), f"{what} never settled: (changes, assignments)", timeout_s=90)


def test_identity_panels_and_lookup_show_merges_conflicts_and_splits(stack_factory) -> None:
    stack = stack_factory(workers=2)
    for i, (events, done) in enumerate(STEPS):
        stack.produce([encoded(e) for e in events])
        _settle(stack.settings, done, f"step {i + 1} ({', '.join(e['event_id'] for e in events)})")
    assert ch.rows(stack.settings, GRAPH, open_directly=False) == CHANGES

    failures = panel_failures(stack.settings, UID, EXPECTED, RANGES)
    assert not failures, "\n".join(failures)

    # The lookup: the tablet finds M1's person with the cookie, the merge and the refused link to M2.
    def query(sql: str) -> list[list[Any]]:
        return ch.rows(stack.settings, sql, open_directly=False)

    tab = profile.lookup(query, TAB)
    assert tab is not None and tab["person_id"] == person(M[1]) and tab["member_id"] == "M1"
    assert tab["identifiers"] == [C1, TAB, M[1]]
    assert [(h["kind"], h["from_person"], h["into_persons"]) for h in tab["history"]] == [
        ("merge", person(C1), [person(M[1])]), ("conflict", person(M[1]), [person(M[2])])]
    # M3 lost the kiosk to the split; the kiosk is a person of its own, its history that split.
    m3 = profile.lookup(query, M[3])
    assert m3 is not None and m3["identifiers"] == [M[3]]
    assert [h["kind"] for h in m3["history"]] == ["conflict", "split"]
    kiosk = profile.lookup(query, KIOSK)
    assert kiosk is not None and kiosk["person_id"] == person(KIOSK) and kiosk["member_id"] is None
    assert [(h["kind"], h["reason"]) for h in kiosk["history"]] == [
        ("split", f"shared identifier stopped linking: {KIOSK}")]
