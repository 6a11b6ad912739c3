"""--resume keeps what it must and refuses what would mix two runs, by content, not names."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file
from test_cli import DATA, FAST, A, B, one_line_error, run

from infoprobe import probe


@pytest.fixture
def evaluations(monkeypatch):
    calls = []
    real = probe.evaluate
    monkeypatch.setattr(probe, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _unrecorded(path):
    """A copy of checkpoint A that does not record its architecture."""
    save_file(load_file(A), path)
    return path


def test_resume_with_per_class_keeps_and_resumes_the_per_class_rows(tmp_path, evaluations):
    csv = tmp_path / "r.csv"
    bad = _unrecorded(tmp_path / "bare.safetensors")
    run("analyze", A, bad, *FAST, "--per-class", "--csv", csv, code=2)  # bare: no arch
    first = pd.read_csv(tmp_path / "r.per_class.csv", keep_default_na=False)
    assert set(first["checkpoint"]) == {str(A)} and len(first) == 10
    evaluations.clear()
    run(
        "analyze", A, bad, *FAST, "--per-class", "--csv", csv, "--resume", "-m", "test_efficientnet"
    )
    assert len(evaluations) == 1  # only the failed one
    both = pd.read_csv(tmp_path / "r.per_class.csv", keep_default_na=False)
    assert len(both) == 20 and set(both["checkpoint"]) == {str(A), str(bad)}
    pd.testing.assert_frame_equal(both[both["checkpoint"] == str(A)], first)


def test_an_option_that_completes_failed_rows_is_accepted_on_resume(tmp_path, evaluations):
    """The error says to pass --arch; --resume -m NAME then measures only the failed row."""
    csv = tmp_path / "r.csv"
    bad = _unrecorded(tmp_path / "bare.safetensors")
    result = run("analyze", A, bad, *FAST, "--csv", csv, code=2)
    assert "pass --arch" in result.stderr
    evaluations.clear()
    run("analyze", A, bad, *FAST, "--csv", csv, "--resume", "-m", "test_efficientnet")
    rows = pd.read_csv(csv)
    assert len(evaluations) == 1 and rows["n_samples"].notna().all()
    record = json.loads((tmp_path / "r.csv.run.json").read_text())
    assert record["options"]["arch"] == "test_efficientnet"
    # a sweep measures one model: the same option there is another run
    sweep = tmp_path / "p.csv"
    run("prune", A, *FAST, "--ratios", "0", "--csv", sweep)
    one_line_error(
        run(
            "prune",
            A,
            *FAST,
            "--ratios",
            "0,0.5",
            "--csv",
            sweep,
            "--resume",
            "-m",
            "test_efficientnet",
            code=2,
        ),
        "--arch",
    )


def test_a_relative_checkpoint_name_from_another_folder_is_another_checkpoint(
    tmp_path, monkeypatch, evaluations
):
    for folder, source in (("one", A), ("two", B)):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "m.safetensors")
    monkeypatch.chdir(tmp_path / "one")
    run("analyze", "m.safetensors", *FAST, "--csv", tmp_path / "r.csv")
    monkeypatch.chdir(tmp_path / "two")
    evaluations.clear()
    result = run("analyze", "m.safetensors", *FAST, "--csv", tmp_path / "r.csv", "--resume", code=2)
    one_line_error(result, "another run", "checkpoint m.safetensors is not the file")
    assert evaluations == []


@pytest.mark.parametrize("flag", ["--valid-labels", "--class-map"])
def test_an_edited_label_file_is_another_run(tmp_path, flag, evaluations):
    labels = tmp_path / "labels.txt"
    if flag == "--valid-labels":
        labels.write_text("".join(f"{i}\n" for i in range(10)))
        edited = "".join(f"{i}\n" for i in reversed(range(10)))  # same size, other map
        source = [*FAST]
    else:
        from test_timm_cli import digits_pngs  # a folder of real digit PNGs per class

        root = digits_pngs(tmp_path / "imgs")
        labels.write_text("".join(f"{c}\n" for c in sorted(p.name for p in root.iterdir())))
        edited = "".join(f"{c}\n" for c in reversed(sorted(p.name for p in root.iterdir())))
        source = ["--data", root, "--device", "cpu", "--input-size", "1", "16", "16"]
    csv = tmp_path / "r.csv"
    run("analyze", A, *source, flag, labels, "--csv", csv)
    labels.write_text(edited)
    evaluations.clear()
    one_line_error(
        run("analyze", A, B, *source, flag, labels, "--csv", csv, "--resume", code=2),
        "another run",
        flag,
        "content changed",
    )
    assert evaluations == []


def test_relative_and_absolute_data_are_one_run(tmp_path, monkeypatch, evaluations):
    csv = tmp_path / "r.csv"
    monkeypatch.chdir(DATA.parent)
    fast = [a if a != str(DATA) else DATA.name for a in FAST]
    run("analyze", A, *fast, "--csv", csv)
    evaluations.clear()
    run("analyze", A, B, *FAST, "--csv", csv, "--resume")
    assert len(evaluations) == 1  # B only
    assert pd.read_csv(csv)["checkpoint"].tolist() == [str(A), str(B)]


def test_checkpoints_named_na_and_nan_resume_from_their_own_csv(tmp_path, evaluations):
    names = [shutil.copy(A, tmp_path / name) for name in ("NA", "nan", "None")]
    csv = tmp_path / "r.csv"
    run("analyze", *names, *FAST, "--csv", csv)
    evaluations.clear()
    run("analyze", *names, *FAST, "--csv", csv, "--resume")
    assert evaluations == []
    cells = pd.read_csv(csv, dtype=str, keep_default_na=False)["checkpoint"].tolist()
    assert cells == [str(n) for n in names]


def test_one_checkpoint_given_twice_is_measured_once_and_resumes(tmp_path, evaluations):
    csv = tmp_path / "r.csv"
    result = run(
        "analyze", A, str(A).replace("/fixtures/", "/fixtures/../fixtures/"), *FAST, "--csv", csv
    )
    assert "measured once" in result.stderr
    assert len(evaluations) == 1 and len(pd.read_csv(csv)) == 1
    evaluations.clear()
    run("analyze", A, A, *FAST, "--csv", csv, "--resume")
    assert evaluations == []
