"""No output of a run may overwrite (or land inside) one of its inputs: refused before work."""

from __future__ import annotations

import shutil

import pytest
from test_cli import DATA, FAST, FIX, A, B, one_line_error, run

from infoprobe import probe

TRAIN = FIX / "digits" / "train.safetensors"


@pytest.fixture
def no_work(monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "evaluate", lambda *a, **k: calls.append(1))
    return calls


@pytest.fixture
def copies(tmp_path):
    """A, B and the data, copied into tmp_path: (a, b, data) and their original bytes."""
    paths = [shutil.copy(src, tmp_path / src.name) for src in (A, B, DATA)]
    return paths, [open(p, "rb").read() for p in paths]


def _untouched(copies):
    paths, before = copies
    assert [open(p, "rb").read() for p in paths] == before


def test_save_features_template_expanding_onto_the_checkpoints_is_refused(
    tmp_path, copies, no_work
):
    (a, b, data), _ = copies
    result = run(
        "analyze",
        a,
        b,
        "--data",
        data,
        "--save-features",
        str(tmp_path / "{name}.safetensors"),
        code=2,
    )
    one_line_error(result, "--save-features", "is checkpoint", "an input of this run")
    assert no_work == []
    _untouched(copies)


@pytest.mark.parametrize(
    "flag,target",
    [
        ("--csv", 0),
        ("--json", 2),
        ("--csv", "symlink"),
    ],
)
def test_csv_and_json_onto_an_input_are_refused(tmp_path, copies, no_work, flag, target):
    (a, b, data), _ = copies
    if target == "symlink":
        out = tmp_path / "link.csv"
        out.symlink_to(a)
    else:
        out = copies[0][target]
    one_line_error(
        run("analyze", a, "--data", data, flag, out, code=2), flag, "an input of this run"
    )
    assert no_work == []
    _untouched(copies)


def test_outputs_inside_an_input_folder_are_refused(tmp_path, no_work):
    series = tmp_path / "series"
    shutil.copytree(FIX / "series", series)
    before = sorted(p.name for p in series.iterdir())
    one_line_error(
        run(
            "track",
            series,
            *FAST,
            "--save-features",
            str(series / "{name}.features.safetensors"),
            code=2,
        ),
        "lies inside checkpoint",
    )
    assert sorted(p.name for p in series.iterdir()) == before


def test_lmc_csv_onto_bn_data_is_refused(tmp_path, no_work):
    bn = shutil.copy(TRAIN, tmp_path / "train.safetensors")
    one_line_error(
        run("lmc", A, B, *FAST, "--reset-bn", "--bn-data", bn, "--csv", bn, code=2), "is --bn-data"
    )
    assert no_work == []


def test_prune_plot_onto_the_checkpoint_is_refused(tmp_path, no_work):
    ckpt = shutil.copy(A, tmp_path / "a.png")  # a checkpoint that happens to end in .png
    one_line_error(
        run("prune", ckpt, *FAST, "--ratios", "0", "--plot", ckpt, code=2),
        "--plot",
        "is checkpoint",
    )
