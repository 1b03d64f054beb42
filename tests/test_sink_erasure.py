"""The sink's part of erasure (streams/sink/erasure.py, streams/sink/service.py).

Unit tests of the pure part and of the sink's writer step with a recording writer;
one end-to-end run on the embedded broker and the real sink process (chDB).
"""

from __future__ import annotations

import copy
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from streams import avro
from streams.kafka.clients import producer
from streams.privacy.core import suppression_key
from streams.settings import Settings
from streams.sink import clickhouse
from streams.sink import erasure as er
from streams.sink import query as ch
from streams.sink.erasure import PERSON_TABLES, Erased, Erasure
from streams.sink.rows import TABLES
from streams.sink.service import Batch, FailingWriter, Sink
from streams.topics import (
    ENRICHED,
    IDENTITY_ASSIGNMENTS,
    IDENTITY_CHANGES,
    MEMBER_FEATURES,
    PRIVACY_ERASURES,
    SESSIONS,
    TRIGGERS,
)
from tests.conftest import Stack
from tests.test_schemas import latest_examples

A, B = "p-aaaaaaaaaaaaaaaaaaaa", "p-bbbbbbbbbbbbbbbbbbbb"


def erase_record(request_id: str, persons: list[str], kind: str = "erase",
                 hashes: tuple[str, ...] = ("h1", "h2")) -> dict[str, Any]:
    return {"request_id": request_id, "kind": kind, "requested_at_ms": 1_794_000_000_000,
            "identifier_hashes": list(hashes), "persons": persons, "reason": "ticket 42"}


# --- the pure part ---------------------------------------------------------------------------


def test_only_erase_records_are_the_sinks() -> None:
    assert er.erasure_of(erase_record("r1", [A], kind="suppress")) is None
    e = er.erasure_of(erase_record("r1", [A, B, A, ""]))
    assert e == Erasure("r1", 1_794_000_000_000, ("h1", "h2"), (A, B), "ticket 42")


def test_the_conditions_and_statements() -> None:
    assert er.where("sessions", [B, A, A]) == f"person_id IN ('{A}', '{B}')"
    assert er.where("identity_changes", [A]) == (
        f"from_person IN ('{A}') OR into_person IN ('{A}') OR hasAny(into_persons, ['{A}'])")
    assert er.where("triggers", ["x' OR 1=1 --"]) == r"person_id IN ('x\' OR 1=1 --')"
    with pytest.raises(ValueError):
        er.where("kpi_events_hourly", [A])
    with pytest.raises(ValueError):
        er.where("sessions", [])
    cond = er.where("sessions", [A])
    assert er.count_statement("sessions", cond) == f"SELECT count() FROM sessions WHERE {cond}"
    assert er.delete_statement("sessions", cond) == (
        f"ALTER TABLE sessions DELETE WHERE {cond} SETTINGS mutations_sync = 2")
    assert er.delete_statement("sessions", cond, "touchline") == (
        f"ALTER TABLE sessions_local ON CLUSTER touchline DELETE WHERE {cond} SETTINGS mutations_sync = 2")


def _created_tables() -> dict[str, str]:
    """table -> its column list, of every CREATE TABLE in the migrations."""
    out = {}
    for _, _, sql in clickhouse.migrations():
        for stmt in clickhouse.statements(sql):
            m = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\) ENGINE = (\w+)", stmt, re.S)
            if m:
                out[m.group(1)] = m.group(2) + " " + m.group(3)
    return out


def test_every_table_with_per_person_rows_is_erased_and_the_aggregates_stay() -> None:
    created = _created_tables()
    with_person = {t for t, cols in created.items() if re.search(r"\b(person_id|from_person)\s+String", cols)}
    assert with_person == set(PERSON_TABLES)
    assert {"kpi_events_hourly", "kpi_events_minute", "kpi_sessions_hourly", "kpi_dead_letters_hourly",
            "dead_letters"}.isdisjoint(PERSON_TABLES)
    assert "ReplacingMergeTree" in created[er.AUDIT_TABLE]
    for t in PERSON_TABLES:
        cols = created[t].split(") ENGINE")[0]
        for c in re.findall(r"^\s*(\w+)\s", cols, re.M):
            if c in er.PERSON_COLUMNS + er.PERSON_ARRAY_COLUMNS:
                assert c in er.where(t, [A]), (t, c)


