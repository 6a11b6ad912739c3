"""examples/08_layer_dynamics.py: its half-rise statistic, and a --quick run end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from infoprobe.schema import LAYER_COLUMNS

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "08_layer_dynamics.py"


def _example():
    spec = importlib.util.spec_from_file_location("example_08_layer_dynamics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_half_rise_step_interpolates_between_checkpoints():
    half = _example().half_rise_step
    assert half([0, 10, 20, 40], [0.0, 0.1, 0.5, 1.0]) == 20
    # goal 0.4, reached between step 10 (0.2) and step 30 (0.8): 10 + 20 * 0.2 / 0.6
    assert half([0, 10, 30], [0.0, 0.2, 0.8]) == pytest.approx(10 + 20 / 3)
    assert math.isnan(half([0, 10, 30], [0.5, 0.6, 0.51]))  # a rise under MIN_RISE
    assert math.isnan(half([0, 10, 30], [0.5, 0.2, 0.4]))  # a fall


@pytest.mark.slow
def test_quick_run_writes_rows_figures_and_summary(tmp_path):
    _example().main(["--quick", "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "layer_dynamics.csv")
    assert list(rows.columns) == ["seed", "step", *LAYER_COLUMNS]
    layers = ["act1", "layer1", "layer2", "layer3", "layer4", "pre_logits"]
    assert sorted(set(rows.seed)) == [0, 1]
    for (_, _), frame in rows.groupby(["seed", "step"]):
        assert frame.layer.tolist() == layers
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["layers"] == layers and summary["seeds"] == 2
    assert set(summary["per_layer"]) == set(layers)
    assert len(summary["per_layer"]["layer4"]["t_half"]) == 2
    for png in ("layer_dynamics.png", "layer_track_seed0.png"):
        assert (tmp_path / png).stat().st_size > 10_000
