"""Segments derived from a person's features at snapshot time. Pure.

- Member grid: orders and average order value in ``grid_window``: high frequency
  at ``grid_high_orders`` orders or more, high basket at an average of
  ``grid_high_aov`` or more; None without an order in the window.
- Browse without buying: no order in ``browse_window`` but at least
  ``browse_min_engagements`` sessions, consultations and mini-games there.
- Lifecycle, by event time: ``lapsed`` after ``lapsed_days`` without an event,
  ``at_risk`` after ``at_risk_days``, else ``new`` if first seen less than
  ``new_days`` ago, else ``active``.
- Consent per contact channel and purpose: the latest statement by event time
  about that channel or about ``all`` wins (a withdrawal wins a tie in time).
- Reachable: contact channels with marketing consent and a way to send -- a phone
  (sms, phone_call), an email, a WeChat official-account follow (wechat), an app
  install (app_push: seen on the app channel). Preferred channel: the reachable
  one whose messages the person opened and clicked most; ties in ``CONTACT_CHANNELS``
  order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from streams.features.config import FeatureSettings
from streams.features.windows import DAY_MS

CONTACT_CHANNELS = ("wechat", "app_push", "sms", "email", "phone_call")
CONSENT_CHANNELS = (*CONTACT_CHANNELS, "all")
PURPOSES = ("marketing", "analytics", "profiling")


def member_grid(orders: int, revenue_cents: int, cfg: FeatureSettings) -> str | None:
    if not orders:
        return None
    frequency = "high" if orders >= cfg.grid_high_orders else "low"
    basket = "high" if revenue_cents / orders >= cfg.grid_high_aov * 100 else "low"
    return f"{frequency}_frequency_{basket}_basket"


def browses_without_buying(window: Mapping[str, int], cfg: FeatureSettings) -> bool:
    engaged = window["sessions"] + window["consultations"] + window["games"]
    return not window["orders"] and engaged >= cfg.browse_min_engagements


def lifecycle(first_ms: int | None, last_ms: int | None, now_ms: int, cfg: FeatureSettings) -> str | None:
    if first_ms is None or last_ms is None:
        return None
    quiet = now_ms - last_ms
    if quiet >= cfg.lapsed_days * DAY_MS:
        return "lapsed"
    if quiet >= cfg.at_risk_days * DAY_MS:
        return "at_risk"
    return "new" if now_ms - first_ms < cfg.new_days * DAY_MS else "active"


def consent_rank(statement: Any) -> tuple[int, bool, str]:
    """Order of consent statements [event time, event id, given]: later wins, a withdrawal wins a tie."""
    t, event_id, given = statement
    return t, not given, event_id


def consents(statements: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, bool]]:
    """Purpose -> contact channel -> consented, from the latest statement per "channel:purpose"."""
    out: dict[str, dict[str, bool]] = {}
    for purpose in PURPOSES:
        for channel in CONTACT_CHANNELS:
            said = [s for s in (statements.get(f"{channel}:{purpose}"), statements.get(f"all:{purpose}")) if s]
            if said:
                out.setdefault(purpose, {})[channel] = bool(max(said, key=consent_rank)[2])
    return out


def reachable(marketing: Mapping[str, bool], id_types: Collection[str], followed: bool,
              channels_seen: Collection[str]) -> list[str]:
    means = {"wechat": followed, "app_push": "app" in channels_seen, "sms": "phone" in id_types,
             "email": "email" in id_types, "phone_call": "phone" in id_types}
    return [c for c in CONTACT_CHANNELS if means[c] and marketing.get(c, False)]


def preferred_channel(reachable_channels: Sequence[str], engaged: Mapping[str, int]) -> str | None:
    return max(reachable_channels, key=lambda c: (engaged.get(c, 0), -CONTACT_CHANNELS.index(c)), default=None)
