"""`touchline run` (what `make run` calls) finishes on its own and agrees with ground truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _live_pids_under

pytestmark = pytest.mark.e2e


def test_run_summary_agrees_with_simulator_ground_truth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    env["TOUCHLINE_DATA_DIR"] = str(tmp_path / "var")
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "run", "--events", "3000", "--persons", "120", "--seed", "11"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "All checks agree with the simulator's ground truth." in out.stdout
    assert "✗" not in out.stdout
    for heading in ("Events by channel", "Events by type", "Triggers by rule", "Dead letters by reason"):
        assert heading in out.stdout
    report = tmp_path / "var" / "run" / "report.html"  # every dashboard panel's query ran (else exit 1)
    assert out.stdout.rstrip().endswith(f"Open the report: {report.resolve().as_uri()}")
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert _live_pids_under(str(tmp_path)) == []
