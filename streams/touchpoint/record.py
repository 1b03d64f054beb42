"""Building and reading Touchpoint records (pure; field lists come from schemas/).

A Touchpoint as Python sees it is the dict fastavro reads and writes. Code
never spells out the nested records: ``build`` fills every field from the
schema (None unless given) and puts the typed properties under the event
type's family, and ``props`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from streams import avro
from streams.touchpoint.taxonomy import FAMILY_OF

NS = "com.touchline.touchpoint."
# v1 flat property fields (deprecated) -> their name in the family record
_V1_FIELDS = ("product_id", "category", "price", "quantity", "cart_id", "order_id", "revenue",
              "currency", "coupon_id", "points")


def named_schemas() -> dict[str, Any]:
    """Full name -> parsed schema of every named type in the current Touchpoint contract."""
    named: dict[str, Any] = avro.contract(avro.TOUCHPOINT).parsed["__named_schemas"]
    return named


def _full_name(record: str) -> str:
    return record if "." in record else NS + record


@cache
def _record_fields(name: str) -> Mapping[str, dict[str, Any]]:
    """Field name -> field schema of the named record in the current contracts (read-only, cached)."""
    return MappingProxyType({f["name"]: f for f in named_schemas()[name]["fields"]})


@cache
def field_types(record: str) -> Mapping[str, Any]:
    """Field name -> Avro type of a named record (``Context`` or a full name); read-only, cached."""
    return MappingProxyType({n: f["type"] for n, f in _record_fields(_full_name(record)).items()})


def _default(field: dict[str, Any]) -> Any:
    default = field.get("default")
    return list(default) if isinstance(default, list) else dict(default) if isinstance(default, dict) else default


@cache
def _family_record_names() -> dict[str, str]:
    """Family field of Properties -> full name of its record type."""
    out = {}
    for name, field in _record_fields(NS + "Properties").items():
        branch = [t for t in field["type"] if t != "null"][0]
        if isinstance(branch, dict):
            branch = branch["name"]
        if branch.startswith(NS) and name not in _V1_FIELDS:
            out[name] = branch
    return out


def blank(record: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record of the named type with every field present (default unless given)."""
    values = values or {}
    fields = _record_fields(_full_name(record))
    unknown = set(values) - set(fields)
    if unknown:
        raise KeyError(f"{record} has no field(s) {', '.join(sorted(unknown))}")
    return {n: values[n] if n in values else _default(f) for n, f in fields.items()}


@cache
def double_fields(record: str) -> frozenset[str]:
    """Fields of a named record whose type is (or may be) a double."""
    def is_double(t: Any) -> bool:
        return t == "double" or (isinstance(t, list) and "double" in t)

    return frozenset(n for n, f in _record_fields(_full_name(record)).items()
                     if is_double(f["type"]))


def family_record(family: str) -> str:
    """Full name of a family's record type (``cart`` -> ``com.touchline.touchpoint.Cart``)."""
    return _family_record_names()[family]


def family_name(event_type: str) -> str:
    return FAMILY_OF[event_type]


@cache
def family_fields(event_type: str) -> frozenset[str]:
    family = FAMILY_OF[event_type]
    return frozenset(_record_fields(_family_record_names()[family]))


def properties(event_type: str, values: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Properties record for a type: ``values`` go into its family record."""
    if values is None:
        return None
    family = FAMILY_OF[event_type]
    record = _family_record_names()[family]
    if family in ("checkout", "order") and "products" in values:
        values = {**values, "products": [blank(NS + "LineItem", item) for item in values["products"]]}
    props: dict[str, Any] = {n: None for n in _record_fields(NS + "Properties")}
    props[family] = blank(record, values)
    return props


def build(event_id: str, event_type: str, event_time_ms: int, channel: str, *,
          receive_time_ms: int | None = None, identifiers: dict[str, Any] | None = None,
          context: dict[str, Any] | None = None, properties_: dict[str, Any] | None = None,
          **envelope: Any) -> dict[str, Any]:
    """A complete Touchpoint record ready for ``avro.encode(avro.TOUCHPOINT, ...)``."""
    tp = blank(NS + "Touchpoint", {
        "event_id": event_id, "type": event_type, "event_time_ms": event_time_ms,
        "receive_time_ms": event_time_ms if receive_time_ms is None else receive_time_ms,
        "channel": channel, **envelope,
    })
    tp["identifiers"] = blank(NS + "Identifiers", identifiers)
    tp["context"] = None if context is None else blank(NS + "Context", context)
    tp["properties"] = properties(event_type, properties_)
    return tp


def props(tp: dict[str, Any]) -> dict[str, Any]:
    """The typed properties of a touchpoint's family ({} when absent)."""
    container = tp.get("properties")
    if not container:
        return {}
    return container.get(FAMILY_OF.get(tp["type"], "custom")) or {}


def upgrade_v1(tp: dict[str, Any]) -> dict[str, Any]:
    """Move v1 flat property fields (read from v1 producers) into the family record."""
    container = tp.get("properties")
    if not container or tp["type"] not in FAMILY_OF:
        return tp
    legacy = {k: container.get(k) for k in _V1_FIELDS if container.get(k) is not None}
    if not legacy:
        return tp
    family = FAMILY_OF[tp["type"]]
    wanted = family_fields(tp["type"])
    current = dict(container.get(family) or {})
    if "revenue" in legacy and "revenue" not in wanted and "value" in wanted:
        legacy["value"] = legacy.pop("revenue")
    moved = {k: v for k, v in legacy.items() if k in wanted and current.get(k) is None}
    # A fresh container: the family record filled, every other field (the v1 ones too) None.
    return {**tp, "properties": properties(tp["type"], {**{k: v for k, v in current.items() if v is not None},
                                                         **moved})}
