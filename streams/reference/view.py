"""Lookups over the reference tables: ``product(id)``, ``store(id)``, ``stores_in(city)``,
``campaign(id)``, ``campaigns_on(day)``, ``spend(day, channel, campaign)``. Pure.

A ``ReferenceData`` reads four mappings of topic key (bytes) -> Confluent-framed
Avro value (bytes), one per kind, exactly as they sit on the compacted topics.
Whoever keeps those mappings current (``tables.ReferenceReader`` in a worker, a
plain dict in a test) plugs them in here. Values are decoded on first read and
the decoded record is cached until the bytes under that key change.

Returned records are the cached dicts, shared between callers: read them, do
not mutate them (copy first).

Scans (``stores_in``, ``campaigns_on``) walk the whole table; that is meant
for small reference tables such as stores and campaigns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from streams import avro
from streams.reference.rows import CAMPAIGNS, KINDS, PRODUCTS, SPEND, STORES, Kind, spend_key

CHINA = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991

Record = dict[str, Any]


def day_of(t_ms: int, tz: dt.tzinfo = CHINA) -> str:
    """The local calendar day (YYYY-MM-DD) of an event time, for ``campaigns_on`` and ``spend``."""
    return dt.datetime.fromtimestamp(t_ms / 1000, tz).date().isoformat()


def _day(day: str | dt.date) -> str:
    return day.isoformat() if isinstance(day, dt.date) else dt.date.fromisoformat(day).isoformat()


R = TypeVar("R", bound=Mapping[str, Any])


def stores_in(stores: Iterable[R], city: str, open_on: str | dt.date | None = None) -> list[R]:
    """The store records of a city (case-insensitive, spaces around it ignored), in the order given;
    with ``open_on``, only those open that day (opened on or before it, not closed by it)."""
    want = city.strip().casefold()
    d = None if open_on is None else _day(open_on)
    return [s for s in stores if s["city"].strip().casefold() == want and (
        d is None or (s["opened_on"] <= d and (s.get("closed_on") is None or d < s["closed_on"])))]


def campaign_phase(campaign: Record, day: str | dt.date) -> str | None:
    """``"sale"`` (starts_on..ends_on), ``"warmup"`` (warmup_starts_on..the day before the sale) or None."""
    d = _day(day)
    if campaign["starts_on"] <= d <= campaign["ends_on"]:
        return "sale"
    warmup = campaign.get("warmup_starts_on")
    if warmup is not None and warmup <= d < campaign["starts_on"]:
        return "warmup"
    return None


class ReferenceData:
    """Decoding, caching lookups over raw reference tables (see the module docstring)."""

    def __init__(self, sources: Mapping[str, Mapping[bytes, bytes]]) -> None:
        missing = set(KINDS) - set(sources)
        if missing:
            raise ValueError(f"no source for reference kind(s) {sorted(missing)}")
        self.sources = sources
        self._cache: dict[str, dict[bytes, tuple[bytes, Record]]] = {k: {} for k in KINDS}

    @classmethod
    def from_records(cls, **records: Iterable[Record]) -> ReferenceData:
        """An in-memory instance from decoded records per kind (``stores=[...]``, ``products=[...]``,
        ``calendar=[...]``, ``spend=[...]``), encoded as the loader would. For tests and tools."""
        sources: dict[str, dict[bytes, bytes]] = {k: {} for k in KINDS}
        for name, recs in records.items():
            kind = KINDS[name]
            for r in recs:
                sources[name][kind.key(r).encode()] = avro.encode(kind.contract, r)
        return cls(sources)

    # ------------------------------------------------------------------ point lookups

    def get(self, kind: Kind, key: str) -> Record | None:
        return self._decoded(kind, key.encode(), self.sources[kind.name].get(key.encode()))

    def store(self, store_id: str) -> Record | None:
        return self.get(STORES, store_id)

    def product(self, product_id: str) -> Record | None:
        return self.get(PRODUCTS, product_id)

    def campaign(self, campaign_id: str) -> Record | None:
        return self.get(CAMPAIGNS, campaign_id)

    def spend(self, day: str | dt.date, channel: str, campaign_id: str | None = None) -> Record | None:
        return self.get(SPEND, spend_key(_day(day), channel, campaign_id))

    # ------------------------------------------------------------------ scans

    def all(self, kind: Kind | str) -> list[Record]:
        """Every record of a kind, in key order."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        items = sorted(self.sources[kind.name].items())
        out = [self._decoded(kind, k, v) for k, v in items]
        return [r for r in out if r is not None]

    def count(self, kind: Kind | str) -> int:
        kind = KINDS[kind] if isinstance(kind, str) else kind
        return len(self.sources[kind.name])

    def stores_in(self, city: str, open_on: str | dt.date | None = None) -> list[Record]:
        """Stores of a city (case-insensitive), by store id; with ``open_on``, only those open that day."""
        return stores_in(self.all(STORES), city, open_on)

    def campaigns_on(self, day: str | dt.date, warmup: bool = True) -> list[Record]:
        """Campaigns running on a day (sale days; warm-up days too unless ``warmup=False``), by start."""
        found = [c for c in self.all(CAMPAIGNS)
                 if (phase := campaign_phase(c, day)) == "sale" or (warmup and phase == "warmup")]
        return sorted(found, key=lambda c: (c["starts_on"], c["campaign_id"]))

    # ------------------------------------------------------------------ decoding

    def _decoded(self, kind: Kind, key: bytes, raw: bytes | None) -> Record | None:
        if raw is None:
            return None
        cache = self._cache[kind.name]
        hit = cache.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        record = avro.decode_as(kind.contract, raw)
        cache[key] = (raw, record)
        return record
