"""The features stage's per-person entry (streams/features/member.py): absorbs applied once,
the published record and its contract, the publishing rule, lifecycle due times, and the
TOUCHLINE_FEATURE_* settings."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import avro, redelivery
from streams.features import bgnbd, member, profile
from streams.features.config import FeatureSettings
from streams.features.windows import DAY_MS
from streams.settings import Settings, SettingsError
from tests.conftest import T0, touchpoint

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = FeatureSettings()


def enriched(eid: str, kind: str, t: int, member_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"person_id": "p", "member_id": member_id, "processed_at_ms": t,
            "touchpoint": touchpoint(eid, kind, t, **fields)}


def order(eid: str, t: int, revenue: float) -> dict[str, Any]:
    return enriched(eid, "order_completed", t, properties={"order_id": f"o-{eid}", "revenue": revenue})


def entry_of(person: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    e = member.empty(person, 0)
    for ev in events:
        profile.apply(e["profile"], ev, CFG)
    return json.loads(json.dumps(e))  # as the table's changelog gives it back


kinds = st.sampled_from(["page_viewed", "product_viewed", "product_added", "order_completed", "guide_chatted"])
plans = st.lists(st.tuples(kinds, st.integers(0, 40 * DAY_MS)), min_size=1, max_size=15)


def events_of(prefix: str, plan: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [order(f"{prefix}{i}", T0 + t, 10.0 + i) if k == "order_completed" else enriched(f"{prefix}{i}", k, T0 + t)
            for i, (k, t) in enumerate(plan)]


@FAST
@given(plans, plans)
def test_an_absorb_folds_the_merged_persons_events_in_once(a_plan: list[tuple[str, int]],
                                                            b_plan: list[tuple[str, int]]) -> None:
    a_events, b_events = events_of("a", a_plan), events_of("b", b_plan)
    survivor, gone = entry_of("p-a", a_events), entry_of("p-b", b_events)
    gone["absorbed"] = ["p-old"]
    handed = json.loads(member.handed_over(gone))  # what the absorb op carries
    assert member.absorb(survivor, "p-b", handed, CFG)
    now = T0 + 41 * DAY_MS
    combined = entry_of("p-a", a_events + b_events)
    got, want = member.record(survivor, now, CFG), member.record(combined, now, CFG)
    assert got is not None and want is not None
    for k in ("first_seen_ms", "last_seen_ms", "orders_total", "revenue_total", "page_views_90d", "orders_30d",
              "consultations_90d", "sessions_90d", "lifecycle", "member_grid"):
        assert got[k] == want[k], k
    assert survivor["absorbed"] == ["p-old", "p-b"]
    after = json.loads(json.dumps(survivor))
    assert not member.absorb(survivor, "p-b", handed, CFG)  # delivered again: nothing changes
    assert not member.absorb(survivor, "p-a", handed, CFG)  # never itself
    assert survivor == after


def test_the_absorbed_record_is_bounded() -> None:
    survivor = entry_of("p-a", [enriched("e", "page_viewed", T0)])
    for i in range(redelivery.ABSORBED_KEPT + 10):
        assert member.absorb(survivor, f"p-{i}", entry_of(f"p-{i}", []), CFG)
    assert len(survivor["absorbed"]) == redelivery.ABSORBED_KEPT and survivor["absorbed"][-1] == f"p-{redelivery.ABSORBED_KEPT + 9}"


def test_the_record_is_the_member_features_contract_and_round_trips() -> None:
    e = entry_of("p-1", [enriched("e1", "page_viewed", T0, context={"kol_post_id": "kol-1"}),
                         order("e2", T0 + DAY_MS, 600.0)])
    e["src"] = {"0": 12}  # redelivery marks: not a feature
    rec = member.record(e, T0 + 2 * DAY_MS, CFG)
    assert rec is not None
    fields = {f["name"] for f in avro.contract(avro.MEMBER_FEATURES).parsed["fields"]}
    assert set(rec) == fields
    assert avro.decode_as(avro.MEMBER_FEATURES, avro.encode(avro.MEMBER_FEATURES, rec)) == rec
    assert (rec["as_of_ms"], rec["days_since_last_visit"], rec["orders_total"]) == (T0 + 2 * DAY_MS, 1, 1)
    assert rec["first_touch"]["entry"] == "kol" and rec["first_touch"]["kol_post_id"] == "kol-1"
    assert rec["first_touch"]["campaign"] is None
    assert member.record(member.empty("p-2", 0), T0, CFG) is None  # nothing to publish before an event


def test_a_snapshot_is_published_only_when_a_published_value_changed() -> None:
    e = entry_of("p-1", [enriched("e1", "page_viewed", T0)])
    first = member.refresh(e, T0, CFG)
    assert first is not None and e["at"] == T0
    assert member.refresh(e, T0 + 60_000, CFG) is None  # only as_of moved
    assert e["at"] == T0 + 60_000
    profile.apply(e["profile"], enriched("e2", "page_viewed", T0 + 120_000), CFG)
    second = member.refresh(e, T0 + 120_000, CFG)
    assert second is not None and second["page_views_1h"] == 2
    assert member.refresh(json.loads(json.dumps(e)), T0 + 120_000, CFG) is None  # after the changelog too


def test_lifecycle_boundaries_are_due_on_stream_time() -> None:
    e = entry_of("p-1", [enriched("e1", "page_viewed", T0)])
    assert member.next_due(e, CFG) is None  # no snapshot yet
    assert member.refresh(e, T0, CFG)["lifecycle"] == "new"  # type: ignore[index]
    due = member.next_due(e, CFG)
    assert due == T0 + CFG.new_days * DAY_MS  # new -> active (first seen 30 days ago) ...
    assert member.refresh(e, due, CFG)["lifecycle"] == "at_risk"  # type: ignore[index]  # ... = quiet 30 days
    due = member.next_due(e, CFG)
    assert due == T0 + CFG.lapsed_days * DAY_MS
    assert member.refresh(e, due, CFG)["lifecycle"] == "lapsed"  # type: ignore[index]
    assert member.next_due(e, CFG) is None


def test_feature_settings_come_from_the_environment() -> None:
    s = Settings.from_env({"TOUCHLINE_FEATURE_AT_RISK_DAYS": "14", "TOUCHLINE_FEATURE_GRID_WINDOW": "30d",
                           "TOUCHLINE_FEATURE_SHIFT_THRESHOLD": "0.3"})
    cfg = s.feature_settings()
    assert (cfg.at_risk_days, cfg.grid_window, cfg.shift_threshold) == (14, "30d", 0.3)
    # the purchase model's days are the reporting zone's (the one knob for days everywhere)
    assert Settings().feature_settings() == FeatureSettings(day_zone="Asia/Shanghai")
    assert Settings.from_env({"TOUCHLINE_REPORTING_TIMEZONE": "UTC"}).feature_settings() == FeatureSettings()
    every = {f"feature_{name}" for name in FeatureSettings.__dataclass_fields__} - {"feature_day_zone"}
    assert every <= set(Settings.__dataclass_fields__)  # each knob has its TOUCHLINE_FEATURE_* setting


@pytest.mark.parametrize(("env", "needle"), [
    ({"TOUCHLINE_FEATURE_GRID_WINDOW": "2d"}, "'2d'"),
    ({"TOUCHLINE_FEATURE_AT_RISK_DAYS": "120"}, "at_risk_days"),
    ({"TOUCHLINE_FEATURE_SHORT_HALF_LIFE_DAYS": "0"}, "half-lives"),
    ({"TOUCHLINE_FEATURE_TOP_PLACES": "three"}, "TOUCHLINE_FEATURE_TOP_PLACES"),
])
def test_bad_feature_settings_are_refused_at_start(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


# The purchase outlook in the published record, for parameters worked through by hand:
# r = 1, alpha = 1, a = 2, b = 1 (per week). Orders on UTC days N and N + 7 (two distinct days),
# the snapshot on day N + 14: x = 1, t_x = 1, T = 2 weeks.
#   P(alive) = 1 / (1 + a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x)) = 1 / (1 + 2 (3/2)^2) = 2/11
#   E[Y(t)] = (a + b + x - 1) / (a - 1) [1 - q^(r + x) 2F1(r + x, b + x; a + b + x - 1; z)] P(alive),
#   with t = 30/7, q = (alpha + T) / (alpha + T + t) = 7/17, z = 10/17, and by Euler's integral
#   2F1(2, 2; 3; z) = 2 / z^2 (z / (1 - z) + ln(1 - z)), so
#   E = 3 [1 - (49/289) (289/50) (10/7 + ln(7/17))] 2/11 = 6/11 (-2/5 + 49/50 ln(17/7))
# Next purchase: the last day plus the mean interval (7 days), day N + 14, midnight UTC.
HAND = bgnbd.Params(r=1.0, alpha=1.0, a=2.0, b=1.0)
HAND_P_ALIVE = 2 / 11
HAND_EXPECTED_30D = 6 / 11 * (-2 / 5 + 49 / 50 * math.log(17 / 7))
DAY_N = T0 - T0 % DAY_MS + DAY_MS  # midnight UTC


def two_order_days() -> dict[str, Any]:
    return entry_of("p-buyer", [order("o1", DAY_N + 3_600_000, 100.0), enriched("v", "page_viewed", DAY_N + 5 * DAY_MS),
                                order("o2", DAY_N + 7 * DAY_MS + 3_600_000, 50.0)])


def test_the_published_purchase_outlook_is_the_closed_form_for_the_loaded_parameters() -> None:
    rec = member.record(two_order_days(), DAY_N + 14 * DAY_MS + 12 * 3_600_000, CFG, HAND)
    assert rec is not None
    assert math.isclose(rec["p_alive"], HAND_P_ALIVE, rel_tol=1e-12)
    assert math.isclose(rec["expected_purchases_30d"], HAND_EXPECTED_30D, rel_tol=1e-12)
    inputs = bgnbd.Inputs(x=1, t_x=1.0, T=2.0)  # the same, through the model's own closed forms
    assert rec["p_alive"] == bgnbd.p_alive(HAND, inputs)
    assert rec["expected_purchases_30d"] == bgnbd.conditional_expected(HAND, inputs, 30 / 7)
    assert rec["next_purchase_ms"] == DAY_N + 14 * DAY_MS
    assert avro.decode_as(avro.MEMBER_FEATURES, avro.encode(avro.MEMBER_FEATURES, rec)) == rec


def test_without_parameters_the_outlook_is_null_and_the_next_purchase_is_still_published() -> None:
    rec = member.record(two_order_days(), DAY_N + 14 * DAY_MS, CFG)
    assert rec is not None
    assert (rec["p_alive"], rec["expected_purchases_30d"], rec["next_purchase_ms"]) == (None, None, DAY_N + 14 * DAY_MS)
    browser = member.record(entry_of("p-2", [enriched("v", "page_viewed", DAY_N)]), DAY_N + DAY_MS, CFG, HAND)
    assert browser is not None  # no order: nothing to say even with parameters
    assert (browser["p_alive"], browser["expected_purchases_30d"], browser["next_purchase_ms"]) == (None, None, None)
    one = member.record(entry_of("p-3", [order("o", DAY_N, 10.0)]), DAY_N + DAY_MS, CFG, HAND)
    assert one is not None and one["p_alive"] == 1.0 and one["next_purchase_ms"] is None  # x = 0


def test_new_parameters_are_published_at_the_persons_next_snapshot() -> None:
    e = two_order_days()
    now = DAY_N + 14 * DAY_MS
    first = member.refresh(e, now, CFG, HAND)
    assert first is not None and first["p_alive"] == bgnbd.p_alive(HAND, bgnbd.Inputs(1, 1.0, 2.0))
    assert member.refresh(e, now + 60_000, CFG, HAND) is None  # same parameters, same day: nothing new
    refit = bgnbd.Params(r=0.5, alpha=2.0, a=1.5, b=3.0)
    second = member.refresh(e, now + 120_000, CFG, refit)
    assert second is not None
    assert second["p_alive"] == bgnbd.p_alive(refit, bgnbd.Inputs(1, 1.0, 2.0)) != first["p_alive"]
    assert second["expected_purchases_30d"] == bgnbd.conditional_expected(refit, bgnbd.Inputs(1, 1.0, 2.0), 30 / 7)
    assert member.refresh(e, now + 180_000, CFG, None)["p_alive"] is None  # type: ignore[index]  # unloaded


# City and city store in the published record (2026-11-01 00:00 +08:00 is T0).
SHOP = {"store_id": "S-SH-9", "name": "Shanghai 9", "city": "Shanghai", "latitude": 31.2, "longitude": 121.5,
        "opened_on": "2026-11-03", "closed_on": None}


def test_the_city_store_is_published_and_a_store_opening_shows_at_the_next_snapshot() -> None:
    e = entry_of("p-city", [enriched("v", "page_viewed", T0 + 3_600_000, context={"city": "Shanghai"})])
    before = member.refresh(e, T0 + 2 * DAY_MS - 1, CFG, None, [SHOP])  # 2026-11-02 23:59:59.999 +08:00
    assert before is not None
    assert (before["city"], before["city_store"], before["city_store_opened_ms"]) == ("Shanghai", None, None)
    assert avro.decode_as(avro.MEMBER_FEATURES, avro.encode(avro.MEMBER_FEATURES, before)) == before
    opened = member.refresh(e, T0 + 2 * DAY_MS, CFG, None, [SHOP])  # the opening day, local midnight
    assert opened is not None
    assert (opened["city"], opened["city_store"], opened["city_store_opened_ms"]) == (
        "Shanghai", "S-SH-9", T0 + 2 * DAY_MS)
    assert avro.decode_as(avro.MEMBER_FEATURES, avro.encode(avro.MEMBER_FEATURES, opened)) == opened
    assert member.refresh(e, T0 + 2 * DAY_MS + 60_000, CFG, None, [SHOP]) is None  # nothing new


def test_a_refit_sweep_takes_each_stale_person_of_the_partition_once_in_bounded_batches() -> None:
    """Buyers snapshotted with HAND are stale once REFIT is loaded; browsers (no order, no
    outlook) and other partitions' persons never are. A sweep of per_batch 2 takes 5 stale
    buyers in 3 batches; persons snapshotted by their own events meanwhile are skipped; a new
    sweep starts when the parameters change again, and a restarted worker (a fresh sweep over
    the same table) finds only those the first sweep had not reached."""
    refit = bgnbd.Params(r=0.5, alpha=2.0, a=1.5, b=3.0)
    now = DAY_N + 14 * DAY_MS
    table: dict[str, dict[str, Any]] = {}
    for i in range(5):
        table[f"p-buyer-{i}"] = two_order_days()
    table["p-browser"] = entry_of("p-browser", [enriched("v", "page_viewed", DAY_N)])
    table["p-elsewhere"] = {**two_order_days(), "partition": 1}
    for e in table.values():
        member.refresh(e, now, CFG, HAND)
    old, new = member.model_mark(HAND), member.model_mark(refit)
    sweep = member.RefitSweep(table, per_batch=2)
    assert sweep.hold(0, old, {}, set()) == [] and sweep.left(0) == 0  # nothing stale for HAND

    held: dict[str, Any] = {}
    first = sweep.hold(0, new, held, set())
    assert len(first) == 2 and set(held) == set(first) and sweep.left(0) == 3
    for person in first:
        assert member.refresh(held[person], now + 60_000, CFG, refit)["p_alive"] == bgnbd.p_alive(  # type: ignore[index]
            refit, bgnbd.Inputs(1, 1.0, 2.0))
    touched = next(p for p in sorted(table) if p.startswith("p-buyer") and p not in first)
    member.refresh(table[touched], now + 60_000, CFG, refit)  # its own event came first
    restarted = member.RefitSweep(table, per_batch=2)
    assert sorted(restarted.hold(0, new, {}, set()) + restarted.hold(0, new, {}, set())) == sorted(
        p for p in table if p.startswith("p-buyer") and p not in first and p != touched)
    rest = sweep.hold(0, new, {}, {"p-buyer-0"}) + sweep.hold(0, new, {}, set())  # p-buyer-0 merged away
    assert touched not in rest and "p-buyer-0" not in rest and sweep.left(0) == 0
    assert sweep.hold(1, new, {}, set()) == ["p-elsewhere"]
    assert sweep.hold(0, member.model_mark(HAND), {}, set()) != []  # parameters changed back: sweep again
