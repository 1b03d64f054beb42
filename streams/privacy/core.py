"""Pure core of erasure: the suppression list and how a request is split across partitions.

An erasure request names one identifier (``type:value``). ``touchline erase``
(streams/privacy/erase.py) finds every identifier of that person and every
person id they ever stood for, then:

- **suppresses** the identifiers: ``privacy.erasures`` records of kind
  ``suppress`` carry each identifier's ``suppression_key`` (a salted hash, so
  the list itself holds no identifier), and ingest drops every event that
  carries a suppressed identifier (outcome ``suppressed``), replays of old raw
  events included;
- hands each partition the persons and identifiers its tables hold
  (``work_by_partition``), on ``internal.erasure``: the workers delete them
  (streams/privacy/agent.py);
- records kind ``erase``: the sink deletes the persons' ClickHouse rows and
  writes the audit row.

No Kafka, Faust or ClickHouse here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache, partial
from typing import Any

from streams.identity.links import person_id_for
from streams.topics import partition_for
from streams.touchpoint.taxonomy import is_junk


def suppression_key(identifier: str, salt: bytes) -> str:
    """The suppression list's form of ``type:value`` as stored (personal values already hashed)."""
    return hashlib.blake2b(identifier.encode(), key=salt[:64], digest_size=16, person=b"tl-suppress").hexdigest()


def persons_of(identifiers: Iterable[str]) -> list[str]:
    """Every person id the identifiers can have stood for: both resolvers derive a person's id
    from one of its identifiers (``person_id_for``), so an erased person's ids are among these."""
    return sorted({person_id_for(i) for i in identifiers})


def work_by_partition(request_id: str, persons: Iterable[str], identifiers: Iterable[str],
                      partitions: int) -> dict[int, dict[str, Any]]:
    """The ErasureWork record of each partition holding some of the request's keys: person-keyed
    tables hold a person on ``partition_for(person)``, identifier-keyed ones (route links, the
    identity graph) an identifier on ``partition_for(identifier)``. ``erased_identifiers`` and
    ``erased_persons`` are the whole request's lists (the identity graph removes the identifiers'
    evidence together; records naming a person can sit on any partition that saw their events)."""
    ids, everyone = sorted(set(identifiers)), sorted(set(persons))
    out: dict[int, dict[str, Any]] = {}

    def work(p: int) -> dict[str, Any]:
        return out.setdefault(p, {"request_id": request_id, "persons": [], "identifiers": [],
                                  "erased_identifiers": ids, "erased_persons": everyone})

    for person in everyone:
        work(partition_for(person, partitions))["persons"].append(person)
    for ident in ids:
        work(partition_for(ident, partitions))["identifiers"].append(ident)
    return out


class Suppressions:
    """The suppression list as ingest holds it: keys from ``privacy.erasures`` records."""

    def __init__(self, salt: bytes) -> None:
        self.keys: set[str] = set()
        # memoised: once the list is not empty, every identifier of every event is looked up
        self._key = lru_cache(maxsize=1 << 16)(partial(suppression_key, salt=salt))

    def add(self, record: Mapping[str, Any]) -> None:
        """An Erasure record (either kind): its identifiers are suppressed from now on."""
        self.keys.update(record["identifier_hashes"])

    def blocks(self, touchpoint: Mapping[str, Any]) -> bool:
        """Whether the (accepted, normalised) touchpoint carries a suppressed identifier."""
        if not self.keys:
            return False
        for kind, value in touchpoint["identifiers"].items():
            if isinstance(value, str) and value and not is_junk(value) \
                    and self._key(f"{kind}:{value}") in self.keys:
                return True
        return False
