"""The ClickHouse sink: output topics into analytics tables, idempotently."""
