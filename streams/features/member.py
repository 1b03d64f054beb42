"""One person's entry in the features stage's ``member-features`` table, and what it publishes. Pure.

An entry wraps the profile core (streams/features/profile.py) with what the stage
itself needs to be replay-safe and quiet:

- ``profile``: the person's profile state;
- ``src``: the redelivery marks (streams/redelivery.py): a person batch at or
  below them is skipped whole for this person;
- ``absorbed``: the persons already merged into this one, the latest
  ``redelivery.ABSORBED_KEPT``. An absorb op names the merged-away person and carries its
  raw entry; one naming a person already absorbed changes nothing, so an absorb
  delivered twice (a crash between handing a state over and forgetting it)
  does not count that person's events twice. The profile core itself does not
  know what it merged;
- ``published`` and ``at``: a hash of the last snapshot published, and the
  stream time the last snapshot was taken at;
- ``partition``: the person-ops partition, for the due index;
- ``model``: the purchase-model parameters of the last snapshot (``model_mark``).

Publishing rule (debounce). A person's snapshot is taken once per batch that
touches them, after all its ops, and again when stream time reaches the
person's next lifecycle boundary (first seen + ``new_days``, last seen +
``at_risk_days``, last seen + ``lapsed_days``), always at the batch's stream
time. It is published only when it differs from the last published one in
anything but ``as_of_ms``: a batch of events that changes no published value,
a redelivered batch and a repeated absorb publish nothing. Between those
moments the published windows, days-since figures and purchase outlook are as of
``as_of_ms``; a reader wanting them at another time recomputes from the windows' ends.
P(alive) and the expected purchases are for the BG/NBD parameters the worker has loaded
when the snapshot is taken (streams/features/purchase_model.py); ``model`` marks which
(``model_mark``). After a refit, every person with an order whose last snapshot was taken
with other parameters gets a snapshot again without waiting for an event of theirs: the
stage sweeps each partition for them (``RefitSweep``), ``SWEEP_PER_BATCH`` persons per
batch, so a large partition is re-published over several batches, not in one pause. The
marks are in the entries, so a worker that restarts mid-sweep finds the persons still left.
The same holds for ``city_store``: it is chosen from the store reference records the
worker holds when the snapshot is taken (profile.city_store), so a store that opens
or closes shows in a person's record only at their next snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from streams import redelivery
from streams.features import bgnbd, profile
from streams.features.config import DEFAULTS, FeatureSettings
from streams.features.windows import DAY_MS

Entry = dict[str, Any]
TOUCH_FIELDS = ("campaign", "source", "medium", "search_keyword", "kol_post_id", "referrer_id", "referrer_url",
                "partner", "store_id")


def empty(person_id: str, partition: int) -> Entry:
    return {"profile": profile.empty(person_id), "partition": partition, "absorbed": [], "published": None,
            "at": None}


def absorb(entry: Entry, person_id: str, gone: Mapping[str, Any], cfg: FeatureSettings = DEFAULTS) -> bool:
    """Fold the merged-away ``person_id``'s entry ``gone`` into ``entry``; False if it was folded in already."""
    if not redelivery.absorb_once(entry, entry["profile"]["person_id"], person_id, gone):
        return False
    entry["profile"] = profile.merge(entry["profile"], gone["profile"], cfg)
    return True


def handed_over(entry: Mapping[str, Any]) -> str:
    """What an absorb op carries of a merged-away person: its profile and whom it had absorbed."""
    return json.dumps({"profile": entry["profile"], "absorbed": entry["absorbed"]})


