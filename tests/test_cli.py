"""The infoprobe command on the bundled fixtures: numbers, schema, outputs and errors.

Every numeric check compares the CLI with the library path it wraps
(``load_model`` -> ``load_data`` -> ``evaluate`` -> ``analysis_row``). The runs use a
seeded 150-sample subsample of the digits test set to stay fast on 2 CPU cores.
"""

from __future__ import annotations

import csv as csv_module
import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from infoprobe import __version__, cli, probe
from infoprobe.checkpoints import load_model
from infoprobe.data import load_data
from infoprobe.errors import RunFailure
from infoprobe.evaluation import Evaluation
from infoprobe.probe import evaluate
from infoprobe.rows import analysis_row, per_class_rows
from infoprobe.schema import COLUMNS, MODEL_COLUMNS, SWEEP_COLUMNS
from infoprobe.sweeps.lmc import barriers

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
DATA = FIX / "digits" / "test.safetensors"
A = FIX / "lmc" / "same_init_a.safetensors"
B = FIX / "lmc" / "same_init_b.safetensors"
OTHER = FIX / "lmc" / "other_init.safetensors"
LS = sorted((FIX / "label_smoothing").glob("ls*.safetensors"))
SERIES = sorted((FIX / "series").glob("*-step*.safetensors"))
N = 150
FAST = ["--data", str(DATA), "--max-samples", str(N), "--device", "cpu"]
NUMERIC = [c for c in COLUMNS if c not in ("checkpoint", "estimate", "note", *MODEL_COLUMNS)]

runner = CliRunner()


def run(*args: object, code: int = 0):
    """Invoke the app; check the exit code; return the result."""
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == code, (
        result.exit_code,
        result.stdout,
        result.stderr,
        result.exception,
    )
    return result


_REFERENCE: dict[Path, tuple] = {}


def reference(path: Path) -> tuple[Evaluation, dict]:
    """The library's evaluation and row for a fixture checkpoint (cached per path)."""
    if path not in _REFERENCE:
        loaded = load_model(path)
        data = load_data(DATA, model=loaded.model, max_samples=N)
        evaluation = evaluate(loaded.model, data, device="cpu")
        _REFERENCE[path] = evaluation, analysis_row(str(path), evaluation)
    return _REFERENCE[path]


def assert_same_numbers(got: dict, want: dict) -> None:
    for column in NUMERIC:
        g, w = float(got[column]), float(want[column])
        assert g == pytest.approx(w, rel=1e-9, abs=1e-12) or (math.isnan(g) and math.isnan(w)), (
            column
        )


def one_line_error(result, *words: str) -> None:
    """stderr ends in one 'infoprobe: error:' line containing ``words``; no traceback.

    Progress logs may come before it (bad input is caught before any, so none there).
    """
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("infoprobe: error: ")]
    assert errors == lines[-1:], result.stderr
    if result.exit_code == 2:
        assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    assert "Traceback" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- analyze


def test_analyze_matches_the_library_and_the_csv_schema(tmp_path):
    csv, js = tmp_path / "ls.csv", tmp_path / "ls.json"
    result = run("analyze", *LS, *FAST, "--csv", csv, "--json", js)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["checkpoint"].tolist() == [str(p) for p in LS]
    for (_, got), path in zip(frame.iterrows(), LS, strict=True):
        assert_same_numbers(got, reference(path)[1])
    assert set(frame["estimate"]) == {"exact"} and set(frame["n_samples"]) == {N}
    doc = json.loads(js.read_text())
    assert doc["command"] == "analyze" and doc["n_samples"] == N and doc["estimate"] == "exact"
    assert [r["checkpoint"] for r in doc["rows"]] == [str(p) for p in LS]
    # the table went to stdout, the logs to stderr
    assert "mir" in result.stdout and "ls0.1" in result.stdout
    assert "wrote" in result.stderr and "wrote" not in result.stdout


def test_analyze_csv_to_stdout_replaces_the_table(tmp_path):
    result = run("analyze", A, *FAST, "--csv", "-")
    frame = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 1
    assert_same_numbers(frame.iloc[0], reference(A)[1])


