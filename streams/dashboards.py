"""Grafana dashboards in deploy/grafana/dashboards: their ClickHouse panels, and
the SQL Grafana would send for them.

Pure: reads JSON files, no network, no ClickHouse. `expand` turns a panel's
rawSql into the statement ClickHouse receives, the way Grafana 12 with the
official ClickHouse data source plugin does it:

1. the plugin's frontend (src/data/CHDatasource.ts, applyTemplateVariables)
   replaces dashboard variables with Grafana's template service: `$name`,
   `${name}`, `${name:fmt}` and `[[name]]`; a single value goes in verbatim, a
   multi-value one as `'a','b'`; names that are not variables stay as written
   (so `$__timeFilter` and friends reach the backend untouched);
2. the plugin's backend (pkg/macros/macros.go of grafana-clickhouse-datasource
   v4.20.0, the version deploy/docker-compose.yml pins, which hands the query to
   github.com/grafana/macropro v1.0.1) blanks `--` and `/* */` comments (each
   byte becomes a space; string literals with '' and backslash escapes are
   respected), then expands `$__name` / `$__name(args)` macros, longest name
   first, innermost first when a macro is nested in another's arguments;
   unknown `$__` names are left as they are.

Macros (from = time_from, to = time_to, both truncated to whole seconds
where a DateTime is produced, as Go's Time.Unix does):

    $__timeFilter(c)      c >= toDateTime(from_s) AND c <= toDateTime(to_s)
    $__timeFilter_ms(c)   c >= fromUnixTimestamp64Milli(from_ms) AND c <= fromUnixTimestamp64Milli(to_ms)
    $__dateFilter(c)      c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')   (dates in UTC)
    $__dateTimeFilter(d, t) / $__dt(d, t)   (d dateFilter) AND (t timeFilter), each parenthesised
    $__timeFrom(c)        c >= toDateTime(from_s)        $__timeTo(c)   c <= toDateTime(to_s)
    $__fromTime           toDateTime(from_s)             $__toTime      toDateTime(to_s)
    $__fromTime_ms        fromUnixTimestamp64Milli(from_ms)   $__toTime_ms  likewise
    $__timeInterval(c)    toStartOfInterval(toDateTime(c), INTERVAL max(interval_s,1) second)
    $__timeInterval_ms(c) toStartOfInterval(toDateTime64(c, 3), INTERVAL max(interval_ms,1) millisecond)
    $__timeGroup(c, 5m)   toStartOfInterval(toDateTime(c), INTERVAL 300 second)
    $__interval_s         max(interval_s, 1)
    $__interval_ms        interval_ms                    $__interval   e.g. 5m, 30s, 1h

`$__dateFilter` formats the bounds in the zone of the Grafana server process
(UTC in the grafana/grafana image), here always UTC: it cannot express days of
the reporting time zone, so the Touchline dashboards bucket days with
`toDate(col, '${reporting_tz}')` instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CLICKHOUSE_UID = "touchline-clickhouse"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PLUGIN_VERSION = "4.20.0"  # deploy/docker-compose.yml pins the same
DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"


@dataclass(frozen=True)
class Panel:
    dashboard_uid: str
    panel_id: int
    title: str
    type: str
    raw_sql: str
    format: str  # "table" or "time_series"
    unit: str | None = None
    ref_id: str = "A"


def dashboards(directory: Path | None = None) -> list[Path]:
    """deploy/grafana/dashboards/*.json, sorted by name."""
    return sorted((directory or DASHBOARDS_DIR).glob("*.json"))


def _load(path_or_dashboard: Path | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_dashboard, Mapping):
        return path_or_dashboard
    return json.loads(Path(path_or_dashboard).read_text())


def _is_clickhouse(ds: Any) -> bool:
    return isinstance(ds, Mapping) and (ds.get("uid") == CLICKHOUSE_UID or ds.get("type") == CLICKHOUSE_TYPE)


def walk(panels: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every panel, the panels inside rows included."""
    out: list[Mapping[str, Any]] = []
    for p in panels:
        out.append(p)
        out.extend(walk(p.get("panels", [])))  # collapsed rows hold their panels
    return out


# sqlutil.FormatOption of grafana-plugin-sdk-go, the target's "format".
_FORMATS = {0: "time_series", 1: "table", 2: "logs", 3: "trace", 4: "multi"}


def clickhouse_panels(path_or_dashboard: Path | str | Mapping[str, Any]) -> list[Panel]:
    """One Panel per ClickHouse query (target) of the dashboard, in panel order.

    A target counts as ClickHouse when its own datasource, or the panel's when it
    has none, is the touchline-clickhouse one."""
    dash = _load(path_or_dashboard)
    out: list[Panel] = []
    for p in walk(list(dash.get("panels", []))):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            ds = t.get("datasource") or p.get("datasource")
            if not _is_clickhouse(ds):
                continue
            fmt = t.get("format", 1)
            fmt_name = _FORMATS.get(fmt, str(fmt)) if isinstance(fmt, int) else str(fmt)
            unit = (p.get("fieldConfig") or {}).get("defaults", {}).get("unit")
            out.append(Panel(dashboard_uid=dash["uid"], panel_id=int(p["id"]), title=p.get("title", ""),
                             type=p.get("type", ""), raw_sql=t.get("rawSql", ""), format=fmt_name,
                             unit=unit, ref_id=t.get("refId", "A")))
    return out


def variables(path_or_dashboard: Path | str | Mapping[str, Any]) -> dict[str, str]:
    """Current (default) value of each templating variable of the dashboard."""
    dash = _load(path_or_dashboard)
    out: dict[str, str] = {}
    for v in (dash.get("templating") or {}).get("list", []):
        current = v.get("current") or {}
        value = current.get("value", v.get("query", ""))
        out[v["name"]] = ",".join(value) if isinstance(value, list) else str(value)
    return out


# --- 1. Grafana's template service (frontend) -------------------------------------
# public/app/features/templating/template_srv.ts: variableRegex.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _format_value(value: str | list[str]) -> str:
    if isinstance(value, list):  # CHDatasource.format
        return "'" + "','".join(value) + "'"
    return value


def replace_variables(sql: str, variables: Mapping[str, str | list[str]]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name not in variables:
            return m.group(0)
        return _format_value(variables[name])

    return _VARIABLE.sub(sub, sql)


# --- 2. macropro + the plugin's ClickHouse macros (backend) -----------------------
def _scan_string(s: str, pos: int, backslash: bool) -> int:
    """Index after the quoted literal starting at s[pos] (doubled-quote escapes,
    and backslash escapes when asked); len(s) when unterminated."""
    quote = s[pos]
    j = pos + 1
    while j < len(s):
        if backslash and s[j] == "\\":
            j += 2
            continue
        if s[j] == quote:
            if j + 1 < len(s) and s[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return len(s)


def strip_comments(sql: str) -> str:
    """macropro.StripComments with LineComment | BlockComment | BackslashEscape:
    each byte of a comment becomes a space; an unterminated block comment runs to
    the end."""
    out: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = _scan_string(sql, i, backslash=True)
            out.append(sql[i:j])
            i = j
            continue
        if c == "-" and i + 1 < n and sql[i + 1] == "-":
            j = i
            while j < n and sql[j] not in "\n\r":
                j += 1
        elif c == "/" and i + 1 < n and sql[i + 1] == "*":
            end = sql.find("*/", i + 2)
            j = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
            continue
        out.append(" " * len(sql[i:j].encode()))
        i = j
    return "".join(out)


