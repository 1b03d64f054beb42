"""The cluster form of a migration: Replicated local tables behind Distributed tables.

Pure text rewriting (no ClickHouse import), so ``touchline migrate --print`` and
the tests can show the cluster form without a cluster. Single-node migrations
(``streams/sink/migrations/*.sql``) stay the one source of truth; on a cluster
(``TOUCHLINE_CLICKHOUSE_CLUSTER``) each of their statements becomes:

``CREATE TABLE [IF NOT EXISTS] X (...) ENGINE = <E>MergeTree[(args)] ...``
    ``X_local ON CLUSTER c`` with ``Replicated<E>MergeTree('/clickhouse/tables/
    {shard}/{database}/X_local', '{replica}'[, args])`` and the rest of the
    statement unchanged, then ``X ON CLUSTER c AS X_local ENGINE =
    Distributed(c, currentDatabase(), X_local, cityHash64(<first ORDER BY
    column>))``. Every reader and writer (the sink, the dashboards, ``report``)
    keeps using the plain name, now the Distributed table. A row's shard follows
    its key, so all versions of a key land on one shard: ReplacingMergeTree
    collapses repeats there, ``FINAL`` is exact per shard, and the sink's
    look-up of stored keys (through the Distributed table) sees every key.
``CREATE MATERIALIZED VIEW [IF NOT EXISTS] V TO T AS SELECT ... FROM B ...``
    ``V ON CLUSTER c TO T_local ... FROM B_local``: a view fires on each
    shard's local inserts into ``B_local`` and writes that shard's part of
    ``T``; queries read ``T`` (Distributed), which merges the shards' states.
``CREATE [OR REPLACE] VIEW [IF NOT EXISTS] V AS SELECT ...`` (plain, query-time views)
    ``V ON CLUSTER c``, reading the Distributed tables: evaluated on the node
    that is queried, over every shard.
``ALTER TABLE X <column actions>``
    the same ALTER ``ON CLUSTER c`` on ``X_local``, then on ``X``.
``INSERT INTO X [(...)] SELECT ...`` (backfills)
    unchanged: it reads and writes the Distributed tables, so the aggregation
    is global and the rows are spread by the sharding key.

Anything else raises :class:`ClusterRewriteError` naming the statement: a new
kind of migration statement has to be taught here, never passed through.
"""

from __future__ import annotations

import re

