"""ClickHouse access: one client factory for chDB and servers, and migrations.

``chdb:///abs/path`` opens the embedded engine in this process (one engine per
process: only the sink, ``migrate`` and ``report`` open it, never together);
``http(s)://user:pass@host:port/db`` talks to a server. Migrations are
numbered SQL files, applied forward-only, each recorded once in
``schema_migrations``; re-running is a no-op.

On a cluster (``migrate(client, cluster)``, TOUCHLINE_CLICKHOUSE_CLUSTER) the
same files run in their cluster form (``streams.sink.cluster``): Replicated
local tables behind Distributed tables under the plain names, every DDL
``ON CLUSTER``, and ``schema_migrations`` one ReplicatedMergeTree on every node.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import clickhouse_connect

from streams.sink.cluster import ClusterRewriteError, cluster_statements, mask, migrations_table

MIGRATIONS_TABLE = "schema_migrations"
_MIGRATIONS_COLUMNS = "version UInt32, name String, applied_at DateTime DEFAULT now()"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connect(dsn: str) -> Any:
    if dsn.startswith("chdb://"):
        Path(dsn[len("chdb://"):]).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=dsn)


def readonly_query(client: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of a read-only query (ClickHouse refuses writes under readonly=1)."""
    result = client.query(sql, settings={"readonly": 1})
    return list(result.column_names), list(result.result_rows)


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


class MigrationError(RuntimeError):
    """The database's migrations table does not fit the layout asked for."""


def migrations_table_statements(cluster: str = "") -> list[str]:
    """What creates the migrations table (and, on a cluster, brings this replica up to date)."""
    if not cluster:
        return [f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ({_MIGRATIONS_COLUMNS}) "
                "ENGINE = MergeTree ORDER BY version"]
    # Records are inserted on whichever node migrated: wait for them before deciding what is pending.
    return [migrations_table(MIGRATIONS_TABLE, _MIGRATIONS_COLUMNS, "version", cluster),
            f"SYSTEM SYNC REPLICA {MIGRATIONS_TABLE}"]


def plan(cluster: str = "") -> list[tuple[int, str, list[str]]]:
    """(version, file name, statements run) of every shipped migration; the cluster form when
    ``cluster`` is set. Raises ClusterRewriteError, naming the file, for a form the rewrite does
    not know."""
    out = []
    for version, name, sql in migrations():
        stmts = statements(sql)
        if cluster:
            try:
                stmts = cluster_statements(stmts, cluster)
            except ClusterRewriteError as exc:
                raise ClusterRewriteError(f"{name}: {exc}") from exc
        out.append((version, name, stmts))
    return out


def script(cluster: str = "") -> str:
    """Every statement ``migrate`` may run, in order, as one SQL script for review (no connection:
    versions already recorded in the migrations table are skipped when migrating)."""
    where = f"cluster {cluster} (every DDL ON CLUSTER)" if cluster else "a single node (a server or chDB)"
    blocks = [f"-- touchline migrate --print: the migrations for {where}.\n"
              f"-- Printed without connecting: `touchline migrate` runs the versions not yet in {MIGRATIONS_TABLE}.",
              "\n\n".join(_terminated(s) for s in migrations_table_statements(cluster))]
    for version, name, stmts in plan(cluster):
        record = f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ({version}, '{name}')"
        blocks.append(f"-- {name}\n" + "\n\n".join(_terminated(s) for s in [*stmts, record]))
    return "\n\n".join(blocks) + "\n"


def _terminated(stmt: str) -> str:
    """``stmt;``, with the semicolon on a line of its own when the statement ends in a -- comment."""
    last, masked_last = stmt.rsplit("\n", 1)[-1], mask(stmt).rsplit("\n", 1)[-1]
    return stmt + ("\n;" if len(masked_last.rstrip()) < len(last.rstrip()) else ";")


def migrate(client: Any, cluster: str = "") -> list[str]:
    """Apply pending migrations; return the names applied now. With ``cluster``, in the cluster
    form (streams.sink.cluster), every one rewritten before anything is run."""
    steps = plan(cluster)
    _check_layout(client, cluster)
    for stmt in migrations_table_statements(cluster):
        client.command(stmt)
    done = {row[0] for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE}").result_rows}
    applied = []
    for version, name, stmts in steps:
        if version in done:
            continue
        for stmt in stmts:
            client.command(stmt)
        client.insert(MIGRATIONS_TABLE, [[version, name]], column_names=["version", "name"])
        applied.append(name)
    return applied


def _check_layout(client: Any, cluster: str) -> None:
    """Refuse to migrate a single-node database as a cluster, or a cluster as a single node."""
    rows = client.query("SELECT engine FROM system.tables WHERE database = currentDatabase() "
                        f"AND name = '{MIGRATIONS_TABLE}'").result_rows
    if not rows:
        return
    replicated = str(rows[0][0]).startswith("Replicated")
    if cluster and not replicated:
        raise MigrationError(
            f"{MIGRATIONS_TABLE} is {rows[0][0]} here: this database was migrated as a single node, so "
            f"TOUCHLINE_CLICKHOUSE_CLUSTER={cluster} cannot add its Replicated/Distributed layout to it. "
            "Migrate a new database on the cluster, or leave TOUCHLINE_CLICKHOUSE_CLUSTER empty")
    if not cluster and replicated:
        raise MigrationError(
            f"{MIGRATIONS_TABLE} is {rows[0][0]} here: this database was migrated for a cluster. Set "
            "TOUCHLINE_CLICKHOUSE_CLUSTER to its cluster name")
