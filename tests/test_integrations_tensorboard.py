"""``infoprobe track --tensorboard DIR``: the event files hold the CSV's values at each step.

The event files are read back with TensorBoard's own EventAccumulator; TensorBoard stores
scalars as float32, so each value must be the float32 rounding of the CSV's value.
"""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from infoprobe import cli
from infoprobe.errors import InputError
from infoprobe.integrations import tensorboard as tb
from infoprobe.integrations.scalars import SCALAR_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "fixtures" / "digits" / "test.safetensors"
SERIES = sorted((ROOT / "fixtures" / "series").glob("*-step*.safetensors"))
FAST = ["--data", str(DATA), "--max-samples", "50", "--device", "cpu"]

runner = CliRunner()


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in the event files under ``folder``."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_track_writes_the_csv_values_at_each_step(tmp_path):
    csv, board = tmp_path / "track.csv", tmp_path / "runs" / "infoprobe"
    args = ["track", *map(str, SERIES[:2]), *FAST, "--csv", str(csv), "--tensorboard", str(board)]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {board}" in result.stderr
    frame = pd.read_csv(csv)
    events = read_events(board)
    assert len(list(board.iterdir())) == 1  # one event file, no temporary folder left
    want = {
        f"interplay/{c}"
        for c in SCALAR_COLUMNS
        if c in frame.columns and frame[c].notna().any() and np.isfinite(frame[c]).any()
    }
    assert set(events) == want and {"interplay/mir", "interplay/nc1"} <= want
    for tag, by_step in events.items():
        column = tag.removeprefix("interplay/")
        expected = {
            int(s): float(np.float32(v))
            for s, v in zip(frame["step"], frame[column], strict=True)
            if math.isfinite(v)
        }
        assert by_step == expected, tag


def test_rows_without_a_step_or_values_are_skipped(tmp_path):
    rows = [
        {"step": 3, "mir": 0.5, "hdr": math.nan, "note": "x"},
        {"step": None, "mir": 0.7},  # a failed checkpoint
        {"step": 5, "mir": math.nan},  # nothing finite
        {"step": 9, "mir": 0.25, "nc1": 2.0},
    ]
    path = tb.write_rows(rows, tmp_path / "new" / "dir")
    assert path.parent == tmp_path / "new" / "dir" and path.name.startswith("events.out")
    assert read_events(path.parent) == {
        "interplay/mir": {3: 0.5, 9: 0.25},
        "interplay/nc1": {9: 2.0},
    }
    assert tb.write_rows([{"step": 1, "mir": math.nan}], tmp_path / "none") is None


def test_bad_folders_and_a_missing_tensorboard_are_refused_before_any_work(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = runner.invoke(cli.app, ["track", str(SERIES[0]), *FAST, "--tensorboard", str(a_file)])
    assert (
        result.exit_code == 2 and "--tensorboard" in result.stderr and "is a file" in result.stderr
    )
    result = runner.invoke(
        cli.app,
        [
            "track",
            str(ROOT / "fixtures" / "series"),
            *FAST,
            "--tensorboard",
            str(ROOT / "fixtures" / "series" / "tb"),
        ],
    )
    assert result.exit_code == 2 and "lies inside checkpoint" in result.stderr
    assert not (ROOT / "fixtures" / "series" / "tb").exists()

    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    result = runner.invoke(
        cli.app, ["track", str(SERIES[0]), *FAST, "--tensorboard", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "pip install 'infoprobe[tensorboard]'" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == [a_file]
    with pytest.raises(InputError, match=r"infoprobe\[tensorboard\]"):
        tb.write_rows([{"step": 1, "mir": 0.5}], tmp_path)