LOCAL_SUFFIX = "_local"
# ZooKeeper/Keeper path of a sharded table's replicas; the macros are the nodes' own.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/%s"
REPLICA_NAME = "{replica}"
# The migrations table is not sharded: one table replicated on every node of the
# cluster (replica names must be unique across the cluster).
MIGRATIONS_REPLICA_PATH = "/clickhouse/tables/{database}/%s"
# Column actions that apply to a Distributed table as well as to its local table.
_COLUMN_ACTION = re.compile(r"(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CLUSTER = re.compile(_NAME)
_CREATE_TABLE = re.compile(rf"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?({_NAME})\s*\(", re.I)
_ENGINE = re.compile(rf"\s*ENGINE\s*=\s*({_NAME})\s*", re.I)
_ORDER_BY = re.compile(r"\bORDER\s+BY\s+", re.I)
_NEXT_CLAUSE = re.compile(r"\b(PRIMARY\s+KEY|SAMPLE\s+BY|TTL|SETTINGS|PARTITION\s+BY|COMMENT)\b", re.I)
_CREATE_MV = re.compile(
    rf"CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})\s+TO\s+({_NAME})\s+AS\s+SELECT\b", re.I)
_FROM = re.compile(rf"\bFROM\s+({_NAME})(?![\w.(])", re.I)
_CREATE_VIEW = re.compile(rf"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})\s+AS\b", re.I)
_ALTER = re.compile(rf"ALTER\s+TABLE\s+({_NAME})\s+", re.I)
_INSERT_SELECT = re.compile(rf"INSERT\s+INTO\s+({_NAME})\s*(?:\([^()]*\)\s*)?SELECT\b", re.I)


class ClusterRewriteError(ValueError):
    """A migration statement the cluster rewrite does not know how to carry over."""


def local_name(table: str) -> str:
    return table + LOCAL_SUFFIX


def cluster_statements(statements: list[str], cluster: str) -> list[str]:
    """One migration's statements (as ``clickhouse.statements`` splits them) for ``cluster``."""
    _check_cluster(cluster)
    out: list[str] = []
    for stmt in statements:
        out += _rewrite(stmt.strip(), cluster)
    return out


def migrations_table(name: str, columns: str, order_by: str, cluster: str) -> str:
    """The migrations table: one ReplicatedMergeTree on every node, so any node sees what was applied."""
    _check_cluster(cluster)
    path = MIGRATIONS_REPLICA_PATH % name
    return (f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER {cluster} ({columns}) "
            f"ENGINE = ReplicatedMergeTree('{path}', '{REPLICA_NAME}') ORDER BY {order_by}")


def _check_cluster(cluster: str) -> None:
    if not _CLUSTER.fullmatch(cluster):
        raise ClusterRewriteError(f"cluster name must be an identifier (letters, digits, _), not {cluster!r}")


def _rewrite(stmt: str, cluster: str) -> list[str]:
    masked = mask(stmt)
    if m := _CREATE_TABLE.match(masked):
        return _create_table(stmt, masked, m, cluster)
    if m := _CREATE_MV.match(masked):
        return [_materialized_view(stmt, masked, m, cluster)]
    if m := _CREATE_VIEW.match(masked):  # evaluated where queried, over the Distributed tables
        return [_apply(stmt, [(m.end(1), m.end(1), f" ON CLUSTER {cluster}")])]
    if m := _ALTER.match(masked):
        return _alter(stmt, masked, m, cluster)
    if _INSERT_SELECT.match(masked):
        return [stmt]
    raise _error(stmt, "its form is not one the cluster rewrite knows (CREATE TABLE ... ENGINE = *MergeTree, "
                       "CREATE MATERIALIZED VIEW ... TO ... AS SELECT, CREATE VIEW ... AS, ALTER TABLE ... column actions, "
                       "INSERT INTO ... SELECT); teach streams/sink/cluster.py this form")


def _create_table(stmt: str, masked: str, m: re.Match[str], cluster: str) -> list[str]:
    table = m.group(2)
    columns_end = _closing(masked, m.end() - 1)
    e = _ENGINE.match(masked, columns_end + 1)
    if e is None:
        raise _error(stmt, "no ENGINE = right after the column list")
    engine = e.group(1)
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise _error(stmt, f"engine {engine} is not a non-replicated *MergeTree")
    args, engine_end = "", e.end(1)
    if masked.startswith("(", e.end()):
        engine_end = _closing(masked, e.end()) + 1
        args = stmt[e.end() + 1:engine_end - 1].strip()
    key = _first_order_by_column(stmt, masked[engine_end:], engine_end)
    local = local_name(table)
    replicated_args = ", ".join([f"'{REPLICA_PATH % local}'", f"'{REPLICA_NAME}'"] + ([args] if args else []))
    local_sql = _apply(stmt, [(m.start(2), m.end(2), f"{local} ON CLUSTER {cluster}"),
                              (e.start(1), engine_end, f"Replicated{engine}({replicated_args})")])
    if_not_exists = "IF NOT EXISTS " if m.group(1) else ""
    distributed_sql = (f"CREATE TABLE {if_not_exists}{table} ON CLUSTER {cluster} AS {local} "
                       f"ENGINE = Distributed({cluster}, currentDatabase(), {local}, cityHash64({key}))")
    return [local_sql, distributed_sql]


def _first_order_by_column(stmt: str, masked_rest: str, offset: int) -> str:
    """The first expression of the table's ORDER BY: its sharding key."""
    o = next((o for o in _ORDER_BY.finditer(masked_rest) if _depth(masked_rest, o.start()) == 0), None)
    if o is None:
        raise _error(stmt, "no ORDER BY to take the sharding key from")
    start = o.end()
    if masked_rest.startswith("(", start):
        inner_end = _closing(masked_rest, start)
        first = _split_top_level(masked_rest, start + 1, inner_end)[0]
    else:
        nxt = next((c.start() for c in _NEXT_CLAUSE.finditer(masked_rest, start)
                    if _depth(masked_rest, c.start()) == 0), len(masked_rest))
        first = (start, nxt)
    key = stmt[offset + first[0]:offset + first[1]].strip()
    if not key or re.fullmatch(r"tuple\s*\(\s*\)", key, re.I):
        raise _error(stmt, "ORDER BY has no column to shard by")
    return key


def _materialized_view(stmt: str, masked: str, m: re.Match[str], cluster: str) -> str:
    view, target = m.group(1), m.group(2)
    select = masked[m.end():]
    if re.search(r"\(\s*SELECT\b", select, re.I) or re.search(r"\bJOIN\b|\bUNION\b", select, re.I):
        raise _error(stmt, "a view with a subquery, JOIN or UNION: which tables it reads locally is not decided")
    froms = [f for f in _FROM.finditer(masked, m.end()) if _depth(masked, f.start()) == 0]
    if len(froms) != 1:
        raise _error(stmt, "a view must read exactly one table (FROM <name>)")
    source = froms[0].group(1)
    edits = [(m.start(1), m.end(1), f"{view} ON CLUSTER {cluster}"), (m.start(2), m.end(2), local_name(target)),
             (froms[0].start(1), froms[0].end(1), local_name(source))]
    # columns qualified with the table's own name (no alias) follow it to the local table
    edits += [(q.start(), q.start() + len(source), local_name(source))
              for q in re.compile(rf"(?<![\w.]){source}\.").finditer(masked, m.end())]
    return _apply(stmt, edits)


def _alter(stmt: str, masked: str, m: re.Match[str], cluster: str) -> list[str]:
    table = m.group(1)
    for start, end in _split_top_level(masked, m.end(), len(masked)):
        if not _COLUMN_ACTION.match(masked[start:end].strip()):
            raise _error(stmt, "only column actions (ADD/DROP/MODIFY/RENAME/COMMENT COLUMN) apply to both the "
                               "local and the Distributed table")
    rest = stmt[m.end(1):]
    return [f"ALTER TABLE {local_name(table)} ON CLUSTER {cluster}{rest}", f"ALTER TABLE {table} ON CLUSTER {cluster}{rest}"]


def _apply(stmt: str, edits: list[tuple[int, int, str]]) -> str:
    """``stmt`` with each (start, end) span replaced, spans in any order, not overlapping."""
    for start, end, text in sorted(edits, reverse=True):
        stmt = stmt[:start] + text + stmt[end:]
    return stmt


def _error(stmt: str, why: str) -> ClusterRewriteError:
    one_line = " ".join(stmt.split())
    return ClusterRewriteError(f"cannot rewrite for a cluster: {why}: {one_line[:300]}")


# --- lexing: positions outside comments and literals --------------------------------


def mask(sql: str) -> str:
    """``sql`` with the same length, comments blanked and the insides of quoted literals
    and identifiers replaced, so that keywords and brackets found in it are real ones."""
    out = list(sql)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out[i:end] = " " * (end - i)
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out[i:end] = [ch if ch == "\n" else " " for ch in sql[i:end]]
            i = end
        elif c in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            end = min(j, n)
            out[i + 1:end] = "_" * (end - i - 1)
            i = end + 1
        else:
            i += 1
    return "".join(out)


def _closing(masked: str, open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(masked)):
        if masked[i] == "(":
            depth += 1
        elif masked[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ClusterRewriteError(f"unbalanced brackets: {' '.join(masked.split())[:300]}")


def _depth(masked: str, at: int) -> int:
    return masked.count("(", 0, at) - masked.count(")", 0, at)


def _split_top_level(masked: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each comma-separated part of ``masked[start:end]`` at bracket depth 0."""
    parts, depth, part_start = [], 0, start
    for i in range(start, end):
        if masked[i] == "(":
            depth += 1
        elif masked[i] == ")":
            depth -= 1
        elif masked[i] == "," and depth == 0:
            parts.append((part_start, i))
            part_start = i + 1
    parts.append((part_start, end))
    return parts