def test_analyze_per_class_table_and_json(tmp_path):
    js = tmp_path / "per_class.json"
    result = run("analyze", A, *FAST, "--per-class", "--json", js)
    assert "per class" in result.stdout and "cos_head" in result.stdout
    doc = json.loads(js.read_text())
    want = per_class_rows(str(A), reference(A)[0], [str(c) for c in range(10)])
    assert len(doc["per_class"]) == 10 and sum(r["n"] for r in doc["per_class"]) == N
    for got, expected in zip(doc["per_class"], want, strict=True):
        for key in ("class", "n", "accuracy", "loss", "h_z", "cos_head"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


def test_features_file_round_trip_needs_no_data(tmp_path):
    features = tmp_path / "feats-{name}.safetensors"
    run("analyze", A, *FAST, "--save-features", features)
    saved = tmp_path / "feats-same_init_a.safetensors"
    result = run("analyze", saved, "--csv", "-")
    got = pd.read_csv(pd.io.common.StringIO(result.stdout)).iloc[0]
    assert_same_numbers(got, reference(A)[1])


# ----------------------------------------------------------------------------- track


def _without_step(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint whose metadata records no step or epoch."""
    with safe_open(str(src), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k not in ("step", "epoch")}
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(dst), metadata=meta)
    return dst


def test_track_orders_a_directory_by_recorded_step_and_plots(tmp_path):
    chosen = [SERIES[-1], SERIES[0]]  # step 210 and step 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # names that sort the wrong way: the recorded step must win
    shutil.copy(chosen[0], run_dir / "a.safetensors")
    shutil.copy(chosen[1], run_dir / "b.safetensors")
    csv, plot = tmp_path / "track.csv", tmp_path / "track.png"
    run("track", run_dir, *FAST, "--csv", csv, "--plot", plot)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["step", *COLUMNS]
    assert frame["step"].tolist() == [0, 210]
    assert frame["checkpoint"].tolist() == [
        str(run_dir / "b.safetensors"),
        str(run_dir / "a.safetensors"),
    ]
    assert_same_numbers(frame.iloc[1], reference(A)[1])  # step 210 is run A's last checkpoint
    assert plot.stat().st_size > 1000


def test_track_without_recorded_steps_uses_file_name_numbers(tmp_path):
    files = [
        _without_step(SERIES[0], tmp_path / "ep10.safetensors"),
        _without_step(SERIES[-1], tmp_path / "ep2.safetensors"),
    ]
    result = run("track", *files, *FAST, "--json", "-")
    doc = json.loads(result.stdout)
    assert [r["step"] for r in doc["rows"]] == [2, 10]
    assert doc["columns"] == list(SWEEP_COLUMNS["track"] + COLUMNS)


def test_track_empty_directory_is_bad_input(tmp_path):
    result = run("track", tmp_path, *FAST, code=2)
    one_line_error(result, "holds no checkpoint files")


# ----------------------------------------------------------------------------- lmc


def test_lmc_endpoints_equal_analyze_and_barriers_are_reported(tmp_path):
    csv, js = tmp_path / "lmc.csv", tmp_path / "lmc.json"
    result = run("lmc", A, B, *FAST, "--steps", 3, "--csv", csv, "--json", js)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(SWEEP_COLUMNS["lmc"] + COLUMNS)
    assert frame["alpha"].tolist() == [0.0, 0.5, 1.0]
    assert_same_numbers(frame.iloc[0], reference(A)[1])
    assert_same_numbers(frame.iloc[2], reference(B)[1])
    doc = json.loads(js.read_text())
    want = barriers(frame.to_dict("records"))
    for key in ("loss_barrier", "loss_barrier_alpha", "accuracy_barrier"):
        assert doc["barriers"][key] == pytest.approx(want[key])
    assert "barriers: loss barrier" in result.stdout


def test_lmc_interrupted_keeps_rows_and_resume_finishes(tmp_path, monkeypatch):
    csv = tmp_path / "lmc.csv"
    calls = {"n": 0}
    real = probe.evaluate

    def interrupt_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", interrupt_second)
    result = run("lmc", A, B, *FAST, "--alphas", "0,1", "--csv", csv, code=130)
    assert "interrupted" in result.stderr
    kept = pd.read_csv(csv)
    assert kept["alpha"].tolist() == [0.0]  # the finished row survived

    monkeypatch.setattr(probe, "evaluate", real)
    counted = {"n": 0}

    def count(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", count)
    result = run("lmc", A, B, *FAST, "--alphas", "0,1", "--csv", csv, "--resume")
    assert counted["n"] == 1 and "resuming: 1 finished rows" in result.stderr
    frame = pd.read_csv(csv)
    assert frame["alpha"].tolist() == [0.0, 1.0]
    pd.testing.assert_frame_equal(frame.iloc[:1], kept)
    assert_same_numbers(frame.iloc[1], reference(B)[1])


def test_lmc_resume_refuses_another_runs_csv(tmp_path):
    csv = tmp_path / "lmc.csv"
    run("lmc", A, B, *FAST, "--alphas", "0", "--csv", csv)
    result = run("lmc", A, OTHER, *FAST, "--alphas", "0,1", "--csv", csv, "--resume", code=2)
    one_line_error(result, "another run")


def test_lmc_mismatched_architectures(tmp_path):
    with safe_open(str(A), framework="pt") as f:  # A with a 5-class head
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {**f.metadata(), "num_classes": "5"}
    for key in [k for k in tensors if k.startswith("classifier.")]:
        tensors[key] = tensors[key][:5].contiguous()
    five = tmp_path / "five.safetensors"
    save_file(tensors, str(five), metadata=meta)
    result = run("lmc", A, five, *FAST, "--steps", 3, code=2)
    one_line_error(result, "same architecture")


# ----------------------------------------------------------------------------- prune


def test_prune_ratio_zero_equals_analyze_and_sparsity_is_measured(tmp_path):
    csv = tmp_path / "prune.csv"
    result = run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", csv)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(SWEEP_COLUMNS["prune"] + COLUMNS)
    assert frame["ratio"].tolist() == [0.0, 0.5]
    assert frame["sparsity"].tolist() == pytest.approx([0.0, 0.5], abs=1e-4)
    assert_same_numbers(frame.iloc[0], reference(A)[1])
    assert frame["accuracy"][1] < frame["accuracy"][0]
    assert "no fine-tuning" in result.stdout


def test_prune_without_dense_metrics(tmp_path):
    with_dense, without = tmp_path / "a.csv", tmp_path / "b.csv"
    run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", with_dense)
    run("prune", A, *FAST, "--ratios", "0,0.5", "--no-dense-metrics", "--csv", without)
    a, b = pd.read_csv(with_dense), pd.read_csv(without)
    assert a["hdr_dense"][0] == pytest.approx(0.0, abs=1e-12)  # dense vs itself
    assert b["mir_dense"].isna().all() and b["hdr_dense"].isna().all()
    assert b["note"].str.contains("dense_metrics=False").all()
    assert a["mir"].tolist() == b["mir"].tolist()


def test_prune_resume_skips_finished_ratios(tmp_path, monkeypatch):
    csv = tmp_path / "prune.csv"
    run("prune", A, *FAST, "--ratios", "0", "--csv", csv)
    calls = {"n": 0}
    real = probe.evaluate

    def count(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", count)
    run("prune", A, *FAST, "--ratios", "0,0.3", "--csv", csv, "--resume")
    assert calls["n"] == 2  # the dense reference and ratio 0.3; ratio 0 came from the CSV
    assert pd.read_csv(csv)["ratio"].tolist() == [0.0, 0.3]


def test_prune_bad_ratio_is_bad_input():
    one_line_error(run("prune", A, *FAST, "--ratios", "0,1.5", code=2), "--ratios")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["analyze", A, "--bogus"], ["No such option: --bogus"]),
        (["analyze", A, *FAST, "--csv", "-", "--json", "-"], ["both write to stdout"]),
        (["analyze", A], ["--data is required"]),
        (["analyze", FIX / "nope.safetensors", *FAST], ["does not exist"]),
        (["analyze", A, "--data", FIX / "nope.safetensors"], ["--data", "does not exist"]),
        (["analyze", A, *FAST, "--csv", FIX / "no-dir" / "x.csv"], ["--csv", "does not exist"]),
        (["track", *SERIES[:2], *FAST, "--plot", "x.txt"], ["unknown image type"]),
        (["lmc", A, B, *FAST, "--steps", 3, "--alphas", "0,1"], ["--steps", "--alphas"]),
        (["lmc", A, B, *FAST, "--reset-bn"], ["--bn-data"]),
        (["lmc", A, B, *FAST, "--bn-data", DATA], ["--reset-bn"]),
        (["lmc", A, B, *FAST, "--resume"], ["--csv FILE"]),
        (["prune", A, *FAST, "--ratios", "0,0.5", "--resume", "--csv", "-"], ["--csv FILE"]),
        (["prune", A, *FAST, "--ratios", "0", "--method", "best"], ["--method"]),
        (["analyze", A, *FAST, "--estimate", "guess"], ["--estimate"]),
        (["analyze", *LS, *FAST, "--save-features", "f.safetensors"], ["{name}"]),
        (["analyze", A, *FAST, "--device", "tpu"], ["--device tpu"]),
        (["analyze", A, *FAST, "--mean", "a,b"], ["--mean"]),
        (["analyze", A, *FAST, "--input-size", "1,2"], ["--input-size"]),
        (["analyze", A, *FAST, "--model-kwargs", "depth"], ["--model-kwargs", "key=value"]),
        (["analyze", A, *FAST, "--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("bad input must be caught before any model is loaded")

    monkeypatch.setattr("infoprobe.checkpoints.load_model", no_work)
    one_line_error(run(*args, code=2), *words)


def test_error_text_is_printed_literally():
    """rich must not turn ':factory:' into an emoji or '[...]' into markup."""
    result = run("analyze", A, *FAST, "--arch", "[missing].py:factory", "--trust-code", code=2)
    assert "--arch [missing].py:factory: model file [missing].py" in result.stderr


def test_runtime_failure_exits_1(monkeypatch):
    def boom(*args, **kwargs):
        raise RunFailure("out of memory at batch size 1; use --device cpu")

    monkeypatch.setattr(probe, "evaluate", boom)
    one_line_error(run("analyze", A, *FAST, code=1), "out of memory")


def test_unexpected_error_exits_1_with_a_debug_hint(monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(probe, "evaluate", bug)
    one_line_error(run("analyze", A, *FAST, code=1), "ZeroDivisionError", "--debug")
    result = run("analyze", A, *FAST, "--debug", code=1)  # --debug keeps the exit code
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_unwritable_output_is_checked_before_any_work(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "evaluate", lambda *a, **k: calls.append(1))
    result = run("lmc", A, B, *FAST, "--json", tmp_path, code=2)
    one_line_error(result, "is a folder, not a regular file")
    assert calls == []


# ----------------------------------------------------------------------------- help, version


@pytest.mark.parametrize("command", ["analyze", "track", "lmc", "prune"])
def test_help_on_every_command_shows_examples(command):
    for flag in ("-h", "--help"):
        result = run(command, flag)
        assert "Examples" in result.stdout and f"infoprobe {command}" in result.stdout
        assert "--data" in result.stdout and "--csv" in result.stdout
    if command == "prune":
        assert "--finetune-data" in result.stdout and "--optimizer" in result.stdout


def test_version_and_module_entry_point(monkeypatch, capsys):
    assert run("--version").stdout.startswith(f"infoprobe {__version__}")
    # `python -m infoprobe` runs the console script's main(), in-process here
    monkeypatch.setattr(sys, "argv", ["infoprobe", "--version"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("infoprobe", run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"infoprobe {__version__}")


def test_entry_point_usage_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["infoprobe", "lmc", "--stesp", "3"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infoprobe: error: No such option: --stesp") and "\n" not in err


def test_analyze_past_max_exact_dim_estimates_with_error_bars(tmp_path):
    """auto: the joint solve (150 x 150) is over the limit, so slq gives h_zw/mi/mir with
    error bars; h_z, h_w and hdr stay exact. --estimate exact leaves the joint empty."""
    csv = tmp_path / "est.csv"
    result = run("analyze", A, *FAST, "--max-exact-dim", 100, "--probes", 8, "--csv", csv)
    raw = csv.read_text().splitlines()
    got = pd.read_csv(csv).iloc[0]
    want = reference(A)[1]
    assert got["estimate"].startswith("slq(probes=8,steps=")
    assert got["estimate"].endswith(",seed=0)")
    for column in ("h_z", "h_w", "hdr"):
        assert got[column] == pytest.approx(want[column], abs=1e-12)
    assert abs(got["mir"] - want["mir"]) <= 2 * got["mir_err"] and got["mir_err"] > 0
    assert got["mir_lower"] <= want["mir"] and (got["n_used"], got["n_batches"]) == (N, 1)
    assert f"{got['mir']:.4f} ± {got['mir_err']:.4f}" in result.stdout
    exact = run("analyze", A, *FAST, "--max-exact-dim", 100, "--estimate", "exact", "--csv", "-")
    cells = next(csv_module.DictReader(exact.stdout.splitlines()))  # the raw text of each cell
    assert cells["h_zw"] == cells["mi"] == cells["mir"] == "" and cells["hdr"] != ""
    assert "max_exact_dim=100" in cells["note"] and raw[0] == exact.stdout.splitlines()[0]
