"""A running worker's BG/NBD parameters (streams/features/purchase_model.py): read at start,
looked at again on the worker's clock (a ManualClock here: no wall time), a refit picked up
by the next look, an unusable file never replacing good parameters, and the settings."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pytest

from streams.clock import ManualClock
from streams.features.bgnbd import FittedModel, Params, ParamsError
from streams.features.purchase_model import PurchaseModel, replace_file
from streams.settings import Settings, SettingsError

FIRST, REFIT = Params(0.25, 4.0, 0.8, 2.4), Params(0.5, 2.0, 1.5, 3.0)
MINUTE = 60_000


def write(path: Path, params: Params | None, text: str | None = None) -> None:
    """Replace ``path`` whole, as `touchline fit-purchase-model` does."""
    body = text if params is None else FittedModel(params, date(2026, 10, 31), 100, -123.4, 0.5).to_json()
    replace_file(path, body or "")


def test_a_refit_is_picked_up_at_the_next_check_on_the_clock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "params.json", ManualClock(1_000)
    model = PurchaseModel(path, clock, MINUTE).start()
    assert model.params() is None  # no file yet: no parameters, the worker runs

    write(path, FIRST)
    assert model.params() is None  # not looked at before a minute of the clock has passed
    clock.advance_to(1_000 + MINUTE - 1)
    assert model.params() is None
    clock.advance_to(1_000 + MINUTE)
    assert model.params() == FIRST and model.reloads == 1

    write(path, REFIT)
    clock.advance_to(1_000 + MINUTE + 1)
    assert model.params() == FIRST  # next look at 1_000 + 2 minutes
    clock.advance_to(1_000 + 2 * MINUTE)
    assert model.params() == REFIT and model.reloads == 2

    with caplog.at_level(logging.WARNING, logger="streams.features.purchase_model"):
        write(path, None, '{"model": "bgnbd", "time_unit": "week", "params": {"r": 0.5')  # cut short
        clock.advance_to(1_000 + 3 * MINUTE)
        assert model.params() == REFIT  # an unusable file never replaces good parameters
        path.unlink()
        clock.advance_to(1_000 + 4 * MINUTE)
        assert model.params() == REFIT  # nor does a missing one
    assert ["not reloaded" in r.message or "is gone" in r.message for r in caplog.records] == [True, True]

    write(path, FIRST)
    clock.advance_to(1_000 + 5 * MINUTE)
    assert model.params() == FIRST and model.reloads == 3
    write(path, FIRST)  # the same parameters written again: nothing to reload
    clock.advance_to(1_000 + 6 * MINUTE)
    assert model.params() == FIRST and model.reloads == 3


def test_check_every_zero_looks_at_every_call(tmp_path: Path) -> None:
    path, clock = tmp_path / "params.json", ManualClock(0)
    write(path, FIRST)
    model = PurchaseModel(path, clock, 0).start()
    assert model.params() == FIRST
    write(path, REFIT)
    assert model.params() == REFIT  # the clock never moved


def test_without_a_file_setting_there_are_never_parameters(tmp_path: Path) -> None:
    model = PurchaseModel("", ManualClock(0), 0).start()
    assert model.params() is None and model.path is None


def test_an_unusable_file_at_start_stops_the_worker_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    write(path, None, '{"model": "pareto-nbd", "time_unit": "week"}')
    with pytest.raises(ParamsError, match="params.json"):
        PurchaseModel(path, ManualClock(0), MINUTE).start()
    settings = Settings(purchase_model_params=str(path))
    with pytest.raises(SettingsError, match="TOUCHLINE_PURCHASE_MODEL_PARAMS"):
        settings.purchase_model(ManualClock(0))


def test_purchase_model_settings_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    write(path, REFIT)
    s = Settings.from_env({"TOUCHLINE_PURCHASE_MODEL_PARAMS": str(path), "TOUCHLINE_PURCHASE_MODEL_CHECK_S": "2.5"})
    clock = ManualClock(0)
    model = s.purchase_model(clock)
    assert (model.path, model.check_every_ms, model.params()) == (path, 2_500, REFIT)
    assert Settings().purchase_model(clock).params() is None  # the default: no parameters
    with pytest.raises(SettingsError, match="TOUCHLINE_PURCHASE_MODEL_CHECK_S"):
        Settings.from_env({"TOUCHLINE_PURCHASE_MODEL_CHECK_S": "-1"})
