"""Profile lookup by identifier: the person, all their identifiers, their merge and split history.

``touchline profile type:value`` and ``GET /v1/profiles?identifier=type:value``
(the collector) answer from ClickHouse: ``identity_assignments`` (the identity
graph's current clustering, stored by the sink from ``identity.assignments``)
and ``identity_changes``. The identifier asked for is put in the form the
pipeline keeps (phones and emails normalised and hashed with the deployment's
salt), so a raw phone number finds its person while the answer holds only the
hashed form. Pure apart from the ``query`` function it is given.

Features. The answer carries the person's current features: the latest
``member_snapshots`` row (FINAL, not deleted) under the same person id, as the
sink stores ``members.features`` (flat columns, streams/sink/rows.py), or None
when there is none. Features are kept per person of the routing resolver (the
person ids on enriched events), the lookup's person comes from the identity
graph. For a member both are ``person_id_for("member_id:<id>")``, so the two
agree. Where they differ -- a graph cluster without a member id, or events the
routing resolver filed under an anonymous person the graph joined to a member
-- the features are those of the routing person that carries the graph
person's id, and the rest of the cluster's events are not in them (which
routing persons hold a cluster's events is not stored: enriched rows keep no
identifiers).

Referrals. ``brought_in`` lists the persons this member brought in (a referral
or KOC programme): every person whose features' ``referred_by`` (the
``referrer_id`` of their first event carrying one) is this person's member id,
with when they were first seen and their orders so far. It is read at lookup
from the same snapshots, so it follows each referred person's own merges. A
person without a member id has brought in nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.sink.query import quote
from streams.sink.rows import MEMBER_COLS
from streams.touchpoint.normalise import normalise_identifiers
from streams.touchpoint.taxonomy import ROUTE_IDENTIFIERS

Query = Callable[[str], list[list[Any]]]


class BadIdentifier(ValueError):
    """Not ``type:value`` with a known identifier type and a usable value."""


def stored_form(identifier: str, salt: bytes, default_country: str) -> str:
    """``type:value`` as the pipeline keeps it (personal values hashed)."""
    kind, sep, value = identifier.partition(":")
    if not sep or kind not in ROUTE_IDENTIFIERS:
        raise BadIdentifier(f"expected type:value with type one of {', '.join(ROUTE_IDENTIFIERS)}, got {identifier!r}")
    ids, dropped = normalise_identifiers({kind: value}, salt, default_country)
    if dropped or not ids.get(kind):
        raise BadIdentifier(f"{identifier!r} is not a usable {kind}")
    return f"{kind}:{ids[kind]}"


def lookup(query: Query, identifier: str) -> dict[str, Any] | None:
    """The profile of the person holding ``identifier`` (stored form), or None if unknown."""
    found = query(
        "SELECT person_id, member_id FROM identity_assignments FINAL "
        f"WHERE identifier = {quote(identifier)} AND is_deleted = 0")
    if not found:
        return None
    person, member = found[0]
    identifiers = [r[0] for r in query(
        "SELECT identifier FROM identity_assignments FINAL "
        f"WHERE person_id = {quote(person)} AND is_deleted = 0 ORDER BY identifier")]
    history = [
        {"change_id": r[0], "kind": r[1], "from_person": r[2], "into_persons": list(r[3]), "reason": r[4],
         "identifiers": list(r[5]), "evidence_event_ids": list(r[6]), "event_time": r[7]}
        for r in query(
            "SELECT change_id, kind, from_person, into_persons, reason, identifiers, evidence_event_ids, event_time "
            f"FROM identity_changes FINAL WHERE resolver = 'graph' AND kind IN ('merge', 'split', 'conflict') "
            f"AND (from_person = {quote(person)} OR has(into_persons, {quote(person)})) "
            "ORDER BY event_time, change_id")
    ]
    return {"identifier": identifier, "person_id": person, "member_id": member,
            "identifiers": identifiers, "history": history, "features": features(query, person),
            "brought_in": brought_in(query, member) if member else []}


FEATURE_COLUMNS = [c for c in MEMBER_COLS if c not in ("version", "is_deleted")]


def features(query: Query, person: str) -> dict[str, Any] | None:
    """The person's latest features snapshot as the sink stores it, or None."""
    found = query(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM member_snapshots FINAL "
                  f"WHERE person_id = {quote(person)} AND is_deleted = 0")
    return dict(zip(FEATURE_COLUMNS, found[0], strict=True)) if found else None


def brought_in(query: Query, member_id: str) -> list[dict[str, Any]]:
    """The persons whose first referrer was this member: person id, member id (None for a person
    without one), first seen and orders so far, earliest first."""
    return [{"person_id": r[0], "member_id": r[1], "first_seen": r[2], "orders_total": r[3]}
            for r in query("SELECT person_id, member_id, first_seen, orders_total FROM member_snapshots FINAL "
                           f"WHERE referred_by = {quote(member_id)} AND is_deleted = 0 ORDER BY first_seen, person_id")]


def lookup_for(settings: Any, identifier: str, open_directly: bool = True) -> dict[str, Any] | None:
    """``lookup`` against the deployment's ClickHouse, from ``type:value`` as a user types it."""
    from streams.deadletter.sealing import identifier_salt
    from streams.sink.query import rows

    stored = stored_form(identifier, identifier_salt(settings), settings.default_country_code)
    return lookup(lambda sql: rows(settings, sql, open_directly), stored)
