"""The figures of docs/results.md are drawn from the CSVs committed beside them, and the rules
the studies judge by (stopping at a plateau, the grokking criteria, the barrier of an
interpolation path) do what their docstrings say.
"""

from __future__ import annotations

import importlib.util
import re
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PathCollection

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIGURES = ROOT / "docs" / "figures"

#: figure stem -> the module (in examples/) whose ``draw(csv, png)`` draws it
DRAWN_BY = {
    "01_training_dynamics": "01_training_dynamics",
    "02_label_smoothing": "02_label_smoothing",
    "03_lmc": "_lmc_report",
    "03_lmc_adamw": "_lmc_report",
    "04_pruning": "04_pruning",
    "05_grokking": "_grokking_measure",
    "06_interplay_loss": "06_interplay_loss",
}


def _module(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"figure_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def test_every_figure_has_its_csv_and_a_drawing_function():
    """Every figure docs/results.md shows (the figures of docs/integrations.md and
    docs/results_layers.md are drawn by their examples from their own runs)."""
    results = (ROOT / "docs" / "results.md").read_text()
    pngs = set(re.findall(r"\(figures/([\w-]+)\.png\)", results))
    assert pngs == set(DRAWN_BY)
    assert {p.stem for p in FIGURES.glob("*.csv")} == pngs
    for stem in pngs:
        assert len(pd.read_csv(FIGURES / f"{stem}.csv")) > 0


def _paired_accuracy_text(frame: pd.DataFrame) -> str:
    """The paired accuracy difference, computed here from the CSV's rows one by one."""
    ce = {r.seed: r.accuracy for r in frame.itertuples() if r.arm == "ce"}
    other = {r.seed: r.accuracy for r in frame.itertuples() if r.arm == "ce+interplay"}
    diff = [other[s] - ce[s] for s in sorted(ce)]
    return f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f} points"


def test_interplay_loss_figure_redraws_from_its_committed_csv(tmp_path):
    csv = FIGURES / "06_interplay_loss.csv"
    rows = pd.read_csv(csv)
    fig = _module("06_interplay_loss").draw(csv, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = (ROOT / "docs" / "results.md").read_text()
    for row, setting in enumerate(("supervised", "semi")):
        sub = rows[rows.setting == setting]
        text = _paired_accuracy_text(sub)
        assert text in fig.axes[3 * row].get_title()
        assert text in results  # the docs quote the figure's number
        # the dots of the accuracy panel are the CSV's per-seed accuracies
        scatters = [c for c in fig.axes[3 * row].collections if isinstance(c, PathCollection)]
        dots = sorted(float(y) for c in scatters for _, y in c.get_offsets())
        assert dots == pytest.approx(sorted(sub.accuracy.tolist()), abs=0)


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(DRAWN_BY))
def test_every_figure_redraws_from_its_committed_csv(stem, tmp_path):
    fig = _module(DRAWN_BY[stem]).draw(FIGURES / f"{stem}.csv", tmp_path / f"{stem}.png")
    assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
    assert any(a.lines or a.collections for a in fig.axes)


def test_plateau_rule_stops_when_the_best_accuracy_stops_gaining():
    plateau = _module("_plateau")
    cfg = plateau.PlateauConfig(lr=0.1, min_gain=0.25, patience=3, min_epochs=5, max_epochs=9)
    flat = [0.5] * 4
    assert not plateau.plateaued(flat, cfg)  # fewer than min_epochs
    assert plateau.plateaued([0.5] * 5, cfg)
    # the best over the last 3 epochs gains exactly 0.25 (binary-exact): a plateau
    assert plateau.plateaued([0.25, 0.5, 0.25, 0.5, 0.75], cfg)
    # it gains 0.5: not yet
    assert not plateau.plateaued([0.25, 0.25, 0.25, 0.5, 0.75], cfg)
    # a dip does not count: the best so far is what must gain
    assert plateau.plateaued([0.75, 0.25, 0.25, 0.25, 0.25], cfg)
    assert plateau.plateaued([i / 16 for i in range(9)], cfg)  # max_epochs


