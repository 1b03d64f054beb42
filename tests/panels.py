"""What the dashboard tests share: a ClickHouse panel's rows against rows worked out by hand."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from streams.dashboards import clickhouse_panels, dashboards, expand, variables
from streams.sink import query as ch

T = TypeVar("T")
Expected = Mapping[int, Mapping[str, tuple[list[str], list[list[Any]]]]]  # panel id -> range -> (columns, rows)


def same(got: Any, want: Any) -> bool:
    """Equal, floats to 1e-9 relative."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    return bool(got == want)


def dashboard(uid: str) -> Path:
    [path] = [p for p in dashboards() if clickhouse_panels(p) and clickhouse_panels(p)[0].dashboard_uid == uid]
    return path


def panel_failures(settings: Any, uid: str, expected: Expected,
                   ranges: Mapping[str, tuple[datetime, datetime, int]]) -> list[str]:
    """Every ClickHouse panel of dashboard ``uid``, its SQL expanded as the Grafana plugin does, run
    through the running sink over each range: one line per panel and range whose columns or rows
    are not the expected ones. The dashboard's panels must be exactly those of ``expected``."""
    path = dashboard(uid)
    panels = clickhouse_panels(path)
    assert sorted(p.panel_id for p in panels) == sorted(expected)
    failures = []
    for panel in panels:
        for name, (start, end, interval_s) in ranges.items():
            got = ch.query(settings, expand(panel.raw_sql, start, end, interval_s, variables(path)),
                           open_directly=False)
            want_columns, want_rows = expected[panel.panel_id][name]
            if got["columns"] != want_columns or not same(got["rows"], want_rows):
                failures.append(f"#{panel.panel_id} {panel.title!r} over {name}:\n"
                                f"  got  {got['columns']} {got['rows']}\n  want {want_columns} {want_rows}")
    return failures


def until(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout_s: float = 120.0) -> T:
    """``read()`` again every 0.3 s until ``done`` says the pipeline got there; fails with the last
    value read when it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    got = read()
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got}")
        time.sleep(0.3)
        got = read()
    return got


def settled(settings: Any, sql: str, done: Callable[[list[list[Any]]], bool], what: str,
            timeout_s: float = 120.0) -> list[list[Any]]:
    """The rows of ``sql`` (through the running sink) once ``done`` says the pipeline got there; fails
    with the last rows seen when it does not within ``timeout_s``."""
    def read() -> list[list[Any]]:
        try:
            return ch.rows(settings, sql, open_directly=False)
        except ch.QueryError:  # the sink is still starting, or the tables are not migrated yet
            return []
    return until(read, done, what, timeout_s)
