"""Pure core of the skeleton identity resolver.

The simplest correct rule, kept deliberately small (issue 6 replaces it with
the full identity graph):

- an event carrying a member_id belongs to that member's person;
- an ``identify``/``login``/``signed_up`` event carrying a route key (cookie,
  device...) and a member_id links that route key to the member, once: the
  first link wins, later conflicting logins do not re-link;
- any other event belongs to the linked member if its route key is linked,
  otherwise to the person of its route key.

When a route key that already had its own person gets linked, that person is
merged into the member's person, and the merge is reported.

Person ids are deterministic (a hash of the identifier that founds the
person), so every worker and every replay derives the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from streams.touchpoint.taxonomy import IDENTIFY_TYPES, is_junk


def final_person(merged_into: Mapping[str, str], person: str) -> str:
    """The person ``person`` ends up as, following merges (from -> into) through chains."""
    seen = set()
    while person in merged_into and person not in seen:
        seen.add(person)
        person = merged_into[person]
    return person


def person_id_for(identifier: str) -> str:
    return "p-" + hashlib.blake2b(identifier.encode(), digest_size=10).hexdigest()


@dataclass(frozen=True)
class Merge:
    from_person: str
    into_person: str
    route_key: str
    member_id: str
    event_id: str
    event_time_ms: int


@dataclass(frozen=True)
class Resolution:
    person_id: str
    member_id: str | None
    merge: Merge | None = None


# What the resolver stores per route key: {"m": member_id or None}. A key is
# present once the route key has been seen on an anonymous event (or linked),
# so a later link knows whether there is an anonymous person to merge. A
# member's event carrying the route key does not create it: that event belongs
# to the member, so the route key's own person still has nothing to merge.
LinkTable = MutableMapping[str, dict[str, Any]]


def resolve(event: dict[str, Any], route_key: str, links: LinkTable) -> Resolution:
    ids = event["identifiers"]
    member = ids.get("member_id")
    member = None if is_junk(member) else member
    known = links.get(route_key)
    if member is not None:
        merge = None
        if not route_key.startswith("member_id:") and event["type"] in IDENTIFY_TYPES:
            if known is None:
                links[route_key] = {"m": member}
            elif known.get("m") is None:
                links[route_key] = {"m": member}
                merge = Merge(
                    person_id_for(route_key), person_id_for(f"member_id:{member}"), route_key,
                    member, event["event_id"], event["event_time_ms"],
                )
        return Resolution(person_id_for(f"member_id:{member}"), member, merge)
    if known is None:
        links[route_key] = {"m": None}
        return Resolution(person_id_for(route_key), None)
    linked = known.get("m")
    if linked is not None:
        return Resolution(person_id_for(f"member_id:{linked}"), linked)
    return Resolution(person_id_for(route_key), None)