def _grokking_curve(mir, hdr, steps, grok, accuracy):
    curve = pd.DataFrame({"step": steps, "mir": mir, "hdr": hdr})
    curve["grok_step"], curve["grokked"] = grok, True
    log = pd.DataFrame({"step": steps, "test_accuracy": accuracy})
    return curve, log


def test_grokking_criteria_count_after_tie_and_before_by_the_margin():
    judge = _module("_grokking_measure").judge
    steps = [0, 500, 1000, 1500, 2000]
    accuracy = [0.0, 0.1, 0.99, 1.0, 1.0]
    hdr = [0.5, 0.5, 0.5, 0.5, 0.5]
    cases = {"after": -0.05, "tie": -0.005, "before": 0.02}
    for verdict, margin in cases.items():
        mir = [0.4, 0.3, 0.3 + margin, 0.5, 0.5]
        out = judge(*_grokking_curve(mir, hdr, steps, 1000, accuracy))
        assert out["mir_verdict"] == verdict
        assert out["mir_margin"] == pytest.approx(margin, abs=1e-12)
        assert out["mir_min_before"] == pytest.approx(0.3)


def test_grokking_criteria_want_the_hdr_peak_in_the_window_and_a_fall():
    judge = _module("_grokking_measure").judge
    steps = [0, 500, 1000, 1500, 2000, 2500]
    accuracy = [0.0, 0.25, 0.99, 1.0, 1.0, 1.0]  # window [500, 1100]
    mir = [0.5] * 6
    agree = judge(*_grokking_curve(mir, [0.2, 0.9, 0.6, 0.4, 0.7, 0.1], steps, 1000, accuracy))
    assert (agree["hdr_verdict"], agree["hdr_max_step"]) == ("agrees", 500)
    assert agree["hdr_drop_by_2g"] == pytest.approx(0.5)  # to 0.4 by step 2000, not 0.1
    early = judge(*_grokking_curve(mir, [0.95, 0.9, 0.6, 0.4, 0.4, 0.1], steps, 1000, accuracy))
    assert (early["hdr_verdict"], early["hdr_max_step"]) == ("disagrees", 0)
    small = judge(*_grokking_curve(mir, [0.2, 0.9, 0.85, 0.82, 0.81, 0.1], steps, 1000, accuracy))
    assert small["hdr_verdict"] == "disagrees"  # falls by 0.09 < 0.1 by step 2000
    late = judge(*_grokking_curve(mir, [0.2, 0.3, 0.6, 0.9, 0.4, 0.1], steps, 1000, accuracy))
    assert (late["hdr_verdict"], late["hdr_max_step"]) == ("disagrees", 1500)


def test_lmc_barrier_is_the_interior_accuracy_minimum_against_the_end_mean():
    report = _module("_lmc_report")
    path = pd.DataFrame(
        {
            "alpha": [1.0, 0.75, 0.5, 0.25, 0.0],  # any order
            "accuracy": [0.8, 0.7, 0.5, 0.6, 0.9],
            "mir": [0.8, 0.75, 0.5, 0.45, 0.6],  # the lowest MIR is not at alpha*
            "hdr": [0.1, 0.2, 0.4, 0.3, 0.3],
        }
    )
    out = report.path_changes(path)
    assert out["barrier"] == pytest.approx(0.85 - 0.5)
    assert out["alpha_star"] == 0.5
    assert out["mir_change"] == pytest.approx(0.5 - 0.7)
    assert out["hdr_change"] == pytest.approx(0.4 - 0.2)
    assert out["mir_max_inner_change"] == pytest.approx(0.75 - 0.7)
    assert (out["inner_above_ends"], out["inner_points"]) == (1, 3)
