"""``touchline import``: history from ERP/CRM/POS/web exports, as historical touchpoints.

Pure parts: ``mapping`` (the TOML mapping), ``files`` (reading CSV, JSON Lines,
Parquet row by row), ``convert`` (row -> clean Touchpoint). The Kafka shell:
``service`` (producing, dead letters, flush) and ``ledger`` (imports done).
"""
