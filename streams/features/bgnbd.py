"""The BG/NBD purchase model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way").

Pure: no Kafka, Faust or ClickHouse. The paper's conventions:

- time is in weeks; a day is a calendar day (the caller picks the time zone);
- several purchases on one calendar day are one transaction;
- ``x`` is the number of repeat transactions (distinct purchase days minus 1),
  ``t_x`` the time from the first purchase to the last, ``T`` the time from the
  first purchase to the end of calibration (or to "now" in the stream); a
  purchase on the end day belongs to the period it ends.

Day numbers are integers counting calendar days (``date.toordinal()`` for a
date; any consistent count works). ``inputs_from_days`` builds (x, t_x, T) from
a list of purchase days; ``PurchaseDays`` is the bounded per-person state the
stream keeps and merges. ``fit`` estimates r, alpha, a, b by maximum likelihood
(Nelder–Mead on the log-parameters, customers grouped by identical inputs);
``p_alive`` and ``conditional_expected`` are the paper's closed forms for the
loaded parameters.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

DAYS_PER_WEEK = 7
HORIZON_DAYS = 4096  # purchase days kept one by one before the latest (about 11 years; at most 1,024 hex digits)
SERIES_TOLERANCE = 1e-14  # relative bound on the truncated tail of a hypergeometric series
_MAX_TERMS = 1_000_000


def day_number(day: date | int) -> int:
    return day.toordinal() if isinstance(day, date) else int(day)


@dataclass(frozen=True)
class Inputs:
    """One customer's (x, t_x, T): repeat transactions, weeks to the last purchase, weeks observed."""

    x: int
    t_x: float
    T: float

    def __post_init__(self) -> None:
        if self.x < 0 or not 0 <= self.t_x <= self.T or (self.x == 0 and self.t_x != 0):
            raise ValueError(f"not BG/NBD inputs: x={self.x}, t_x={self.t_x}, T={self.T} "
                             "(need x >= 0, 0 <= t_x <= T, t_x = 0 when x = 0)")


def inputs_from_days(days: Iterable[date | int], calibration_end: date | int) -> Inputs | None:
    """(x, t_x, T) from every purchase day on or before ``calibration_end``; None if there is none."""
    end = day_number(calibration_end)
    distinct = {d for d in map(day_number, days) if d <= end}
    if not distinct:
        return None
    first = min(distinct)
    return Inputs(len(distinct) - 1, (max(distinct) - first) / DAYS_PER_WEEK, (end - first) / DAYS_PER_WEEK)


@dataclass(frozen=True)
class PurchaseDays:
    """A person's purchase days in bounded state: what (x, t_x, T) and the next-purchase date need.

    ``first`` and ``last`` purchase day and ``count`` of distinct purchase days, plus ``recent``,
    a bitmap of the purchase days within HORIZON_DAYS of the last (bit i: day ``last - i``), so
    that a late or repeated event on a day already counted is recognised. The bitmap holds only
    as many bits as the person's span, so a short history costs a few bytes.

    ``add`` is ``combine`` with a one-day state, so arrival order never matters and merging two
    persons gives the state of their combined purchase days, exactly, unless a day is *hidden*:
    a purchase day older than HORIZON_DAYS before the person's last purchase, other than the first,
    is counted but no longer known. When the other side (a late event, or the person merged in)
    has purchases within the span where hidden days lie, whether they coincide cannot be told:
    they are counted as distinct days and ``exact`` turns False for good.
    """

    first: int
    last: int
    count: int
    recent: int
    exact: bool = True

    @classmethod
    def single(cls, day: date | int) -> PurchaseDays:
        d = day_number(day)
        return cls(d, d, 1, 1)

    def add(self, day: date | int) -> PurchaseDays:
        return self.combine(PurchaseDays.single(day))

    def _known(self, last: int) -> int:
        """The known days (window and first) as a bitmap aligned so that bit i is day ``last - i``."""
        return (self.recent << (last - self.last)) | (1 << (last - self.first))

    def _hidden_overlaps(self, other: PurchaseDays) -> bool:
        """Whether this state has hidden days where ``other`` has purchase days."""
        hidden = self.count - self.recent.bit_count() - (self.last - self.first >= HORIZON_DAYS)
        lo, hi = max(self.first + 1, other.first), min(self.last - HORIZON_DAYS, other.last)
        return hidden > 0 and lo <= hi

    def combine(self, other: PurchaseDays) -> PurchaseDays:
        last = max(self.last, other.last)
        mine, theirs = self._known(last), other._known(last)
        return PurchaseDays(
            first=min(self.first, other.first), last=last,
            count=self.count + other.count - (mine & theirs).bit_count(),
            recent=(mine | theirs) & ((1 << HORIZON_DAYS) - 1),
            exact=self.exact and other.exact and not (self._hidden_overlaps(other) or other._hidden_overlaps(self)),
        )

    def inputs(self, as_of: date | int) -> Inputs:
        """(x, t_x, T) with T running to ``as_of`` (the end of calibration, or today)."""
        end = day_number(as_of)
        if end < self.last:
            raise ValueError(f"as_of day {end} is before the last purchase day {self.last}")
        return Inputs(self.count - 1, (self.last - self.first) / DAYS_PER_WEEK, (end - self.first) / DAYS_PER_WEEK)

    def next_purchase_day(self) -> int | None:
        """Last purchase day plus the person's mean interval between purchase days, to the nearest day
        (halves up); None with fewer than two purchase days. The mean, not the median: it needs
        only first, last and count ((last - first) / (count - 1)), so it merges exactly."""
        if self.count < 2:
            return None
        return self.last + math.floor((self.last - self.first) / (self.count - 1) + 0.5)

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "count": self.count,
                "recent": format(self.recent, "x"), "exact": self.exact}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PurchaseDays:
        return cls(int(data["first"]), int(data["last"]), int(data["count"]), int(data["recent"], 16),
                   bool(data["exact"]))


