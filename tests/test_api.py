"""The Python API: each command's DataFrame holds the rows the CLI writes to CSV.

The CLI runs in-process on the same seeded 150-sample subsample; its CSV is read back with
pandas and compared cell by cell with the DataFrame the API returns for the same options.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import infoprobe
from infoprobe import api, cli
from infoprobe.api.common import eval_kwargs, measure_options, prepared
from infoprobe.errors import InputError
from infoprobe.schema import PER_CLASS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
DATA = str(FIX / "digits" / "test.safetensors")
A = str(FIX / "lmc" / "same_init_a.safetensors")
B = str(FIX / "lmc" / "same_init_b.safetensors")
SERIES = str(FIX / "series")
N = 150
OPTIONS = dict(max_samples=N, device="cpu", seed=3)
FLAGS = ["--data", DATA, "--max-samples", str(N), "--device", "cpu", "--seed", "3"]


def cli_csv(tmp_path: Path, *args: str) -> tuple[pd.DataFrame, dict]:
    """Run the CLI with --csv and --json; the CSV as read back by pandas, and the JSON."""
    csv, js = tmp_path / "cli.csv", tmp_path / "cli.json"
    result = CliRunner().invoke(cli.app, [*args, *FLAGS, "--csv", str(csv), "--json", str(js)])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    frame = pd.read_csv(csv)
    frame["note"] = frame["note"].astype(object).where(frame["note"].notna(), "")  # '' is empty
    return frame, json.loads(js.read_text())


def assert_same_rows(frame: pd.DataFrame, from_csv: pd.DataFrame, command: str) -> None:
    assert list(frame.columns) == list(api.columns(command)) == list(from_csv.columns)
    assert frame.attrs["command"] == command
    # the CSV holds every float at full precision, so the values agree exactly
    pd.testing.assert_frame_equal(
        frame.reset_index(drop=True), from_csv, check_dtype=False, check_exact=True
    )


def test_analyze_frame_equals_the_cli_csv(tmp_path):
    frame = infoprobe.analyze([A, B], data=DATA, per_class=True, **OPTIONS)
    from_csv, doc = cli_csv(tmp_path, "analyze", A, B, "--per-class")
    assert_same_rows(frame, from_csv, "analyze")
    per_class = frame.attrs["per_class"]
    assert list(per_class.columns) == list(PER_CLASS_COLUMNS) and len(per_class) == 20
    pd.testing.assert_frame_equal(per_class, pd.DataFrame(doc["per_class"]), check_dtype=False)


def test_track_frame_equals_the_cli_csv(tmp_path):
    frame = infoprobe.track(SERIES, data=DATA, **OPTIONS)
    from_csv, _ = cli_csv(tmp_path, "track", SERIES)
    assert_same_rows(frame, from_csv, "track")
    assert frame["step"].is_monotonic_increasing and len(frame) > 1


def test_lmc_frame_equals_the_cli_csv_and_holds_the_barriers(tmp_path):
    frame = infoprobe.lmc(A, B, data=DATA, alphas="0,0.5,1", **OPTIONS)
    from_csv, doc = cli_csv(tmp_path, "lmc", A, B, "--alphas", "0,0.5,1")
    assert_same_rows(frame, from_csv, "lmc")
    assert frame.attrs["barriers"] == pytest.approx(doc["barriers"])


def test_prune_frame_equals_the_cli_csv(tmp_path):
    frame = infoprobe.prune(A, data=DATA, ratios=[0.0, 0.5], method="layer-magnitude", **OPTIONS)
    from_csv, doc = cli_csv(
        tmp_path, "prune", A, "--ratios", "0,0.5", "--method", "layer-magnitude"
    )
    assert_same_rows(frame, from_csv, "prune")
    assert frame.attrs["method"] == doc["method"] == "layer-magnitude"


def test_on_row_gets_each_row_and_resumed_rows_are_not_computed_again(tmp_path):
    seen = []
    csv = tmp_path / "lmc.csv"
    first = infoprobe.lmc(
        A, B, data=DATA, alphas=[0.0, 1.0], on_row=seen.append, csv=str(csv), **OPTIONS
    )
    assert [r["alpha"] for r in seen] == [0.0, 1.0]
    again = []
    resumed = infoprobe.lmc(
        A,
        B,
        data=DATA,
        alphas=[0.0, 0.5, 1.0],
        on_row=again.append,
        csv=str(csv),
        resume=True,
        **OPTIONS,
    )
    assert [r["alpha"] for r in again] == [0.5]
    assert resumed["alpha"].tolist() == [0.0, 0.5, 1.0]
    pd.testing.assert_frame_equal(resumed.iloc[[0, 2]].reset_index(drop=True), first)


def test_options_take_the_cli_names_and_forms():
    text = prepared("analyze", dict(mean="0.5,0.5,0.5", input_size="3 8 8", amp=True))
    values = prepared("analyze", dict(mean=(0.5, 0.5, 0.5), input_size=(3, 8, 8), amp=True))
    assert text == values
    assert values.input_size == (3, 8, 8) and values.mean == (0.5, 0.5, 0.5)
    assert eval_kwargs(values)["amp"] == "bf16"
    assert measure_options(prepared("analyze", dict(max_exact_dim=0))).max_exact_dim == 0
    assert measure_options(prepared("analyze", {})).max_exact_dim is None  # follows the device
    with pytest.raises(TypeError, match="max_sample"):
        infoprobe.analyze(A, data=DATA, max_sample=10)
    with pytest.raises(TypeError, match="ratios"):  # an option of another command
        infoprobe.analyze(A, data=DATA, ratios="0,0.5")
    with pytest.raises(InputError, match="--mean"):
        infoprobe.analyze(A, data=DATA, mean="a,b")


@pytest.mark.parametrize("flag", ["trust_checkpoint", "resume", "per_class", "amp"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1, None.__class__])
def test_api_flags_take_only_true_or_false(flag, value):
    with pytest.raises(InputError, match="give True or False"):
        infoprobe.analyze(A, data=DATA, **{flag: value})
