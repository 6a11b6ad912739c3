"""Exit codes and messages of the failures found under attack (bad input 2, runtime 1,
Ctrl-C 130), each one line without a traceback."""

from __future__ import annotations

import importlib.abc
import io
import shutil
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_cli import FAST, A, B, one_line_error, run

from infoprobe import probe
from infoprobe.evaluation import scores


class _InterruptImport(importlib.abc.MetaPathFinder):
    """Raises KeyboardInterrupt when infoprobe.cli is imported: Ctrl-C during start-up."""

    def find_spec(self, name, path=None, target=None):
        if name == "infoprobe.cli":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_during_start_up_is_one_line_and_130(monkeypatch, capsys):
    from infoprobe.__main__ import main

    monkeypatch.delitem(sys.modules, "infoprobe.cli")
    monkeypatch.setattr(sys, "meta_path", [_InterruptImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "infoprobe: error: interrupted\n"


def test_importing_the_package_does_not_import_torch():
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import infoprobe, infoprobe.__main__, sys; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "command,resumable",
    [
        (["analyze", A, *FAST], True),  # analyze and track have --resume too
        (["lmc", A, B, *FAST, "--alphas", "0,1"], True),
    ],
)
def test_interrupted_runs_mention_resume_only_where_it_exists(monkeypatch, command, resumable):
    monkeypatch.setattr(probe, "evaluate", _interrupt)
    result = run(*command, code=130)
    one_line_error(result, "interrupted")
    assert ("--resume" in result.stderr) == resumable


def test_an_output_folder_removed_mid_run_is_reported_at_that_write(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real, calls = probe.evaluate, []

    def remove_folder_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(out)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", remove_folder_on_second)
    result = run("lmc", A, B, *FAST, "--alphas", "0,0.5,1", "--csv", out / "lmc.csv", code=1)
    one_line_error(result, f"cannot write {out / 'lmc.csv'}", "became unwritable")
    assert len(calls) == 2  # reported at the failing write, not after the sweep
    assert "unexpected" not in result.stderr


def test_infinite_logits_give_nan_loss_and_accuracy_with_a_note(tmp_path):
    gen = torch.Generator().manual_seed(0)
    z, w = torch.randn(12, 4, generator=gen), torch.randn(3, 4, generator=gen)
    labels = torch.arange(12) % 3
    logits = z @ w.T
    logits[5, 0] = float("inf")
    path = tmp_path / "f.safetensors"
    save_file({"features": z, "labels": labels, "head": w, "logits": logits}, str(path))
    result = run("analyze", path, "--csv", "-")
    row = pd.read_csv(io.StringIO(result.stdout)).iloc[0]
    assert pd.isna(row["accuracy"]) and pd.isna(row["loss"])
    assert "logits of 1 of 12 samples are Inf/NaN (first: sample 5)" in row["note"]
    assert row["mir"] == row["mir"]  # the feature/head quantities are still defined


def test_scores_with_finite_logits_are_the_usual_ones():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 0])
    loss, accuracy, note = scores(logits, labels)
    want = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert (accuracy, note) == (2 / 3, "") and loss == pytest.approx(want, rel=1e-6)