class ParamsError(ValueError):
    """BG/NBD parameters or a params file that cannot be used."""


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ParamsError(f"BG/NBD parameter {name} must be a positive finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Params:
    """r, alpha (purchase rate ~ Gamma(r, alpha), per week) and a, b (dropout ~ Beta(a, b))."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _positive(f.name, getattr(self, f.name)))

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


MODEL = "bgnbd"


@dataclass(frozen=True)
class FittedModel:
    """A params.json file: the parameters and what they were fitted on."""

    params: Params
    calibration_end: date
    customers: int
    log_likelihood: float
    fit_seconds: float

    def to_json(self) -> str:
        return json.dumps({
            "model": MODEL, "time_unit": "week", "params": self.params.as_dict(),
            "calibration_end": self.calibration_end.isoformat(), "customers": self.customers,
            "log_likelihood": self.log_likelihood, "fit_seconds": self.fit_seconds,
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FittedModel:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamsError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("model") != MODEL or data.get("time_unit") != "week":
            raise ParamsError(f'not a BG/NBD params file: expected "model": "{MODEL}" and "time_unit": "week"')
        try:
            raw = data["params"]
            params = Params(**{f.name: raw[f.name] for f in fields(Params)})
            return cls(params, date.fromisoformat(data["calibration_end"]), int(data["customers"]),
                       float(data["log_likelihood"]), float(data["fit_seconds"]))
        except (KeyError, TypeError) as exc:
            raise ParamsError(f"params file is missing {exc}") from None
        except ValueError as exc:
            raise ParamsError(f"params file: {exc}") from None


def _log_odds_dead(p: Params, x: int, t_x: float, T: float) -> float:
    """log of P(dead) / P(alive) given the inputs; -inf when x = 0 (the model only drops out after a repeat)."""
    if x == 0:
        return -math.inf
    return math.log(p.a / (p.b + x - 1)) + (p.r + x) * math.log((p.alpha + T) / (p.alpha + t_x))


def _log1p_exp(d: float) -> float:
    return d + math.log1p(math.exp(-d)) if d > 0 else math.log1p(math.exp(d))


def p_alive(p: Params, i: Inputs) -> float:
    """P(alive | x, t_x, T): 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))."""
    return math.exp(-_log1p_exp(_log_odds_dead(p, i.x, i.t_x, i.T)))


def log_likelihood(p: Params, customers: Iterable[Inputs]) -> float:
    """The sample's log-likelihood (the paper's equation 6, summed over customers)."""
    return _grouped_log_likelihood(Counter(customers))(p)


def _grouped_log_likelihood(groups: Counter[Inputs]) -> Callable[[Params], float]:
    rows = [(i.x, i.t_x, i.T, n) for i, n in groups.items()]

    def ll(p: Params) -> float:
        r, alpha, a, b = p.r, p.alpha, p.a, p.b
        shared = -math.lgamma(r) + r * math.log(alpha) + math.lgamma(a + b) - math.lgamma(b)
        total = 0.0
        for x, t_x, T, n in rows:
            one = (math.lgamma(r + x) + math.lgamma(b + x) - math.lgamma(a + b + x)
                   - (r + x) * math.log(alpha + T) + _log1p_exp(_log_odds_dead(p, x, t_x, T)))
            total += n * (one + shared)
        return total

    return ll


@dataclass(frozen=True)
class FitResult:
    params: Params
    log_likelihood: float
    customers: int
    evaluations: int
    converged: bool


def fit(customers: Iterable[Inputs], start: Params = Params(1.0, 1.0, 1.0, 1.0)) -> FitResult:
    """Maximum-likelihood r, alpha, a, b: Nelder–Mead on the log-parameters, restarted from its
    best point until a converged run improves the log-likelihood by less than 1e-10 relatively.
    ``converged`` is False when a run used up its evaluations (the optimum may lie at a boundary):
    the parameters are then not an estimate. Without a single repeat purchase the likelihood has
    no maximum at all: ValueError."""
    groups = Counter(customers)
    if not any(i.x for i in groups):
        raise ValueError(f"none of the {sum(groups.values())} customers made a repeat purchase: "
                         "the likelihood has no maximum (it grows as r / alpha goes to 0)")
    ll = _grouped_log_likelihood(groups)

    def cost(v: Sequence[float]) -> float:
        try:
            value = ll(Params(*(math.exp(c) for c in v)))
        except (ParamsError, ValueError, OverflowError):  # a parameter at 0 or inf, or a log of 0
            return math.inf
        return -value if math.isfinite(value) else math.inf

    point = [math.log(v) for v in start.as_dict().values()]
    best, evaluations, converged = cost(point), 0, False
    for _ in range(20):
        point, value, used, converged = _nelder_mead(cost, point)
        evaluations += used
        improvement, best = best - value, value
        if not converged or improvement <= 1e-10 * max(1.0, abs(best)):
            break
    return FitResult(Params(*(math.exp(c) for c in point)), -best, sum(groups.values()), evaluations, converged)


def _nelder_mead(f: Callable[[Sequence[float]], float], start: list[float], step: float = 0.5,
                 xtol: float = 1e-8, rtol: float = 1e-12,
                 max_evaluations: int = 20_000) -> tuple[list[float], float, int, bool]:
    """Minimise ``f`` from ``start`` (standard coefficients: reflect 1, expand 2, contract 1/2, shrink 1/2).
    Returns (best point, its value, evaluations, converged: every vertex within xtol of the best in
    each coordinate and their values within rtol of the best, relatively)."""
    n = len(start)
    simplex = [list(start)] + [[c + step * (i == j) for j, c in enumerate(start)] for i in range(n)]
    values = [f(v) for v in simplex]
    evaluations = n + 1
    while evaluations < max_evaluations:
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        spread = max(abs(c - b) for v in simplex[1:] for c, b in zip(v, simplex[0], strict=True))
        if spread <= xtol and values[-1] - values[0] <= rtol * max(1.0, abs(values[0])):
            return simplex[0], values[0], evaluations, True
        centroid = [sum(v[j] for v in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = _towards(centroid, worst, -1.0)
        fr = f(reflected)
        evaluations += 1
        if fr < values[0]:
            expanded = _towards(centroid, worst, -2.0)
            fe = f(expanded)
            evaluations += 1
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = _towards(centroid, worst, -0.5 if fr < values[-1] else 0.5)
            fc = f(contracted)
            evaluations += 1
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0]] + [_towards(simplex[0], v, 0.5) for v in simplex[1:]]
                values = [values[0]] + [f(v) for v in simplex[1:]]
                evaluations += n
    best = min(range(n + 1), key=values.__getitem__)
    return simplex[best], values[best], evaluations, False


def _towards(origin: Sequence[float], target: Sequence[float], coef: float) -> list[float]:
    """origin + coef (target - origin)."""
    return [o + coef * (t - o) for o, t in zip(origin, target, strict=True)]


def hypergeometric(upper: Sequence[float], lower: Sequence[float], z: float) -> float:
    """The generalised hypergeometric series sum_n prod (u)_n / prod (l)_n z^n / n!, with one more
    upper than lower parameter (so 2F1(a, b; c; z) is ``hypergeometric((a, b), (c,), z)``), for |z| < 1.

    Summed until the tail is provably below SERIES_TOLERANCE times the sum: past the point where
    every u + n and l + n is positive, each ratio (u + n) / (l + n) moves monotonically towards 1,
    so later term ratios are at most rho = |z| prod max((u + n) / (l + n), 1) and the tail at most
    |term| rho / (1 - rho). The number of terms grows like 1 / (1 - |z|).
    """
    if len(upper) != len(lower) + 1:
        raise ValueError("hypergeometric: give one more upper than lower parameter")
    if not -1 < z < 1:
        raise ValueError(f"hypergeometric: the series converges for |z| < 1, got z={z}")
    if any(c <= 0 and c == int(c) for c in lower):
        raise ValueError(f"hypergeometric: a lower parameter is a non-positive integer: {lower}")
    pairs = list(zip(upper, [*lower, 1.0], strict=True))
    start = max(0.0, *(-c for pair in pairs for c in pair))
    term = total = 1.0
    for n in range(_MAX_TERMS):
        ratio = z
        for u, lo in pairs:
            ratio *= (u + n) / (lo + n)
        if n > start:
            rho = abs(z)
            for u, lo in pairs:
                rho *= max((u + n) / (lo + n), 1.0)
            if rho < 1 and abs(term) * rho / (1 - rho) <= SERIES_TOLERANCE * abs(total):
                return total
        term *= ratio
        if term == 0:
            return total
        total += term
    raise ArithmeticError(f"hypergeometric series did not converge in {_MAX_TERMS} terms (z={z})")


def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss's 2F1(a, b; c; z) by its series (|z| < 1)."""
    return hypergeometric((a, b), (c,), z)


