"""The fault harness (`make faults`, streams/faults.py): its comparison, and each scenario on the
real embedded stack (two workers, four partitions, the sink and chDB), one test per scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import faults
from streams.simulate.traffic import SimConfig, generate


def test_diff_names_what_moved_and_is_silent_when_nothing_did() -> None:
    assert faults.diff("identity", {"e1": "p1"}, {"e1": "p1"}) is None
    line = faults.diff("identity", {"e1": "p1", "e2": "p9"}, {"e1": "p1", "e2": "p2"})
    assert line == "identity: 1 of 2 events in another person or missing, e.g. e2: p9 (fault-free: p2)"
    line = faults.diff("features", [["p1", 3], ["p2", 5]], [["p1", 3], ["p2", 4]])
    assert line == 'features: 1 of 2 rows missing, 1 unexpected; e.g. missing ["p2", 4]; e.g. unexpected ["p2", 5]'
    assert faults.diff("stored", [["t", 2, 2]], [["t", 2, 2], ["u", 1, 1]]) == \
        'stored: 1 of 2 rows missing, 0 unexpected; e.g. missing ["u", 1, 1]'


def test_a_result_with_differences_fails_and_the_table_says_which() -> None:
    state = faults.EndState({"identity": {"e1": "p1"}, "triggers": ["t1"], "sessions": [["s"]]}, 2, [])
    good = faults.Result("worker-sigkill", "kills", ["SIGKILL worker-0 at 30%"], state, 120.0, [], 10.0)
    bad = faults.Result("rebalance", "add/remove", [], state, 130.0, ["features: 1 of 2 rows missing"], 11.0)
    assert good.ok and not bad.ok
    text = faults.table([good, bad])
    assert "same as fault-free" in text and "DIFFERS" in text and "✗ features: 1 of 2 rows missing" in text
    assert good.to_dict()["republished_records"] == 2 and good.to_dict()["persons"] == 1


def test_the_harness_refuses_fewer_than_two_workers_or_four_partitions(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        faults.Harness("127.0.0.1:1", tmp_path, 100, 1, workers=1)
    with pytest.raises(ValueError):
        faults.Harness("127.0.0.1:1", tmp_path, 100, 1, partitions=2)


def test_every_scenario_injects_its_faults_at_reproducible_points() -> None:
    import random

    for s in faults.SCENARIOS.values():
        a, b = s.steps(random.Random(f"11/{s.name}")), s.steps(random.Random(f"11/{s.name}"))
        assert a == b and all(0 < step.at < 1 for step in a)
    assert {step.action for step in faults.SCENARIOS["rebalance"].steps(random.Random(1))} == \
        {"add-worker", "remove-worker"}


def test_the_hot_key_is_one_kiosk_with_its_share_of_events_and_nothing_else_changes() -> None:
    plain = generate(SimConfig(seed=4, events=1500, persons=60, days=1))
    hot = generate(SimConfig(seed=4, events=1500, persons=60, days=1, hot_key_share=0.3))
    assert generate(SimConfig(seed=4, events=1500, persons=60, days=1, hot_key_share=0.0)).records == plain.records
    from streams import avro

    cookies: dict[str, int] = {}
    for r in hot.records:
        if r.kind in ("event", "late"):
            ids = avro.decode_as(avro.TOUCHPOINT, r.value)["identifiers"]
            cookies[ids["anonymous_id"]] = cookies.get(ids["anonymous_id"], 0) + 1
    kiosk, n = max(cookies.items(), key=lambda kv: kv[1])
    assert kiosk.startswith("anon-kiosk-")
    assert n / hot.truth.events_valid_distinct == pytest.approx(0.3, abs=0.01)
    assert hot.truth.expected_persons == plain.truth.expected_persons + 1
    assert hot.truth.abandoned_cart_ids == plain.truth.abandoned_cart_ids
    with pytest.raises(ValueError):
        SimConfig(hot_key_share=1.0)


def test_flood_traffic_has_the_base_traffics_good_events() -> None:
    base, flood = faults.traffic_for("base", 1000, 5), faults.traffic_for("flood", 1000, 5)
    good = [r.value for r in base.records if r.kind != "malformed"]
    assert [r.value for r in flood.records if r.kind != "malformed"] == good
    assert flood.truth.malformed >= 0.9 * flood.truth.events_valid_distinct


@pytest.fixture(scope="module")
def harness(broker, tmp_path_factory: pytest.TempPathFactory) -> faults.Harness:
    """One harness for the module: each traffic variant's fault-free baseline runs once, with the
    first scenario that needs it."""
    return faults.Harness(broker.bootstrap, tmp_path_factory.mktemp("faults"), events=1200, seed=11)


@pytest.mark.e2e
@pytest.mark.parametrize("name", faults.QUICK)
def test_the_scenario_ends_in_the_fault_free_state(harness: faults.Harness, name: str) -> None:
    result = harness.run(faults.SCENARIOS[name])
    baseline = harness.baseline_for(faults.SCENARIOS[name])
    assert baseline.ok, baseline.differences
    assert baseline.state is not None and len(baseline.state.sections["triggers"]) > 0
    assert result.ok, (result.scenario, result.differences)
    if name == "malformed-flood":
        assert result.state is not None
        dead = sum(n for _, n in result.state.sections["kpi_dead_letters"])
        assert dead == harness.traffic["flood"].truth.malformed > 1000  # every bad record, once