def _touch(view: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {"at_ms": view["at_ms"], "entry": view["entry"], "channel": view["channel"],
            **{k: view.get(k) for k in TOUCH_FIELDS}}


def record(entry: Mapping[str, Any], now_ms: int, cfg: FeatureSettings = DEFAULTS,
           model: bgnbd.Params | None = None, stores: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
    """The MemberFeatures record of the person at stream time ``now_ms``, the purchase outlook for
    the BG/NBD parameters ``model`` (None: none loaded) and the city store among the store
    reference records ``stores``; None before any event."""
    state = entry["profile"]
    if state["last_ms"] is None:
        return None
    snap = profile.snapshot(state, now_ms, cfg, model, stores)
    snap["as_of_ms"] = max(now_ms, state["last_ms"])
    snap["first_touch"], snap["last_touch"] = _touch(snap["first_touch"]), _touch(snap["last_touch"])
    return snap


def digest(rec: Mapping[str, Any]) -> str:
    """Hash of a record's published values, ``as_of_ms`` aside (it moves with every batch)."""
    body = json.dumps({k: v for k, v in rec.items() if k != "as_of_ms"}, sort_keys=True, default=str)
    return hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


def refresh(entry: Entry, now_ms: int, cfg: FeatureSettings = DEFAULTS,
            model: bgnbd.Params | None = None, stores: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
    """Take the snapshot at ``now_ms`` (purchase outlook for ``model``, city store among ``stores``);
    return the record to publish, or None when no published value changed."""
    rec = record(entry, now_ms, cfg, model, stores)
    if rec is None:
        return None
    entry["at"] = rec["as_of_ms"]
    entry["model"] = model_mark(model)
    h = digest(rec)
    if h == entry["published"]:
        return None
    entry["published"] = h
    return rec


def next_due(entry: Mapping[str, Any], cfg: FeatureSettings = DEFAULTS) -> int | None:
    """Stream time of the person's next lifecycle boundary after their last snapshot, if any."""
    state, at = entry["profile"], entry.get("at")
    first, last = state["first_ms"], state["last_ms"]
    if first is None or last is None or at is None:
        return None
    boundaries = (first + cfg.new_days * DAY_MS, last + cfg.at_risk_days * DAY_MS, last + cfg.lapsed_days * DAY_MS)
    return min((b for b in boundaries if b > at), default=None)


SWEEP_PER_BATCH = 256  # persons a refit sweep adds to one batch of a partition


def model_mark(model: bgnbd.Params | None) -> str | None:
    """Which purchase-model parameters a snapshot was taken with (None: none loaded)."""
    return None if model is None else json.dumps(model.as_dict(), sort_keys=True)


def stale_outlook(entry: Mapping[str, Any] | None, mark: str | None) -> bool:
    """Whether the person's published purchase outlook is of parameters other than ``mark``:
    they have an order (without one there is no outlook to change) and their last snapshot
    was taken with other parameters."""
    if not entry:
        return False
    return entry["profile"].get("purchases") is not None and entry.get("model") != mark


class RefitSweep:
    """Per partition, the persons still to snapshot again for the loaded parameters.

    ``table`` maps person -> entry (entries carry their ``partition``). When a
    partition's batch comes with parameters other than those it was last swept for (a
    refit, or the first batch since start or reassignment), the partition's entries are
    scanned once for ``stale_outlook`` persons; then each batch takes up to ``per_batch``
    of them (``hold``). Persons snapshotted meanwhile by their own events are skipped
    when their turn comes. Call ``forget`` when a partition is revoked."""

    def __init__(self, table: Mapping[str, Any], per_batch: int = SWEEP_PER_BATCH) -> None:
        self.table = table
        self.per_batch = per_batch
        self._todo: dict[int, tuple[str | None, list[str]]] = {}  # partition -> (mark, persons left)

    def forget(self, partition: int) -> None:
        self._todo.pop(partition, None)

    def left(self, partition: int) -> int:
        """Persons the partition's sweep has not reached yet."""
        todo = self._todo.get(partition)
        return 0 if todo is None else len(todo[1])

    def hold(self, partition: int, mark: str | None, held: dict[str, Any], gone: set[str]) -> list[str]:
        """Add to ``held`` (the batch's held entries) the next persons of ``partition`` whose
        outlook is not of ``mark``, persons in ``gone`` aside; return them."""
        todo = self._todo.get(partition)
        if todo is None or todo[0] != mark:
            persons = sorted(p for p, e in self.table.items()
                             if e and e.get("partition") == partition and stale_outlook(e, mark))
            todo = self._todo[partition] = (mark, persons)
        taken: list[str] = []
        persons = todo[1]
        while persons and len(taken) < self.per_batch:
            person = persons.pop()
            if person in gone:
                continue
            current = held[person] if person in held else self.table.get(person)
            if stale_outlook(current, mark):
                held[person] = current
                taken.append(person)
        return taken