def _closing_paren(s: str, open_: int) -> int:
    depth = 0
    i = open_
    while i < len(s):
        c = s[i]
        if c in "'\"":
            i = _scan_string(s, i, backslash=False)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_args(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    args: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(raw):
        c = raw[i]
        if c in "'\"":
            i = _scan_string(raw, i, backslash=False)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                raise ValueError(f"unexpected ')' at position {i}")
            depth -= 1
        elif c == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
        i += 1
    if depth:
        raise ValueError("unbalanced parentheses in arguments")
    args.append(raw[start:].strip())
    return args


@dataclass(frozen=True)
class _Ctx:
    time_from: datetime
    time_to: datetime
    interval: timedelta


def _unix_s(t: datetime) -> int:
    return int(t.timestamp() // 1)


def _unix_ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _dt(t: datetime) -> str:
    return f"toDateTime({_unix_s(t)})"


def _dt64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_unix_ms(t)})"


def _date(t: datetime) -> str:
    return f"toDate('{t.astimezone(UTC).strftime('%Y-%m-%d')}')"


def _interval_s(ctx: _Ctx) -> int:
    return int(max(ctx.interval.total_seconds(), 1))


def _interval_ms(ctx: _Ctx) -> int:
    return ctx.interval // timedelta(milliseconds=1)


