"""ClickHouse access: one client factory for chDB and servers, and migrations.

``chdb:///abs/path`` opens the embedded engine in this process (one engine per
process: only the sink, ``migrate`` and ``report`` open it, never together);
``http(s)://user:pass@host:port/db`` talks to a server. Migrations are
numbered SQL files, applied forward-only, each recorded once in
``schema_migrations``; re-running is a no-op.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import clickhouse_connect

MIGRATIONS_TABLE = "schema_migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connect(dsn: str) -> Any:
    if dsn.startswith("chdb://"):
        Path(dsn[len("chdb://"):]).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=dsn)


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    found = []
    for entry in resources.files("streams.sink").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def migrate(client: Any) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    client.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE}").result_rows}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        for stmt in statements(sql):
            client.command(stmt)
        client.insert(MIGRATIONS_TABLE, [[version, name]], column_names=["version", "name"])
        applied.append(name)
    return applied
