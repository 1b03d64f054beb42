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

Moves between person partitions (a merged-away person's state handed to the
survivor; source partition -1) are not stamped: the survivor's entry lists the
persons it has absorbed (``absorb_once``), so a state handed over twice is
folded in once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEY = "src"  # in a person's state: {identity partition: last ingested offset applied}
ABSORBED_KEPT = 64  # persons merged in that a repeated hand-over is recognised for


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


def absorb_once(entry: dict[str, Any], me: str, person_id: str, gone: Mapping[str, Any]) -> bool:
    """True (and remember it in ``entry["absorbed"]``, with the persons ``gone`` had absorbed) if
    the merged-away ``person_id``'s handed-over state ``gone`` is new to the entry of person
    ``me``; False if it was folded in already (or is ``me``). The entry keeps the latest
    ``ABSORBED_KEPT``."""
    if person_id in entry["absorbed"] or person_id == me:
        return False
    kept = [p for p in (*entry["absorbed"], *gone.get("absorbed", ()), person_id) if p != me]
    entry["absorbed"] = list(dict.fromkeys(kept))[-ABSORBED_KEPT:]
    return True
