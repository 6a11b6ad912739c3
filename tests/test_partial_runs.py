"""analyze/track with a bad checkpoint among good ones: the good rows are kept and written
as they finish, the bad one gets a row with its error, the exit code says it, and --resume
measures only what is missing."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
from test_cli import FAST, LS, SERIES, assert_same_numbers, reference, run

import infoprobe
from infoprobe import probe
from infoprobe.errors import InputError, RunFailure


def corrupt(path):
    path.write_bytes(LS[0].read_bytes()[:300])  # a truncated safetensors file
    return path


def read(csv) -> pd.DataFrame:
    return pd.read_csv(csv, keep_default_na=True)


def counting(monkeypatch) -> list[int]:
    calls, real = [], probe.evaluate

    def count(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", count)
    return calls


def test_one_corrupt_checkpoint_of_three_keeps_the_others_and_exits_2(tmp_path, monkeypatch):
    bad = corrupt(tmp_path / "bad.safetensors")
    csv = tmp_path / "out.csv"
    seen_when_last_ran = []
    real = probe.evaluate

    def spy(*args, **kwargs):  # the CSV as it stands when each evaluation starts
        seen_when_last_ran.append(read(csv)["checkpoint"].tolist() if csv.exists() else [])
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", spy)
    result = run("analyze", LS[0], bad, LS[1], *FAST, "--csv", csv, code=2)
    # written as rows finish: the third evaluation already finds the first two rows on disk
    assert seen_when_last_ran == [[], [str(LS[0]), str(bad)]]
    frame = read(csv)
    assert frame["checkpoint"].tolist() == [str(LS[0]), str(bad), str(LS[1])]
    assert_same_numbers(frame.iloc[0], reference(LS[0])[1])
    assert_same_numbers(frame.iloc[2], reference(LS[1])[1])
    bad_row = frame.iloc[1]
    note = bad_row["note"]
    assert note.startswith("error: cannot read checkpoint") and "corrupt" in note
    assert all(math.isnan(bad_row[c]) for c in ("n_samples", "accuracy", "mir", "nc1"))
    assert ",,,," in csv.read_text().splitlines()[2]  # empty cells, not the text 'nan'
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("infoprobe: error: 1 of 3 checkpoints failed") and "--resume" in last
    assert "Traceback" not in result.stderr


def test_resume_measures_only_the_failed_checkpoint(tmp_path, monkeypatch):
    bad = corrupt(tmp_path / "b.safetensors")
    csv = tmp_path / "out.csv"
    run("analyze", LS[0], bad, LS[1], *FAST, "--csv", csv, code=2)
    before = read(csv)
    shutil.copy(LS[1], bad)  # the user repairs the file
    calls = counting(monkeypatch)
    result = run("analyze", LS[0], bad, LS[1], *FAST, "--csv", csv, "--resume")
    assert len(calls) == 1 and "resuming: 2 finished rows" in result.stderr
    after = read(csv)
    assert after["checkpoint"].tolist() == before["checkpoint"].tolist()
    pd.testing.assert_frame_equal(after.iloc[[0, 2]], before.iloc[[0, 2]], check_dtype=False)
    assert_same_numbers(after.iloc[1], reference(LS[1])[1])
    assert after["note"].isna().all()
    calls.clear()
    run("analyze", LS[0], bad, LS[1], *FAST, "--csv", csv, "--resume")
    assert calls == []  # nothing left to measure


def test_resume_refuses_the_rows_of_other_options(tmp_path):
    bad = corrupt(tmp_path / "b.safetensors")
    csv = tmp_path / "out.csv"
    run("analyze", LS[0], bad, *FAST, "--csv", csv, code=2)
    result = run("analyze", LS[0], bad, *FAST, "--seed", "3", "--csv", csv, "--resume", code=2)
    assert "another run" in result.stderr and "--seed" in result.stderr


def test_a_runtime_failure_exits_1_and_the_other_rows_stay(tmp_path, monkeypatch):
    real, calls = probe.evaluate, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RunFailure("out of memory at batch size 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", second_fails)
    csv = tmp_path / "out.csv"
    run("analyze", LS[0], LS[1], *FAST, "--csv", csv, code=1)
    frame = read(csv)
    assert frame["note"].tolist()[1] == "error: out of memory at batch size 1"
    assert_same_numbers(frame.iloc[0], reference(LS[0])[1])


def test_track_keeps_going_past_a_corrupt_step_and_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in SERIES[:3]:
        shutil.copy(path, folder / path.name)
    bad = corrupt(folder / "test_efficientnet-step500.safetensors")
    csv = tmp_path / "series.csv"
    run("track", folder, *FAST, "--csv", csv, code=2)
    frame = read(csv)
    assert frame["step"].tolist() == [0, 25, 32, 500]  # the unreadable one last, named step
    assert frame["note"].tolist()[3].startswith("error: cannot read checkpoint")
    assert frame["n_samples"].tolist()[:3] == [150, 150, 150]
    shutil.copy(SERIES[3], bad)  # repaired: it records step 40
    calls = counting(monkeypatch)
    run("track", folder, *FAST, "--csv", csv, "--resume")
    assert len(calls) == 1
    assert read(csv)["step"].tolist() == [0, 25, 32, 40]


def test_the_api_notes_failures_or_raises(tmp_path):
    bad = corrupt(tmp_path / "bad.safetensors")
    options = dict(data=FAST[1], max_samples=150, device="cpu")
    with pytest.warns(UserWarning, match="1 of 2 checkpoints failed"):
        frame = infoprobe.analyze([str(LS[0]), str(bad)], **options)
    assert frame.attrs["failed"] == [
        {"checkpoint": str(bad), "exit_code": 2, "error": frame["note"][1].removeprefix("error: ")}
    ]
    assert pd.isna(frame["n_samples"][1]) and frame["n_samples"][0] == 150
    with pytest.raises(InputError, match="cannot read checkpoint"):
        infoprobe.analyze([str(LS[0]), str(bad)], errors="raise", **options)
