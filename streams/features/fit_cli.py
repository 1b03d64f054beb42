"""``touchline fit-purchase-model``: fit the BG/NBD model on order history, write params.json.

Order history comes from ClickHouse (``--source clickhouse``, the default): the
``order_completed`` events in ``touchpoints_enriched``, each counted for the person
it ends up with after merges (followed through chains), on its calendar day in
the reporting time zone (TOUCHLINE_REPORTING_TIMEZONE). Or from a file:

- CSV ``customer_id,date[,amount]``: header optional, ISO dates (or date-times,
  whose own calendar day counts); the amount is checked to be a number, not used;
- CDNOW text: whitespace-separated ``customer_id YYYYMMDD quantity amount``, or
  ``customer_id sample_id YYYYMMDD quantity amount`` as in CDNOW_sample.txt (the
  first column is the customer).

``--format auto`` reads a file whose first line has a comma as CSV, else as CDNOW.
Purchases after ``--calibration-end`` are left out; customers whose first purchase
is later are not in the fit.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from streams.features.bgnbd import FittedModel, fit, inputs_from_days
from streams.features.purchase_model import replace_file
from streams.identity.links import final_person
from streams.settings import Settings, SettingsError
from streams.sink.query import QueryError, quote, rows

Orders = dict[str, set[int]]  # customer -> distinct purchase days (date.toordinal())


class OrderFileError(ValueError):
    """An order file that cannot be read as the format asked for."""


def _iso_day(text: str) -> int:
    text = text.strip()
    try:
        return date.fromisoformat(text).toordinal()
    except ValueError:
        return datetime.fromisoformat(text).date().toordinal()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def _read_csv(path: Path) -> Orders:
    orders: Orders = defaultdict(set)
    for i, (number, line) in enumerate(_lines(path)):
        row = next(csv.reader([line]))
        if len(row) not in (2, 3):
            raise OrderFileError(f"{path}:{number}: expected customer_id,date[,amount], got {len(row)} fields")
        try:
            day = _iso_day(row[1])
        except ValueError:
            if i == 0:
                continue  # a header
            raise OrderFileError(f"{path}:{number}: {row[1]!r} is not an ISO date") from None
        if not row[0].strip():
            raise OrderFileError(f"{path}:{number}: empty customer_id")
        if len(row) == 3 and row[2].strip():
            try:
                float(row[2])
            except ValueError:
                raise OrderFileError(f"{path}:{number}: amount {row[2]!r} is not a number") from None
        orders[row[0].strip()].add(day)
    return orders


def _read_cdnow(path: Path) -> Orders:
    orders: Orders = defaultdict(set)
    for number, line in _lines(path):
        fields = line.split()
        day = fields[-3] if len(fields) in (4, 5) else ""
        try:
            if len(day) != 8 or not day.isdigit():
                raise ValueError
            orders[fields[0]].add(date(int(day[:4]), int(day[4:6]), int(day[6:])).toordinal())
        except ValueError:
            raise OrderFileError(f"{path}:{number}: expected CDNOW 'customer_id [sample_id] YYYYMMDD quantity "
                                 f"amount', got {line.strip()!r}") from None
    return orders


def read_orders(path: Path, fmt: str = "auto") -> Orders:
    """Each customer's distinct purchase days from an order file (format csv, cdnow or auto)."""
    if fmt == "auto":
        first = next(_lines(path), (0, ""))[1]
        fmt = "csv" if "," in first else "cdnow"
    return _read_csv(path) if fmt == "csv" else _read_cdnow(path)


def clickhouse_orders(settings: Settings, calibration_end: date) -> Orders:
    """Each person's distinct order days up to ``calibration_end``, read from ClickHouse."""
    day = f"toDate(event_time, {quote(settings.reporting_timezone)})"
    found = rows(settings, f"SELECT person_id, toString({day}) AS day FROM touchpoints_enriched FINAL "
                           f"WHERE event_type = 'order_completed' AND {day} <= toDate({quote(calibration_end.isoformat())}) "
                           "GROUP BY person_id, day")
    merged_into = dict(rows(settings, "SELECT from_person, any(into_person) FROM identity_changes FINAL "
                                      "WHERE kind = 'merge' AND resolver = 'route' GROUP BY from_person"))
    orders: Orders = defaultdict(set)
    for person, d in found:
        orders[final_person(merged_into, person)].add(date.fromisoformat(d).toordinal())
    return orders


def _calibration_end(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def cmd_fit_purchase_model(args: argparse.Namespace) -> int:
    end: date = args.calibration_end
    try:
        if args.source == "clickhouse":
            orders = clickhouse_orders(Settings.from_env(), end)
        else:
            orders = read_orders(Path(args.source), args.format)
    except (OrderFileError, OSError, QueryError, SettingsError) as exc:
        print(f"touchline fit-purchase-model: {exc}", file=sys.stderr)
        return 2
    customers = [i for days in orders.values() if (i := inputs_from_days(days, end)) is not None]
    if not customers:
        print(f"touchline fit-purchase-model: no purchases on or before {end} in {args.source}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        result = fit(customers)
    except ValueError as exc:
        print(f"touchline fit-purchase-model: cannot fit: {exc}", file=sys.stderr)
        return 1
    seconds = round(time.perf_counter() - started, 3)
    if not result.converged:
        print(f"touchline fit-purchase-model: the fit did not converge ({result.evaluations} evaluations): the "
              f"{len(customers)} customers' history may put the optimum at a boundary; nothing written",
              file=sys.stderr)
        return 1
    model = FittedModel(result.params, end, result.customers, result.log_likelihood, seconds)
    try:
        replace_file(Path(args.output), model.to_json())
    except OSError as exc:
        print(f"touchline fit-purchase-model: {exc}", file=sys.stderr)
        return 2
    p = result.params
    print(f"BG/NBD on {result.customers} customers, calibration ending {end}: r={p.r:.4f} alpha={p.alpha:.4f} "
          f"a={p.a:.4f} b={p.b:.4f}, log-likelihood {result.log_likelihood:.2f}, {seconds} s; wrote {args.output}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``fit-purchase-model`` to the ``touchline`` subcommands."""
    p = sub.add_parser("fit-purchase-model", help="fit the BG/NBD purchase model (r, alpha, a, b) on order "
                                                  "history and write its parameters as JSON")
    p.add_argument("--calibration-end", required=True, metavar="DATE", type=_calibration_end,
                   help="last day of the calibration period (ISO date); later purchases are left out")
    p.add_argument("--source", default="clickhouse", metavar="clickhouse|FILE",
                   help="clickhouse (order_completed events; the default) or an order file")
    p.add_argument("--format", choices=["auto", "csv", "cdnow"], default="auto",
                   help="order file format: csv (customer_id,date[,amount]), cdnow, or auto (default: a comma "
                        "in the first line means csv)")
    p.add_argument("--output", required=True, metavar="FILE", help="the params.json to write")
    p.set_defaults(func=cmd_fit_purchase_model)
