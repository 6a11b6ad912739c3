"""examples/07_live_dynamics.py: a quick run trains with the callback, logs to TensorBoard and
checks its curves against ``infoprobe track`` over the checkpoints of the same run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from infoprobe.schema import COLUMNS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "07_live_dynamics.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_07", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_logs_the_curve_that_track_measures(tmp_path):
    threads = torch.get_num_threads()
    try:
        _load().main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    frame = pd.read_csv(tmp_path / "live_dynamics.csv")
    live, tracked = frame[frame.source == "live"], frame[frame.source == "track"]
    # steps 0, 2, 4, 6 (every 2) and 3 (the first epoch's end)
    assert list(live.step) == list(tracked.step) == [0, 2, 3, 4, 6]
    assert {"step", "epoch", *(c for c in COLUMNS if c != "checkpoint")} <= set(frame.columns)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["measurements"] == 5
    assert 0 < max(summary["max_gap_tensorboard_vs_track"].values()) <= 1e-6
    assert (tmp_path / "live_dynamics.png").stat().st_size > 10_000
    assert any((tmp_path / "tb" / "live").glob("events.out.tfevents.*"))
    assert any((tmp_path / "tb" / "track").glob("events.out.tfevents.*"))


def test_the_check_refuses_curves_that_differ():
    example = _load()
    tracked = pd.DataFrame({"step": [3, 6], **{c: [0.5, 0.25] for c in example.CHECKED}})
    live = {f"interplay/{c}": {3: 0.5, 6: 0.25} for c in example.CHECKED}
    assert max(example.check(live, tracked).values()) == 0
    live["interplay/hdr"] = {3: 0.5, 6: 0.25 + 2e-6}
    with pytest.raises(RuntimeError, match="live hdr differs from infoprobe track by 2.0"):
        example.check(live, tracked)
    live["interplay/hdr"] = {3: 0.5}
    with pytest.raises(RuntimeError, match="hdr: logged at steps"):
        example.check(live, tracked)
