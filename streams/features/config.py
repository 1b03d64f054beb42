"""The knobs of member features: half-lives, caps and segment thresholds, with their defaults.

Half-lives, ``interest_depth``, ``max_categories`` and ``top_places`` shape the state
itself (a person's weights and kept entries), so changing them takes a rebuild of the
feature state from the events; the segment thresholds only change what ``snapshot`` derives.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.features.windows import WINDOWS

SHIFT_THRESHOLD = 0.25  # Jensen-Shannon divergence (bits) of short- vs long-term interest


@dataclass(frozen=True)
class FeatureSettings:
    # Category interest (streams/features/interest.py)
    long_half_life_days: float = 90.0
    short_half_life_days: float = 3.0
    interest_depth: int = 2  # category path segments kept: women/fashion/dresses -> women/fashion; 0: all
    max_categories: int = 12  # per person; beyond, the lightest long-term category is dropped
    shift_threshold: float = SHIFT_THRESHOLD
    shift_min_events: float = 3.0  # decayed short-term events needed before a shift is called
    # Home store and shopping guide: stores (and guides) kept per person, by orders then events
    top_places: int = 8
    # Member grid: orders and average order value in a window
    grid_window: str = "90d"
    grid_high_orders: int = 3  # at least this many orders: high frequency
    grid_high_aov: float = 500.0  # at least this average order value: high basket
    # Browse without buying: sessions + consultations + mini-games in a window, no order there
    browse_window: str = "30d"
    browse_min_engagements: int = 3
    # Lifecycle, in days of event time
    new_days: int = 30  # first seen less than this ago: new
    at_risk_days: int = 30  # nothing for this long: at risk
    lapsed_days: int = 90  # nothing for this long: lapsed
    # The purchase model's calendar days (several orders on one day count as one transaction):
    # days in this IANA zone, the reporting zone's (TOUCHLINE_REPORTING_TIMEZONE), so the stream
    # counts the days `touchline fit-purchase-model` counts
    day_zone: str = "UTC"

    def __post_init__(self) -> None:
        for window in (self.grid_window, self.browse_window):
            if window not in WINDOWS:
                raise ValueError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
        if min(self.long_half_life_days, self.short_half_life_days) <= 0:
            raise ValueError("half-lives must be positive")
        if not 0 < self.at_risk_days < self.lapsed_days:
            raise ValueError("need 0 < at_risk_days < lapsed_days")
        if self.interest_depth < 0 or self.max_categories < 1 or self.top_places < 1:
            raise ValueError("interest_depth >= 0, max_categories >= 1 and top_places >= 1")
        try:
            ZoneInfo(self.day_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.day_zone!r}") from None


DEFAULTS = FeatureSettings()
