"""Reading ClickHouse while the sink may own the embedded chDB.

chDB allows one engine per process, so while the sink runs it serves
read-only SQL on loopback (``POST /query`` on ``TOUCHLINE_SINK_QUERY_PORT``;
ClickHouse itself refuses writes: every query runs with ``readonly=1``).
``query()`` is what the CLI, the report and the tests call: through the sink
when it answers, else by opening chDB directly; against a ClickHouse server,
always directly. Values come back JSON-shaped (dates and times as strings)
whichever way was taken.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.settings import Settings

MAX_SQL_BYTES = 1 << 20


def quote(s: str) -> str:
    """``s`` as a ClickHouse string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def result_json(columns: list[str], rows: list[Any]) -> dict[str, Any]:
    return {"columns": columns, "rows": [[_plain(v) for v in row] for row in rows]}


class QueryServer:
    """The sink's read-only SQL endpoint on 127.0.0.1."""

    def __init__(self, writer: Any, port: int) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/healthz":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": "POST /query with SQL as the body"})

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/query":
                    self._send(404, {"error": "POST /query with SQL as the body"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_SQL_BYTES:
                    self._send(413, {"error": f"SQL longer than {MAX_SQL_BYTES} bytes"})
                    return
                sql = self.rfile.read(length).decode()
                try:
                    columns, rows = owner.writer.query(sql)
                except Exception as exc:
                    self._send(400, {"error": str(exc)})
                    return
                self._send(200, result_json(columns, rows))

        self.writer = writer
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="sink-query", daemon=True)

    def start(self) -> QueryServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QueryError(RuntimeError):
    """ClickHouse rejected a query (the message is ClickHouse's)."""


class SinkNotRunning(QueryError):
    """The embedded database's owner (the sink) does not answer, and opening it here was not allowed."""


def query(settings: Settings, sql: str, open_directly: bool = True) -> dict[str, Any]:
    """{"columns": [...], "rows": [[...]]} of a read-only query, wherever the data lives.

    ``open_directly=False``: never open chDB in this process (a process that did
    would hold the engine and keep a sink from starting); raise SinkNotRunning.
    """
    dsn = settings.clickhouse_dsn
    if dsn.startswith("chdb://"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{settings.sink_query_port}/query", data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            raise QueryError(json.loads(exc.read()).get("error", str(exc))) from None
        except (ConnectionRefusedError, urllib.error.URLError) as exc:
            if not isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                raise
            if not open_directly:
                raise SinkNotRunning(f"no sink answers on 127.0.0.1:{settings.sink_query_port}") from None
            # no sink running: this process may open the embedded database itself
    try:
        columns, found = _direct_query(dsn, sql)
    except Exception as exc:
        raise QueryError(str(exc)) from exc
    return result_json(columns, found)


_SERVER_CLIENTS: dict[str, tuple[Any, threading.Lock]] = {}  # per DSN: this process's client of a server
_SERVER_CLIENTS_LOCK = threading.Lock()


def _direct_query(dsn: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A read-only query on a client of this process's own.

    A server's client is kept per DSN and reused (one query at a time: it holds one session),
    dropped after a failure so the next query connects again. A chDB client is never kept:
    while one is open it holds the engine, which keeps a sink from starting and this process
    from opening any other path; it is closed as soon as the query has run.
    """
    from streams.sink.clickhouse import connect, readonly_query

    if dsn.startswith("chdb://"):
        client = connect(dsn)
        try:
            return readonly_query(client, sql)
        finally:
            client.close()
    with _SERVER_CLIENTS_LOCK:
        if dsn not in _SERVER_CLIENTS:
            _SERVER_CLIENTS[dsn] = (connect(dsn), threading.Lock())
        client, lock = _SERVER_CLIENTS[dsn]
    with lock:
        try:
            return readonly_query(client, sql)
        except Exception:
            with _SERVER_CLIENTS_LOCK:
                if _SERVER_CLIENTS.get(dsn, (None,))[0] is client:
                    del _SERVER_CLIENTS[dsn]  # a server may have gone: connect again next time
            raise


def rows(settings: Settings, sql: str, open_directly: bool = True) -> list[list[Any]]:
    return list(query(settings, sql, open_directly)["rows"])