def test_the_audit_table_migration_is_the_next_one_and_has_a_cluster_form() -> None:
    versions = [v for v, _, _ in clickhouse.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    [(version, name, stmts)] = [p for p in clickhouse.plan("touchline") if "privacy_erasures" in p[1]]
    assert (version, name) == (13, "0013_privacy_erasures.sql")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/privacy_erasures_local', " \
           "'{replica}', version)" in stmts[0]
    assert stmts[1].endswith("Distributed(touchline, currentDatabase(), privacy_erasures_local, cityHash64(request_id))")


def test_rows_of_erased_persons_are_dropped_from_every_table() -> None:
    erased = Erased()
    rows = [["e1", A], ["e2", B]]
    assert erased.keep(["event_id", "person_id"], rows) is rows  # nothing erased yet
    erased.add(Erasure("r1", 1, (), (A,), ""))
    assert erased.keep(["event_id", "person_id"], rows) == [["e2", B]]
    cols = ["change_id", "from_person", "into_person", "into_persons"]
    changes: list[list[Any]] = [["c1", A, "p-x", ["p-x"]], ["c2", "p-x", A, [A]], ["c3", "p-x", "p-y", ["p-y", A]],
               ["c4", "p-x", B, [B]], ["c5", "p-x", B, None]]
    assert [r[0] for r in erased.keep(cols, changes)] == ["c4", "c5"]
    assignments = [["anonymous_id:1", A, None, "r", 1, 0], ["anonymous_id:2", "", None, "", 2, 1]]
    assert erased.keep(TABLES[IDENTITY_ASSIGNMENTS].columns, assignments) == [assignments[1]]  # a tombstone
    refs = [["S1", "store", "Shanghai"]]
    assert erased.keep(["store_id", "name", "city"], refs) is refs


def test_identifier_rows_are_matched_by_their_salted_hash() -> None:
    erased = Erased(identifier_key=lambda i: f"h({i})")
    erased.add(Erasure("r1", 1, ("h(anonymous_id:a)",), (A,), ""))
    cols = TABLES[IDENTITY_ASSIGNMENTS].columns
    rows = [["anonymous_id:a", "", None, "", 5, 1], ["anonymous_id:b", "", None, "", 6, 1], ["anonymous_id:c", B, None, "r", 7, 0]]
    assert [r[0] for r in erased.keep(cols, rows)] == ["anonymous_id:b", "anonymous_id:c"]
    assert erased.erased_identifiers(["anonymous_id:a", "anonymous_id:b"], ["h(anonymous_id:a)"]) == ["anonymous_id:a"]
    assert Erased().erased_identifiers(["anonymous_id:a"], ["h(anonymous_id:a)"]) == []  # no salt: none
    assert er.where("identity_assignments", [A], ["anonymous_id:a"]) == (
        f"person_id IN ('{A}') OR identifier IN ('anonymous_id:a')")
    assert er.where("sessions", [A], ["anonymous_id:a"]) == f"person_id IN ('{A}')"


def test_the_audit_row_keeps_the_handling_that_deleted_most() -> None:
    e = Erasure("r1", 1_794_000_000_000, ("h1",), (A,), "why")
    row = dict(zip(er.AUDIT_COLUMNS, er.audit_row(e, 1_794_000_001_000, {"sessions": 2, "triggers": 1}), strict=True))
    assert row["rows_deleted"] == {"sessions": 2, "triggers": 1} and row["version"] == 3
    assert row["persons"] == [A] and row["identifier_hashes"] == ["h1"] and row["reason"] == "why"
    assert row["erased_at"].timestamp() == 1_794_000_001


# --- the sink's writer step, with a recording writer -----------------------------------------


class Recording:
    def __init__(self, audited: list[tuple[str, list[str], list[str]]] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.audited = audited or []
        self.stored: dict[str, int] = {}
        self.tombstones: list[str] = []

    def insert(self, table: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.calls.append(("insert", table, [list(r) for r in rows]))

    def stored_keys(self, table: Any, keys: list[str], time_range: Any) -> set[Any]:
        return set()

    def count(self, table: str, where: str) -> int:
        self.calls.append(("count", table, where))
        return self.stored.get(table, 0)

    def delete(self, table: str, where: str) -> None:
        self.calls.append(("delete", table, where))

    def erasures(self) -> list[tuple[str, list[str], list[str]]]:
        self.calls.append(("erasures",))
        return self.audited

    def column(self, sql: str) -> list[Any]:
        self.calls.append(("column", sql))
        return self.tombstones


def _batch(*person_rows: tuple[str, str], erasures: list[Erasure] | None = None) -> Batch:
    batch = Batch()
    sessions = TABLES[SESSIONS]
    for session_id, person in person_rows:
        row: list[Any] = [None] * len(sessions.columns)
        row[0], row[1], row[3] = session_id, person, datetime(2026, 11, 1, tzinfo=UTC)
        batch.rows[sessions].append(row)
    batch.erasures = erasures or []
    return batch


def test_the_writer_drops_deletes_then_audits_and_handles_a_request_once() -> None:
    w = Recording()
    w.stored = {"sessions": 2, "kpi_persons": 1}
    sink = Sink(Settings(), w, retry_sleep=lambda _: None)
    e = Erasure("r1", 1, (), (A,), "")
    sink._write(_batch(("s1", A), ("s2", B), erasures=[e]))
    assert w.calls[0] == ("erasures",)
    assert w.calls[1][:2] == ("insert", "sessions") and [r[0] for r in w.calls[1][2]] == ["s2"]
    assert [c[:2] for c in w.calls[2:]] == [
        ("count", "touchpoints_enriched"), ("count", "sessions"), ("delete", "sessions"), ("count", "member_snapshots"),
        ("count", "member_segments"), ("count", "kpi_persons"), ("delete", "kpi_persons"), ("count", "triggers"),
        ("count", "identity_assignments"), ("count", "identity_changes"), ("insert", "privacy_erasures")]
    audit = dict(zip(er.AUDIT_COLUMNS, w.calls[-1][2][0], strict=True))
    assert audit["rows_deleted"] == {t: w.stored.get(t, 0) for t in PERSON_TABLES}

    w.calls.clear()  # later rows of A are dropped; the same request again does nothing
    sink._write(_batch(("s3", A), ("s4", B), erasures=[e]))
    assert [(c[:2], [r[:2] for r in c[2]]) for c in w.calls] == [(("insert", "sessions"), [["s4", B]])]

    restarted = Recording(audited=[("r1", [A], [])])  # a new process reads the audit table back
    sink = Sink(Settings(), restarted, retry_sleep=lambda _: None)
    sink._write(_batch(("s5", A), ("s6", B), erasures=[e]))
    assert [c[:2] for c in restarted.calls] == [("erasures",), ("insert", "sessions")]
    assert [r[0] for r in restarted.calls[1][2]] == ["s6"]


def test_a_failed_delete_is_retried_and_the_audit_row_written_once() -> None:
    w = Recording()
    w.stored = {"triggers": 1}
    sleeps: list[float] = []
    sink = Sink(Settings(), FailingWriter(w, 1), retry_sleep=sleeps.append)  # the first delete fails (no rows)
    sink._write(_batch(erasures=[Erasure("r1", 1, (), (A,), "")]))
    assert len(sleeps) == 1
    assert [c[1] for c in w.calls if c[0] == "delete"] == ["triggers"]
    assert [c[1] for c in w.calls if c[0] == "insert"] == ["privacy_erasures"]


def test_an_erasure_without_persons_is_audited_with_nothing_deleted() -> None:
    w = Recording()
    sink = Sink(Settings(), w, retry_sleep=lambda _: None)
    sink._write(_batch(erasures=[Erasure("r1", 1, ("h",), (), "")]))
    assert [c[0] for c in w.calls] == ["erasures", "insert"]
    assert dict(zip(er.AUDIT_COLUMNS, w.calls[-1][2][0], strict=True))["rows_deleted"] == {}


# --- end to end: the real sink process on chDB -------------------------------------------------


def _example(schema: str, **fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(latest_examples(schema)[0]), **fields}


def _enriched(event_id: str, person: str) -> dict[str, Any]:
    r = _example(avro.ENRICHED, person_id=person)
    r["touchpoint"] = {**r["touchpoint"], "event_id": event_id}
    return r


def _records(tag: str, person: str) -> list[tuple[Any, str, dict[str, Any]]]:
    """One row of every person-keyed sink table for ``person`` (plus identity changes naming them)."""
    return [
        (ENRICHED, avro.ENRICHED, _enriched(f"ev-{tag}-1", person)),
        (ENRICHED, avro.ENRICHED, _enriched(f"ev-{tag}-2", person)),
        (SESSIONS, avro.SESSION, _example(avro.SESSION, session_id=f"s-{tag}", person_id=person)),
        (TRIGGERS, avro.TRIGGER, _example(avro.TRIGGER, trigger_id=f"t-{tag}", person_id=person)),
        (IDENTITY_ASSIGNMENTS, avro.IDENTITY_ASSIGNMENT,
         _example(avro.IDENTITY_ASSIGNMENT, identifier=f"anonymous_id:{tag}-1", person_id=person)),
        (IDENTITY_ASSIGNMENTS, avro.IDENTITY_ASSIGNMENT,
         _example(avro.IDENTITY_ASSIGNMENT, identifier=f"anonymous_id:{tag}-2", person_id=person)),
        (IDENTITY_CHANGES, avro.IDENTITY_CHANGE, _example(avro.IDENTITY_CHANGE, change_id=f"c-{tag}-into",
                                                           from_person="p-x", into_person=person, into_persons=[person])),
        (IDENTITY_CHANGES, avro.IDENTITY_CHANGE, _example(avro.IDENTITY_CHANGE, change_id=f"c-{tag}-among",
                                                           from_person="p-y", into_person="p-z",
                                                           into_persons=["p-z", person])),
        (MEMBER_FEATURES, avro.MEMBER_FEATURES, _example(avro.MEMBER_FEATURES, person_id=person)),
    ]


def _produce(stack: Stack, records: list[tuple[Any, str, dict[str, Any]]]) -> None:
    p = producer(stack.settings)
    for spec, schema, record in records:
        key = record.get("person_id") or record.get("request_id") or record.get("change_id")
        p.produce(spec.name(stack.settings), key=str(key).encode(), value=avro.encode(schema, record))
    assert p.flush(10) == 0


def _tombstone(stack: Stack, identifier: str) -> None:
    """An identity assignment deleted (the workers' erasure tombstones an erased identifier)."""
    p = producer(stack.settings)
    p.produce(IDENTITY_ASSIGNMENTS.name(stack.settings), key=identifier.encode(), value=None)
    assert p.flush(10) == 0


def _rows(stack: Stack, sql: str) -> list[list[Any]]:
    return ch.rows(stack.settings, sql, open_directly=False)


def _counts(stack: Stack, person: str) -> dict[str, int]:
    sql = "SELECT " + ", ".join(f"(SELECT count() FROM {t} WHERE {er.where(t, [person])})" for t in PERSON_TABLES)
    return dict(zip(PERSON_TABLES, _rows(stack, sql)[0], strict=True))


def _until(stack: Stack, what: str, done: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        assert not stack.supervisor.check_alive(), f"died; logs in {stack.supervisor.log_dir}"
        try:
            got = done()
        except ch.SinkNotRunning:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {got}); logs in {stack.supervisor.log_dir}")


def _rows_of(stack: Stack, person: str) -> dict[str, list[list[Any]]]:
    """Every row of ``person``, each table in its key order (kpi_persons: its key only, its states do
    not compare)."""
    return {t: _rows(stack, f"SELECT {'person_id' if t == 'kpi_persons' else '*'} FROM {t} FINAL "
                            f"WHERE {er.where(t, [person])} ORDER BY 1") for t in PERSON_TABLES}


def _enriched_of(stack: Stack, person: str) -> set[str]:
    return {r[0] for r in _rows(stack, f"SELECT event_id FROM touchpoints_enriched WHERE person_id = '{person}'")}


@pytest.mark.e2e
def test_an_erased_person_leaves_clickhouse_and_stays_out(stack_factory) -> None:
    stack = stack_factory(workers=0, identifier_salt="erasure-test-salt")
    _produce(stack, _records("a", A) + _records("b", B))
    _tombstone(stack, "anonymous_id:a-3")  # an identifier of A whose row is gone already: names no person
    per_person = {"touchpoints_enriched": 2, "sessions": 1, "member_snapshots": 1, "member_segments": 1,
                  "triggers": 1, "identity_assignments": 2, "identity_changes": 2}
    tombstones = "SELECT identifier FROM identity_assignments WHERE is_deleted = 1"
    _until(stack, "the rows of A and B", lambda: all(
        _counts(stack, p)[t] >= n for p in (A, B) for t, n in per_person.items()) and _counts(stack, B)["kpi_persons"]
        and _rows(stack, tombstones))
    before_a, before_b = _counts(stack, A), _counts(stack, B)
    assert {t: before_a[t] for t in per_person} == per_person and before_a["kpi_persons"] >= 1
    b_rows = _rows_of(stack, B)

    # A suppression is ingest's (ignored here); then the erasure of A
    salt = b"erasure-test-salt"
    hashes = tuple(suppression_key(f"anonymous_id:a-{i}", salt) for i in (1, 2, 3))
    erase = erase_record("req-1", [A], hashes=hashes)
    _produce(stack, [(PRIVACY_ERASURES, avro.ERASURE, erase_record("req-0", [A], kind="suppress")),
                     (PRIVACY_ERASURES, avro.ERASURE, erase)])
    audit_sql = "SELECT request_id, persons, rows_deleted, reason, identifier_hashes FROM privacy_erasures"
    [audit] = _until(stack, "the audit row", lambda: _rows(stack, audit_sql))
    assert audit[:2] == ["req-1", [A]] and audit[3:] == ["ticket 42", list(hashes)]
    deleted = audit[2]
    assert {t: deleted[t] for t in per_person} == {**per_person, "identity_assignments": 3}  # and the tombstone
    assert 1 <= deleted["kpi_persons"] <= before_a["kpi_persons"]  # AggregatingMergeTree parts may merge meanwhile
    assert _counts(stack, A) == dict.fromkeys(PERSON_TABLES, 0)  # right after the audit row: no row of A
    assert _rows(stack, tombstones) == []
    assert _counts(stack, B) == before_b
    assert _rows_of(stack, B) == b_rows

    # A's rows still in flight after the erasure never land; B's do
    _tombstone(stack, "anonymous_id:a-1")
    _produce(stack, _records("a2", A) + [(ENRICHED, avro.ENRICHED, _enriched("ev-b-3", B))])
    _until(stack, "B's third event", lambda: "ev-b-3" in _enriched_of(stack, B))
    assert _counts(stack, A) == dict.fromkeys(PERSON_TABLES, 0)
    assert _rows(stack, tombstones) == []

    # a restarted sink reads the erased persons back from the audit table
    stack.stop_sink()
    stack.supervisor.start_sink()
    _tombstone(stack, "anonymous_id:a-2")
    _produce(stack, [(ENRICHED, avro.ENRICHED, _enriched("ev-a-9", A)),
                     (MEMBER_FEATURES, avro.MEMBER_FEATURES, _example(avro.MEMBER_FEATURES, person_id=A)),
                     (ENRICHED, avro.ENRICHED, _enriched("ev-b-4", B))])
    _until(stack, "B's fourth event", lambda: "ev-b-4" in _enriched_of(stack, B))
    assert _counts(stack, A) == dict.fromkeys(PERSON_TABLES, 0)
    assert _rows(stack, tombstones) == []

    # the same erasure again: nothing more deleted, still one audit row with the first counts
    _produce(stack, [(PRIVACY_ERASURES, avro.ERASURE, erase), (ENRICHED, avro.ENRICHED, _enriched("ev-b-5", B))])
    _until(stack, "B's fifth event", lambda: "ev-b-5" in _enriched_of(stack, B))
    _until(stack, "the erasure topic committed", lambda: _committed(stack) == 3)
    assert _rows(stack, "SELECT count() FROM privacy_erasures") == [[1]]
    assert _rows(stack, "SELECT rows_deleted FROM privacy_erasures FINAL") == [[deleted]]
    assert _counts(stack, A) == dict.fromkeys(PERSON_TABLES, 0)
    assert _counts(stack, B)["touchpoints_enriched"] == 5


def _committed(stack: Stack) -> int:
    """The sink's committed offset on privacy.erasures (one partition)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": stack.settings.kafka_bootstrap,
                         "group.id": stack.settings.group("sink"), "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(PRIVACY_ERASURES.name(stack.settings), 0)], timeout=10)
    finally:
        consumer.close()
    return int(tp.offset)
