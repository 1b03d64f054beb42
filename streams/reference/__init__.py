"""Reference data: stores, the product catalog, the campaign calendar and marketing spend.

Each kind lives on a compacted topic keyed by its natural id (``streams.topics``
``REF_*``), as Confluent-framed Avro (``schemas/com.touchline.reference.*``):

- ``rows``: loader files (CSV or JSON Lines, optionally gzip) -> records, with
  per-row errors naming file and line. Pure.
- ``loader``: ``touchline load FILE --kind ...``: checks a file, produces its rows.
- ``view``: ``ReferenceData``, the lookups (``product``, ``store``, ``stores_in``,
  ``campaign``, ``campaigns_on``, ``spend``) over raw key -> bytes tables. Pure.
- ``tables``: ``register(p)``: the tables as Faust GlobalTables in a worker.
- ``reader``: the same tables read by a plain confluent-kafka thread.
- ``enrich``: fill a touchpoint's missing product and store facts. Pure.
"""
