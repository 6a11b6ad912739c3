"""--resume merges only rows of the same run: every value-changing option is recorded."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_cli import DATA, FAST, FIX, A, B, one_line_error, run

from infoprobe import probe
from infoprobe.options import Role, RunOptions, specs
from infoprobe.record import identity, run_record

TRAIN = FIX / "digits" / "train.safetensors"


@pytest.fixture
def evaluations(monkeypatch):
    """Counts probe.evaluate calls (evaluations the sweep really ran)."""
    calls = []
    real = probe.evaluate

    def count(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", count)
    return calls


@pytest.mark.parametrize(
    "first,second,words",
    [
        (["--method", "global-magnitude"], ["--method", "random"], '--method "random" now'),
        ([], ["--seed", "3"], "--seed 3 now"),
        ([], ["--include-head"], "--include-head true now"),
        ([], ["--estimate", "batch", "--estimate-batch-size", "64"], "--estimate"),
        ([], ["--model-kwargs", "drop_rate=0.5"], "--model-kwargs"),
    ],
)
def test_prune_resume_refuses_rows_of_a_run_with_other_options(
    tmp_path, evaluations, first, second, words
):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0.5", "--csv", csv, *first)
    evaluations.clear()
    result = run(
        "prune", A, *FAST, "--ratios", "0.5,0.7", "--csv", csv, "--resume", *second, code=2
    )
    one_line_error(result, "another run", words)
    assert evaluations == []  # refused before any work
    assert pd.read_csv(csv)["ratio"].tolist() == [0.5]  # the finished rows are kept


def test_prune_resume_refuses_other_data_and_sample_counts(tmp_path, evaluations):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0", "--csv", csv)
    other = tmp_path / "copy.safetensors"
    other.write_bytes(TRAIN.read_bytes())  # other samples under a name of its own
    fast_other = [a if a != str(DATA) else str(other) for a in FAST]
    one_line_error(
        run("prune", A, *fast_other, "--ratios", "0,0.5", "--csv", csv, "--resume", code=2),
        "--data",
        "is not the --data they were measured on",
    )
    fast_more = [a if a != "150" else "160" for a in FAST]
    one_line_error(
        run("prune", A, *fast_more, "--ratios", "0,0.5", "--csv", csv, "--resume", code=2),
        "--max-samples 160 now, 150",
    )


def test_lmc_resume_refuses_another_bn_reset(tmp_path):
    csv = tmp_path / "lmc.csv"
    run("lmc", A, B, *FAST, "--alphas", "0", "--csv", csv)
    result = run(
        "lmc",
        A,
        B,
        *FAST,
        "--alphas",
        "0,1",
        "--csv",
        csv,
        "--resume",
        "--reset-bn",
        "--bn-data",
        TRAIN,
        "--bn-batches",
        "1",
        code=2,
    )
    one_line_error(result, "--reset-bn true now, false", "--bn-data")


def test_resume_with_the_same_options_adds_points_and_records_them(tmp_path, evaluations):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0", "--csv", csv, "--method", "random")
    evaluations.clear()
    js = tmp_path / "prune.json"
    run(
        "prune",
        A,
        *FAST,
        "--ratios",
        "0,0.3",
        "--csv",
        csv,
        "--resume",
        "--method",
        "random",
        "--json",
        js,
    )
    assert len(evaluations) == 2  # the dense reference and ratio 0.3
    recorded = json.loads((tmp_path / "prune.csv.run.json").read_text())
    assert recorded["options"]["method"] == "random"
    assert recorded["inputs"]["data"]["path"] == str(DATA.resolve())
    assert json.loads(js.read_text())["options"] == recorded


def test_resume_without_the_run_record_is_refused(tmp_path, evaluations):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0", "--csv", csv)
    (tmp_path / "prune.csv.run.json").unlink()
    evaluations.clear()
    one_line_error(
        run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", csv, "--resume", code=2),
        "prune.csv.run.json",
        "missing",
    )
    assert evaluations == []


def test_a_duplicated_row_is_caught_before_the_sweep(tmp_path, evaluations):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", csv)
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([*rows, rows[-1]]) + "\n")
    evaluations.clear()
    one_line_error(
        run("prune", A, *FAST, "--ratios", "0,0.5,0.7", "--csv", csv, "--resume", code=2),
        "ratio 0.5 twice",
    )
    assert evaluations == []


def test_the_record_holds_every_value_option_and_the_identity_of_every_input(tmp_path):
    opts = RunOptions.of("prune", {"data": str(DATA), "ratios": "0", "class_map": None})
    record = run_record("prune", opts, [str(A)])
    values = {n for n, s in specs("prune") if s.role is Role.VALUE}
    assert set(record["options"]) == values  # no display, output or points option
    assert {"seed", "method", "max_samples", "model_kwargs"} <= values
    assert not {"device", "workers", "csv", "ratios", "resume"} & set(record["options"])
    assert record["inputs"]["data"]["size"] == DATA.stat().st_size
    assert set(record["checkpoints"]) == {str(A)}


def test_relative_and_absolute_data_are_one_input_and_an_edited_file_is_another(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(DATA.parent)
    relative = identity(DATA.name)
    assert relative == identity(DATA)
    edited = tmp_path / "labels.txt"
    edited.write_text("0\n1\n")
    before = identity(edited)
    edited.write_text("1\n0\n")  # same size, other content
    assert identity(edited)["sha256"] != before["sha256"]
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 << 20))
    head = identity(big)
    with open(big, "r+b") as f:  # a change in the last block is seen
        f.seek((3 << 20) - 1)
        f.write(b"x")
    assert identity(big)["sha256"] != head["sha256"]