def _format_duration(d: timedelta) -> str:
    """macropro.FormatDuration: largest whole unit."""
    ms = abs(d // timedelta(milliseconds=1))
    if ms == 0:
        return "0s"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _arity(name: str, args: list[str], want: int) -> None:
    if len(args) != want:
        raise ValueError(f"$__{name} expected {want} argument(s), received {len(args)}")


def _one(name: str, fn: Callable[[_Ctx, str], str]) -> Callable[[_Ctx, list[str]], str]:
    def macro(ctx: _Ctx, args: list[str]) -> str:
        _arity(name, args, 1)
        return fn(ctx, args[0])

    return macro


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _parse_go_duration(text: str) -> float:
    """Seconds of a Go time.ParseDuration string such as 5m, 1h30m, 250ms."""
    pos, total = 0, 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    while pos < len(text):
        m = _GO_DURATION.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("invalid duration ''")
    return sign * total


def _time_group(ctx: _Ctx, args: list[str]) -> str:
    _arity("timeGroup", args, 2)
    period = args[1].strip().strip("'\"")
    try:
        d = _parse_go_duration(period)
        seconds = int(math.copysign(math.floor(abs(d) + 0.5), d))  # Go math.Round: half away from zero
    except ValueError as e:
        raise ValueError(f"$__timeGroup: invalid interval {period!r}") from e
    if seconds <= 0:
        raise ValueError(f"$__timeGroup: interval must be positive, got {period!r}")
    return f"toStartOfInterval(toDateTime({args[0].strip()}), INTERVAL {seconds} second)"


def _date_time_filter(ctx: _Ctx, args: list[str]) -> str:
    _arity("dateTimeFilter", args, 2)
    d, t = args
    return (f"({d} >= {_date(ctx.time_from)} AND {d} <= {_date(ctx.time_to)}) AND "
            f"({t} >= {_dt(ctx.time_from)} AND {t} <= {_dt(ctx.time_to)})")


_MACROS: dict[str, Callable[[_Ctx, list[str]], str]] = {
    # macropro.DefaultMacros that the plugin keeps
    "interval": lambda ctx, _: _format_duration(ctx.interval),
    "interval_ms": lambda ctx, _: str(_interval_ms(ctx)),
    # the plugin's ClickHouseMacros
    "timeFilter": _one("timeFilter", lambda ctx, c: f"{c} >= {_dt(ctx.time_from)} AND {c} <= {_dt(ctx.time_to)}"),
    "timeFrom": _one("timeFrom", lambda ctx, c: f"{c} >= {_dt(ctx.time_from)}"),
    "timeTo": _one("timeTo", lambda ctx, c: f"{c} <= {_dt(ctx.time_to)}"),
    "timeGroup": _time_group,
    "fromTime": lambda ctx, _: _dt(ctx.time_from),
    "toTime": lambda ctx, _: _dt(ctx.time_to),
    "fromTime_ms": lambda ctx, _: _dt64(ctx.time_from),
    "toTime_ms": lambda ctx, _: _dt64(ctx.time_to),
    "timeFilter_ms": _one("timeFilter_ms",
                          lambda ctx, c: f"{c} >= {_dt64(ctx.time_from)} AND {c} <= {_dt64(ctx.time_to)}"),
    "dateFilter": _one("dateFilter", lambda ctx, c: f"{c} >= {_date(ctx.time_from)} AND {c} <= {_date(ctx.time_to)}"),
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": _one("timeInterval", lambda ctx, c:
                         f"toStartOfInterval(toDateTime({c}), INTERVAL {_interval_s(ctx)} second)"),
    "timeInterval_ms": _one("timeInterval_ms", lambda ctx, c:
                            f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {max(_interval_ms(ctx), 1)} millisecond)"),
    "interval_s": lambda ctx, _: str(_interval_s(ctx)),
}
_NAMES = sorted(_MACROS, key=lambda n: (-len(n), n))  # longest first, as macropro
_NAME_CHAR = re.compile(r"[_a-zA-Z0-9]")


def _expand_macros(sql: str, ctx: _Ctx) -> str:
    for name in _NAMES:
        token = "$__" + name
        out: list[str] = []
        s = sql
        while True:
            idx = s.find(token)
            if idx < 0:
                out.append(s)
                break
            after = idx + len(token)
            if after < len(s) and _NAME_CHAR.match(s[after]):
                out.append(s[:after])
                s = s[after:]
                continue
            out.append(s[:idx])
            s = s[after:]
            raw = ""
            if s.startswith("("):
                end = _closing_paren(s, 0)
                if end >= 0:
                    raw, s = s[1:end], s[end + 1:]
            # innermost first: a macro inside the arguments expands before this one
            args = [_expand_macros(a, ctx) for a in _split_args(raw)]
            out.append(_MACROS[name](ctx, args))
        sql = "".join(out)
    return sql


def expand(sql: str, time_from: datetime, time_to: datetime, interval_s: float,
           variables: Mapping[str, str | list[str]] | None = None) -> str:
    """The SQL the plugin sends to ClickHouse for `sql` over [time_from, time_to]
    with the panel's interval (seconds) and the dashboard's variable values.
    Naive datetimes are taken as UTC. Raises ValueError where the plugin
    returns an error (wrong macro arguments)."""
    if time_from.tzinfo is None:
        time_from = time_from.replace(tzinfo=UTC)
    if time_to.tzinfo is None:
        time_to = time_to.replace(tzinfo=UTC)
    ctx = _Ctx(time_from, time_to, timedelta(seconds=interval_s))
    sql = replace_variables(sql, variables or {})
    return _expand_macros(strip_comments(sql), ctx)