def conditional_expected(p: Params, i: Inputs, t: float) -> float:
    """E[Y(t) | x, t_x, T]: expected transactions in the next ``t`` weeks (the paper's equation 10)

        (a+b+x-1)/(a-1) [1 - q^(r+x) 2F1(r+x, b+x; a+b+x-1; z)] P(alive),
        q = (alpha+T)/(alpha+T+t), z = t/(alpha+T+t),

    evaluated in an equivalent form without the removable singularity at a = 1 or the pole at
    a+b+x-1 = 0, and whose terms do not overflow for large x. Euler's transformation turns
    q^(r+x) 2F1(r+x, b+x; c; z) into q^(a-1) 2F1(c-r-x, a-1; c; z) (as 1 - z = q), and splitting
    the factor a-1 out of that series gives, with c = a+b+x-1, s = a+b-1-r, L = -ln q,

        [c L (1 - e^-((a-1)L)) / ((a-1)L) - q^(a-1) s z 3F2(s+1, a, 1; c+1, 2; z)] P(alive).
    """
    if t < 0:
        raise ValueError(f"t must be >= 0 weeks, got {t}")
    if t == 0:
        return 0.0
    c, s = p.a + p.b + i.x - 1, p.a + p.b - 1 - p.r
    log_q = -math.log1p(t / (p.alpha + i.T))
    y = (p.a - 1) * -log_q
    one_minus_q_power = -math.expm1(-y) / y if y else 1.0  # (1 - q^(a-1)) / ((a-1) L)
    z = t / (p.alpha + i.T + t)
    series = s * z * hypergeometric((s + 1, p.a, 1.0), (c + 1, 2.0), z)
    return (-c * log_q * one_minus_q_power - math.exp((p.a - 1) * log_q) * series) * p_alive(p, i)


def expected_transactions(p: Params, t: float) -> float:
    """E[X(t)]: expected repeat transactions of a customer in the ``t`` weeks after their first
    purchase (equation 10 at x = t_x = T = 0)."""
    return conditional_expected(p, Inputs(0, 0.0, 0.0), t)
