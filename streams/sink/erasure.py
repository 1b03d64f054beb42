"""Pure part of the sink's erasure: which rows belong to an erased person, and the SQL that removes them.

A ``privacy.erasures`` record of kind ``erase`` (the last step of ``touchline
erase``) reaches the sink after the workers erased the persons' state. The sink
then (streams/sink/service.py, in its writer thread, in Kafka order):

1. writes the batch it holds, without the erased persons' rows (``Erased.keep``);
   the batch before it is written already (one insert at a time);
2. counts, then deletes, every row of those persons from each table of
   ``PERSON_TABLES`` (``where``, ``delete_statement``): ``ALTER TABLE ... DELETE``
   with ``mutations_sync = 2``, which returns once the parts are rewritten on
   every replica, so the rows are physically gone (not only masked, as a
   lightweight ``DELETE FROM`` leaves them until a merge) and no query sees them;
3. records the audit row in ``privacy_erasures`` (migration 0013), last: a query
   that sees the audit row sees none of the rows.

From then on every row of an erased person is dropped before it is inserted
(``Erased``, rebuilt from ``privacy_erasures`` when the sink starts). An
identity assignment's tombstone names no person, only its identifier: it is
recognised by the identifier's salted hash (``identifier_hashes``; the sink
hashes with the installation's salt), deleted with the person's rows when
stored already, dropped when it comes later. A request
already audited is not handled again (a redelivery after a crash, or the same
record produced twice): its first audit row and counts stay. As a second guard
the audit table is a ReplacingMergeTree versioned by the total of rows deleted,
so a row with fewer deletions never replaces one with more.

The aggregate tables (kpi_events_hourly, kpi_events_minute, kpi_sessions_hourly,
kpi_dead_letters_hourly) hold counts and uniqExact states, no person: they stay.
dead_letters has no person column (sealed originals): it stays too.

No Kafka or ClickHouse here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.sink.cluster import local_name
from streams.sink.query import quote

ERASE = "erase"  # the kind the sink acts on; "suppress" is ingest's
AUDIT_TABLE = "privacy_erasures"
AUDIT_COLUMNS = ["request_id", "requested_at", "erased_at", "identifier_hashes", "persons", "reason",
                 "rows_deleted", "version"]

# Every table with per-person rows (streams/sink/migrations: a person_id column, or the identity
# graph's from/into persons), in the order they are deleted from.
PERSON_TABLES: tuple[str, ...] = (
    "touchpoints_enriched", "sessions", "member_snapshots", "member_segments", "kpi_persons", "triggers",
    "identity_assignments", "identity_changes",
)
IDENTIFIER_TABLE, IDENTIFIER_COLUMN = "identity_assignments", "identifier"  # rows keyed by an identifier
DELETED_COLUMN = "is_deleted"  # 1 on a tombstone row (streams/sink/rows.py)
# Columns naming one person, and Array(String) columns naming several, in any sink table.
PERSON_COLUMNS = ("person_id", "from_person", "into_person")
PERSON_ARRAY_COLUMNS = ("into_persons",)


@dataclass(frozen=True)
class Erasure:
    """A ``privacy.erasures`` record of kind erase."""

    request_id: str
    requested_at_ms: int
    identifier_hashes: tuple[str, ...]
    persons: tuple[str, ...]
    reason: str


def erasure_of(record: Mapping[str, Any]) -> Erasure | None:
    """The Erasure of a decoded record, or None for any other kind (suppress is ingest's)."""
    if record.get("kind") != ERASE:
        return None
    return Erasure(record["request_id"], int(record["requested_at_ms"]), tuple(record["identifier_hashes"]),
                   tuple(dict.fromkeys(p for p in record.get("persons") or () if p)), record.get("reason") or "")


def _in(persons: Iterable[str]) -> str:
    return ", ".join(quote(p) for p in sorted(set(persons)))


def where(table: str, persons: Iterable[str], identifiers: Iterable[str] = ()) -> str:
    """The condition selecting ``table``'s rows of ``persons`` (a table of PERSON_TABLES), and in
    identity_assignments the rows of ``identifiers`` too (tombstones name no person)."""
    if table not in PERSON_TABLES:
        raise ValueError(f"{table} holds no per-person rows")
    listed = _in(persons)
    if not listed:
        raise ValueError("no person to erase")
    if table == "identity_changes":
        return f"from_person IN ({listed}) OR into_person IN ({listed}) OR hasAny(into_persons, [{listed}])"
    ids = _in(identifiers) if table == IDENTIFIER_TABLE else ""
    return f"person_id IN ({listed})" + (f" OR {IDENTIFIER_COLUMN} IN ({ids})" if ids else "")


def tombstones_statement() -> str:
    """The identifiers of identity_assignments' tombstones, to be hashed and matched against a request's."""
    return f"SELECT DISTINCT {IDENTIFIER_COLUMN} FROM {IDENTIFIER_TABLE} WHERE {DELETED_COLUMN} = 1"


def count_statement(table: str, condition: str) -> str:
    """Rows the delete will remove: every stored row, versions not merged yet included (no FINAL).
    On a cluster the plain name is the Distributed table: every shard is counted."""
    return f"SELECT count() FROM {table} WHERE {condition}"


def delete_statement(table: str, condition: str, cluster: str = "") -> str:
    """A synchronous delete: ``mutations_sync = 2`` waits until every replica has rewritten its parts.
    On a cluster it runs on the local tables of every node (a Distributed table takes no mutation)."""
    target = f"{local_name(table)} ON CLUSTER {cluster}" if cluster else table
    return f"ALTER TABLE {target} DELETE WHERE {condition} SETTINGS mutations_sync = 2"


def audit_row(erasure: Erasure, erased_at_ms: int, rows_deleted: Mapping[str, int]) -> list[Any]:
    """The privacy_erasures row (AUDIT_COLUMNS): version is the total of rows deleted, so the
    handling that deleted most is the one kept."""
    counts = {t: int(n) for t, n in rows_deleted.items()}
    return [erasure.request_id, _ts(erasure.requested_at_ms), _ts(erased_at_ms), list(erasure.identifier_hashes),
            list(erasure.persons), erasure.reason, counts, sum(counts.values())]


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Erased:
    """The erased persons and identifiers (salted hashes), and the requests audited already, as the
    sink holds them. ``identifier_key`` hashes a stored identifier as ``identifier_hashes`` are
    (None: no salt yet, so no identifier was erased here)."""

    def __init__(self, identifier_key: Callable[[str], str] | None = None) -> None:
        self.persons: set[str] = set()
        self.hashes: set[str] = set()
        self.requests: set[str] = set()
        self.identifier_key = identifier_key

    def add(self, erasure: Erasure) -> None:
        self.persons.update(erasure.persons)
        self.hashes.update(erasure.identifier_hashes)

    def load(self, audited: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> None:
        """(request id, persons, identifier hashes) of every audit row: what a starting sink rebuilds from."""
        for request_id, persons, hashes in audited:
            self.requests.add(request_id)
            self.persons.update(persons)
            self.hashes.update(hashes)

    def erased_identifiers(self, identifiers: Iterable[str], hashes: Iterable[str]) -> list[str]:
        """Those of ``identifiers`` whose hash is among ``hashes``."""
        wanted = set(hashes)
        key = self.identifier_key
        if key is None or not wanted:
            return []
        return sorted(i for i in identifiers if key(i) in wanted)

    def keep(self, columns: list[str], rows: list[list[Any]]) -> list[list[Any]]:
        """``rows`` (of a table with ``columns``) without those of an erased person or identifier
        (tombstones name no person: they are matched by the identifier's salted hash)."""
        if not self.persons:
            return rows
        single = [i for i, c in enumerate(columns) if c in PERSON_COLUMNS]
        many = [i for i, c in enumerate(columns) if c in PERSON_ARRAY_COLUMNS]
        if not single and not many:
            return rows
        erased = self.persons
        kept = [row for row in rows
                if not any(row[i] in erased for i in single)
                and not any(p in erased for i in many for p in row[i] or ())]
        if IDENTIFIER_COLUMN in columns and self.hashes and self.identifier_key is not None:
            k, key, hashes = columns.index(IDENTIFIER_COLUMN), self.identifier_key, self.hashes
            kept = [row for row in kept if key(row[k]) not in hashes]
        return kept
