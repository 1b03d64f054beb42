"""Category interest: exponentially decayed weights per category, long- and short-term. Pure.

Every categorised product touch (a product view, a cart add, each line of an
order) adds weight 1 to its category (cut to ``interest_depth`` path segments),
decaying in event time: at time ``now`` an event at t weighs 2^((t - now) / H)
for half-life H. The state keeps, per category, log2 of the sum of 2^(t / H) for
the long and the short half-life: the weights relative to the Unix epoch, in log
space (t / H is about 7,000 for a 3-day half-life today, far outside a float's
range as a power of two, while its logarithm keeps ~1e-12 relative precision).

Adding an event or merging two persons is a log-add-exp per category:
commutative, and associative up to float rounding, so any arrival order and any
merge give the same distributions to about 1e-12. Each distribution is its
weights normalised (the common factor 2^(-now / H) cancels), so it only moves
with new events; the short-term mass -- the decayed number of events,
2^(log-weight - now / H) summed -- shrinks as ``now`` advances.

Bounded: at most ``max_categories`` categories per person. A new one beyond that
drops the category with the least long-term weight (ties: the first by name),
so results are exact and order-independent while a person has touched at most
that many categories; beyond, they may depend on arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from streams.features.config import FeatureSettings
from streams.features.windows import DAY_MS

Interest = dict[str, list[float]]  # category -> [log2 long-term weight, log2 short-term weight]


def category(path: str, depth: int) -> str:
    return "/".join(path.split("/")[:depth]) if depth else path


def _log2_add(x: float, y: float) -> float:
    hi, lo = max(x, y), min(x, y)
    return hi + math.log1p(2.0 ** (lo - hi)) / math.log(2)


def _half_lives_ms(cfg: FeatureSettings) -> tuple[float, float]:
    return cfg.long_half_life_days * DAY_MS, cfg.short_half_life_days * DAY_MS


def _capped(interest: Interest, cfg: FeatureSettings) -> Interest:
    while len(interest) > cfg.max_categories:
        del interest[min(interest, key=lambda c: (interest[c][0], c))]
    return interest


def _joined(current: list[float] | None, weights: list[float]) -> list[float]:
    return list(weights) if current is None else [_log2_add(x, y) for x, y in zip(current, weights, strict=True)]


def add(interest: Interest, paths: Iterable[str], t_ms: int, cfg: FeatureSettings) -> None:
    """Count one touch of each category path at ``t_ms``, in place."""
    long_ms, short_ms = _half_lives_ms(cfg)
    for path in paths:
        c = category(path, cfg.interest_depth)
        interest[c] = _joined(interest.get(c), [t_ms / long_ms, t_ms / short_ms])
        _capped(interest, cfg)


def merge(a: Interest, b: Interest, cfg: FeatureSettings) -> Interest:
    out = {c: list(w) for c, w in a.items()}
    for c, w in b.items():
        out[c] = _joined(out.get(c), w)
    return _capped(out, cfg)


def distribution(interest: Interest, term: int) -> dict[str, float]:
    """Share of each category, long-term (``term`` 0) or short-term (1); {} without touches."""
    if not interest:
        return {}
    top = max(w[term] for w in interest.values())
    weights = {c: 2.0 ** (w[term] - top) for c, w in interest.items()}
    total = sum(weights.values())
    return {c: weights[c] / total for c in sorted(weights)}


def short_events(interest: Interest, now_ms: int, cfg: FeatureSettings) -> float:
    """The short-term mass at ``now_ms``: each touch counted 2^(-age / short half-life)."""
    short_ms = _half_lives_ms(cfg)[1]
    return sum(2.0 ** (w[1] - now_ms / short_ms) for w in interest.values())


def divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence of two distributions, base 2: 0 (same) to 1 (disjoint)."""
    js = 0.0
    for c in p.keys() | q.keys():
        pc, qc = p.get(c, 0.0), q.get(c, 0.0)
        m = (pc + qc) / 2
        js += sum(x * math.log2(x / m) for x in (pc, qc) if x > 0) / 2
    return min(1.0, max(0.0, js))
