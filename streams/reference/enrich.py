"""Fill what a touchpoint left out from the reference tables. Pure; the identity agent
(streams/identity/agents.py) applies it to every admitted touchpoint, using the reference
tables the worker holds.

``enrich(touchpoint, ref)`` never changes its input. It returns the touchpoint
itself when there is nothing to fill, else a copy in which:

- every product line (a dict carrying ``product_id``) whose ``category`` or
  ``price`` is missing gets it from the catalog: ``category`` is the product's
  ``category_path``; ``price`` the list price, and ``currency`` with it where
  the line has a currency field that is empty. A line whose currency differs
  from the catalog's keeps its missing price (no mixed currencies);
- an event with a ``store_id`` whose context has no ``city`` gets the store's
  city (a context is created if the event has none).

Values the touchpoint carries are never overwritten; unknown ids change nothing.

The touchpoint's shape is reached only through the three accessors below, so a
new touchpoint contract means adapting them, not ``enrich``:

- ``product_lines(tp)``: the product-describing dicts inside the touchpoint.
  As written it accepts both the flat properties record (``properties.product_id``)
  and typed property families, or both at once (``properties.<family>.product_id``, and
  ``properties.<family>.products[]`` line items of orders);
- ``store_id_of(tp)``: the top-level ``store_id``;
- ``context_of(tp, create)``: the ``context`` record (a dict; missing fields
  are left to their Avro defaults when created).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Protocol

Record = dict[str, Any]


class Lookups(Protocol):
    """What enrich needs from ``view.ReferenceData`` (a dict-backed fake works too)."""

    def product(self, product_id: str) -> Record | None: ...

    def store(self, store_id: str) -> Record | None: ...


# ----------------------------------------------------------------------------- accessors


def product_lines(tp: Record) -> Iterator[Record]:
    props = tp.get("properties")
    if not isinstance(props, dict):
        return
    if props.get("product_id") is not None:  # flat properties record
        yield props
    for family in props.values():
        if not isinstance(family, dict):
            continue
        if family.get("product_id") is not None:
            yield family
        for line in family.get("products") or ():
            if isinstance(line, dict) and line.get("product_id") is not None:
                yield line


def store_id_of(tp: Record) -> str | None:
    value = tp.get("store_id")
    return value if isinstance(value, str) and value else None


def context_of(tp: Record, create: bool = False) -> Record | None:
    ctx = tp.get("context")
    if ctx is None and create:
        ctx = tp["context"] = {}
    return ctx


# ----------------------------------------------------------------------------- the rule


def _fill_line(line: Record, ref: Lookups, apply: bool) -> bool:
    """Whether the line lacks something the catalog has; fill it when ``apply``."""
    pid = line.get("product_id")
    if not isinstance(pid, str) or (line.get("category") is not None and line.get("price") is not None):
        return False
    product = ref.product(pid)
    if product is None:
        return False
    changed = False
    if line.get("category") is None:
        changed = True
        if apply:
            line["category"] = product["category_path"]
    currency_ok = line.get("currency") in (None, product["currency"])
    if line.get("price") is None and currency_ok:
        changed = True
        if apply:
            line["price"] = product["price"]
            if "currency" in line and line["currency"] is None:
                line["currency"] = product["currency"]
    return changed


def _fill_city(tp: Record, ref: Lookups, apply: bool) -> bool:
    sid = store_id_of(tp)
    ctx = context_of(tp)
    if sid is None or (ctx is not None and ctx.get("city") is not None):
        return False
    store = ref.store(sid)
    if store is None:
        return False
    if apply:
        context = context_of(tp, create=True)
        assert context is not None
        context["city"] = store["city"]
    return True


def enrich(touchpoint: Record, ref: Lookups) -> Record:
    """A copy of ``touchpoint`` with missing product and store facts filled (see module doc)."""
    # First a read-only pass, so the common case (nothing to fill) costs no copy.
    needed = any([_fill_line(line, ref, False) for line in product_lines(touchpoint)]) \
        or _fill_city(touchpoint, ref, False)
    if not needed:
        return touchpoint
    out = copy.deepcopy(touchpoint)
    for line in product_lines(out):
        _fill_line(line, ref, True)
    _fill_city(out, ref, True)
    return out
