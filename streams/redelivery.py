"""Recognising a redelivered person batch in the stages after identity (pure).

Identity turns each ``internal.ingested`` record into person batches
(``internal.person-ops``, forwarded as ``internal.featured``), stamped with the
identity partition and the ingested offset they were made from. A person's
ops from one identity partition therefore arrive in the order of those
offsets, and a crash anywhere upstream only ever delivers some of them again
(identity replays the same decisions, streams/identity/dedup.py). So a
person's state remembers, per identity partition, the last source offset it
applied, and a batch at or below it is skipped whole for that person: exact
whatever the number of events, and a few integers per person instead of a
list of recent event ids.

Features-internal moves (source partition -1) are not stamped; what they carry
is applied once by its own means (``merged_from``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEY = "src"  # in a person's state: {identity partition: last ingested offset applied}


def claim(state: dict[str, Any], batch: Mapping[str, Any]) -> bool:
    """True (and remember it) if this batch is new for the person whose state this is;
    False if the state has applied it already. Call once per person and batch."""
    source, offset = batch["source_partition"], batch.get("source_offset", -1)
    if source < 0 or offset < 0:
        return True
    applied = state.setdefault(KEY, {})
    if offset <= applied.get(str(source), -1):
        return False
    applied[str(source)] = offset
    return True


class Claims:
    """One batch's claims, person by person: the first ``new(person, state)`` claims the batch
    for that person, the rest of the batch's ops for them get the same answer."""

    def __init__(self, batch: Mapping[str, Any]) -> None:
        self.batch = batch
        self._new: dict[str, bool] = {}

    def new(self, person: str, state: dict[str, Any]) -> bool:
        fresh = self._new.get(person)
        if fresh is None:
            fresh = self._new[person] = claim(state, self.batch)
        return fresh
