"""Product sales agent: recent sales per person-ops partition (streams/triggers/sales.py), published
on ``products.sales`` and read back whole by every worker, for ``recommend(...)`` in trigger payloads.

``product-sales`` consumes ``internal.person-ops`` beside the features agent (one
more consumer of the same batches). Per batch on partition k it updates the one
``product-sales`` table entry of k (keyed by the partition, as ``feature-clocks``):
a batch the entry has applied before is skipped (streams/redelivery.py), merge
hand-overs carry no events. The summaries of the products the batch changed go
to the compacted ``products.sales`` topic keyed ``"{k}|{product_id}"`` (partition
k; a tombstone when a product has no sale left in the window), outputs first:
the broker holds them before the table entry records the batch as applied, so
a crash loses only the entry write and the redelivered batch publishes the same
summaries again.

Every worker reads ``products.sales`` as a GlobalTable, the way reference data is
read (streams/reference/tables.py, with its assignor workaround): ``SalesView``
decodes and caches its records. A sale reaches recommendations on other
partitions once the summary is on the topic and read back, a moment later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams import avro
from streams.pipeline import Pipeline, deliver
from streams.reference.tables import external_global_table
from streams.topics import PERSON_OPS, PRODUCT_SALES
from streams.triggers import sales

TABLE = "product-sales"


class SalesView:
    """The ProductSales summaries of every partition, decoded from the GlobalTable's raw records."""

    def __init__(self, source: Mapping[bytes, bytes | None]) -> None:
        self.source = source
        self._cache: dict[bytes, tuple[bytes, dict[str, Any]]] = {}

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for key, raw in list(self.source.items()):
            if not raw:
                continue
            hit = self._cache.get(key)
            if hit is None or hit[0] != raw:
                hit = self._cache[key] = (raw, avro.decode_as(avro.PRODUCT_SALES, raw))
            out.append(hit[1])
        return out


def register(p: Pipeline) -> SalesView:
    """Add the ``product-sales`` agent and the GlobalTable over ``products.sales``; return the view over it."""
    table = p.table(TABLE, partition_of=int)  # str(partition) -> sales.Entry
    n_days = p.settings.recommend_days
    ops_topic, sales_topic = p.topic(PERSON_OPS), p.topic(PRODUCT_SALES)
    view = SalesView(external_global_table(
        p, PRODUCT_SALES, "product-sales-summaries",
        f"product sales per partition (read-only, from {PRODUCT_SALES.name(p.settings)})"))

    def category_of(product_id: str) -> str | None:
        product = p.reference.product(product_id) if p.reference is not None else None
        return product["category_path"] if product else None

    @p.app.agent(ops_topic, name="product-sales")
    async def product_sales(stream: Any) -> None:
        async for event in stream.events():
            part = event.message.partition
            batch = avro.decode_as(avro.PERSON_BATCH, event.value)
            key = str(part)
            entry = table.get(key) or sales.empty()
            changed = sales.apply_batch(entry, batch, n_days, category_of)
            if not changed:  # nothing counted: skipping the entry write changes nothing on redelivery
                continue
            sends: list[tuple[Any, bytes | None, bytes | None, int | None]] = []
            for pid in sorted(changed):
                rec = sales.summary(entry, part, pid)
                value = None if rec is None else avro.encode(avro.PRODUCT_SALES, rec)
                sends.append((sales_topic, sales.record_key(part, pid).encode(), value, part))
            await deliver(sends)
            table[key] = entry

    return view
