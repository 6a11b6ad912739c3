"""Options as a new user meets them: none is silently ignored, every one is declared once,
and the command line behaves as timm users expect."""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from rich.console import Console
from test_cli import DATA, FAST, FIX, A, B, one_line_error, run

import infoprobe
from infoprobe.cli import options as cli_options
from infoprobe.data import stratified_indices
from infoprobe.errors import InputError
from infoprobe.evaluation import Evaluation
from infoprobe.features_file import load_features, save_features
from infoprobe.options import COMMANDS, Role, specs
from infoprobe.report.tables import render_rows
from infoprobe.rows import percent
from infoprobe.schema import COLUMNS, NC_COLUMNS, SWEEP_COLUMNS

TRAIN = FIX / "digits" / "train.safetensors"


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A features file of checkpoint A on the whole digits test set (450 samples)."""
    path = tmp_path_factory.mktemp("f") / "a.safetensors"
    run("analyze", A, "--data", DATA, "--device", "cpu", "--save-features", path)
    return path


# ----------------------------------------------------------------------------- one declaration


def test_every_option_is_declared_once_with_a_role_and_a_flag():
    names = [n for n, _ in specs()]
    assert len(names) == len(set(names))
    flags = [f for _, s in specs() for f in s.flags]
    assert len(flags) == len(set(flags))
    for name, spec in specs():
        assert spec.flag.startswith("--") and spec.help and spec.role in Role, name
        assert spec.commands <= set(COMMANDS), name


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_line_takes_exactly_the_declared_options(command):
    declared = {n for n, _ in specs(command)}
    built = {p.name for p in cli_options.parameters(command)}
    assert built == declared
    api = getattr(infoprobe, command)
    with pytest.raises(TypeError):
        api(A, data=DATA, not_an_option=1)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_stays_under_100_lines(command):
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "infoprobe", command, "--help"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert 20 < len(out.splitlines()) < 100
    assert max(len(line) for line in out.splitlines()) <= 80


def test_version_answers_without_importing_torch():
    code = ("import sys; sys.argv = ['infoprobe', '--version']\n"
            "from infoprobe.__main__ import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out[:2] == ["infoprobe", infoprobe.__version__] and out[-1] == "False"


def test_the_version_is_kept_in_one_place():
    from importlib import metadata

    assert metadata.version("infoprobe") == infoprobe.__version__
    text = (FIX.parent / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*\"", text, re.M) and "dynamic = [" in text


# ----------------------------------------------------------------------------- never ignored


def test_max_samples_on_a_features_file_is_the_same_subsample(features):
    full = load_features(features)
    row = infoprobe.analyze(features, max_samples=20, seed=4).iloc[0]
    keep = stratified_indices(full.labels, 20, 4)
    assert row["n_samples"] == 20 and row["classes_present"] == 10
    want = infoprobe.interplay(full.features[keep], full.labels[keep], full.head)
    assert row["mir"] == pytest.approx(want.mir, rel=1e-12)
    with pytest.raises(InputError, match="--max-samples 5 keeps fewer samples than the 10 classes"):
        infoprobe.analyze(features, max_samples=5)  # classes would be lost, as with images


def test_valid_labels_on_a_features_file_restricts_exactly(features, tmp_path):
    full = load_features(features)
    keep = [7, 3, 5]
    row = infoprobe.analyze(features, valid_labels=keep).iloc[0]
    mask = torch.isin(full.labels, torch.tensor(keep))
    labels = torch.tensor([keep.index(int(y)) for y in full.labels[mask]])
    logits = full.logits[mask][:, keep]
    want = infoprobe.interplay(full.features[mask], labels, full.head[keep])
    assert row["n_samples"] == int(mask.sum()) and row["n_classes"] == 3
    assert row["mir"] == pytest.approx(want.mir, rel=1e-12)
    assert row["accuracy"] == float((logits.argmax(1) == labels).double().mean())
    labels_file = tmp_path / "v.txt"
    labels_file.write_text("7\n3\n5\n")
    again = infoprobe.analyze(features, valid_labels=str(labels_file)).iloc[0]
    assert again["mir"] == row["mir"]


@pytest.mark.parametrize(
    "args,words",
    [
        (["--class-map", "m.txt"], ["--class-map", "features file"]),
        (["--input-size", "3", "8", "8"], ["--input-size", "does not apply"]),
        (["--arch", "resnet18"], ["--arch", "does not apply"]),
        (["--data", str(DATA)], ["--data", "does not apply"]),
    ],
)
def test_options_that_do_not_apply_to_a_features_file_are_refused(features, args, words):
    one_line_error(run("analyze", features, *args, code=2), *words)


@pytest.mark.parametrize(
    "args,words",
    [
        (["--crop-pct", "0"], ["--crop-pct 0.0", "must be > 0"]),
        (["--input-size", "3", "32", "32"], ["--input-size", "tensor file"]),
        (["--split", "val"], ["--split", "tensor file"]),
        (["--amp-dtype", "fp16"], ["--amp-dtype applies only with --amp"]),
        (["--probes", "30", "--estimate", "exact"], ["--probes applies only with"]),
        (["--estimate-batch-size", "64"], ["--estimate-batch-size applies only with"]),
    ],
)
def test_options_without_effect_are_refused(args, words):
    one_line_error(run("analyze", A, *FAST, *args, code=2), *words)


@pytest.mark.parametrize(
    "text,words",
    [("", ["names no class"]), ("a\nb\na\n", ["'a' is on lines 1 and 3"]),
     ("a\n\nb\n", ["line 2 is blank"]), (b"\x00\xff\x10", ["not UTF-8"])],
)  # fmt: skip
def test_class_map_edge_cases_are_refused(tmp_path, text, words):
    path = tmp_path / "map.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    one_line_error(run("analyze", A, "--data", folder, "--class-map", path, code=2), *words)


# ----------------------------------------------------------------------------- habits


def test_ratios_and_alphas_take_spaces_as_well_as_commas(tmp_path):
    spaced = run("prune", A, *FAST, "--ratios", "0", "0.5", "--csv", tmp_path / "s.csv")
    run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", tmp_path / "c.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s.csv"), pd.read_csv(tmp_path / "c.csv"))
    assert spaced.exit_code == 0
    run("lmc", A, B, *FAST, "--alphas", "0", "1", "--csv", tmp_path / "l.csv")
    assert pd.read_csv(tmp_path / "l.csv")["alpha"].tolist() == [0.0, 1.0]


def test_each_data_input_takes_its_own_split(tmp_path):
    from test_timm_cli import digits_pngs

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        digits_pngs(root / split)
    args = ["--data", root, "--split", "val", "--input-size", "1", "16", "16"]
    frame = infoprobe.lmc(A, B, alphas="0 1", reset_bn=True, bn_data=str(root),
                          bn_split="train", bn_batches=1, data=str(root), split="val",
                          input_size="1 16 16", device="cpu")  # fmt: skip
    assert frame["alpha"].tolist() == [0.0, 1.0]
    one_line_error(
        run("lmc", A, B, *args, "--reset-bn", "--bn-data", root, "--bn-split", "val", code=2),
        "--bn-data", "is the evaluation data",
    )  # fmt: skip


def _rows(command: str, n: int = 2) -> list[dict]:
    columns = SWEEP_COLUMNS[command] + COLUMNS
    rows = []
    for i in range(n):
        row = {c: 0.123456 for c in columns}
        row.update(checkpoint="runs/model.safetensors", model="m", note="", estimate="exact")
        row.update({c: i * 0.5 for c in SWEEP_COLUMNS[command][:1]})
        rows.append(row)
    return rows


def test_a_fine_tuning_prune_table_keeps_its_fine_tuned_columns_at_80():
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    columns = [c for c in SWEEP_COLUMNS["prune"] + COLUMNS if c not in NC_COLUMNS]
    render_rows(console, _rows("prune"), columns, key="ratio")
    text = console.export_text()
    header = next(line for line in text.splitlines() if "ratio" in line)
    assert "ft_mir" in header and "ft_hdr" in header and "mir_dense" not in header
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_rows(console, _rows("analyze"), ["checkpoint", *NC_COLUMNS])
    assert "nc4" in console.export_text()


def test_piped_tables_honour_columns(monkeypatch):
    from infoprobe.cli.output import stdout

    monkeypatch.setenv("COLUMNS", "91")
    assert stdout().width == 91
    monkeypatch.delenv("COLUMNS")
    assert stdout().width == 160  # a pipe without COLUMNS: wide rather than folded


def test_csv_numbers_carry_no_float_noise(tmp_path):
    assert percent(7 / 200, 200) == 3.5 and 100 * (7 / 200) != 3.5
    assert math.isnan(percent(math.nan, 3))
    evaluation = Evaluation(torch.eye(4, 3)[:, :3] + 0.1, torch.eye(4, 3)[:, :3] * 0 + 1,
                                  torch.tensor([0, 1, 2, 0]), torch.eye(3), 0.5, 0.25)  # fmt: skip
    evaluation.logits = torch.tensor([[9.0, 0, 0], [0, 0, 9], [0, 0, 9], [0, 9, 0]])
    path = save_features(tmp_path / "f.safetensors", evaluation)
    run("analyze", path, "--csv", tmp_path / "r.csv")
    cells = (tmp_path / "r.csv").read_text().splitlines()[1].split(",")
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert cells[header.index("top1")] == "50.0" and cells[header.index("accuracy")] == "0.5"


@pytest.mark.parametrize("command", ["track", "lmc", "prune", "analyze"])
def test_plot_redraws_a_commands_figure_from_its_csv(tmp_path, command):
    pytest.importorskip("matplotlib")
    csv = tmp_path / f"{command}.csv"
    args = {"track": [FIX / "series"], "lmc": [A, B, "--alphas", "0 1"],
            "prune": [A, "--ratios", "0 0.5"], "analyze": [A, B]}[command]  # fmt: skip
    run(command, *args, *FAST, "--csv", csv)
    out = tmp_path / "figure.png"
    run("plot", csv, "--out", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(run("plot", csv, "--out", csv, code=2), "--out", "FILE.csv")


def test_plot_refuses_a_csv_it_did_not_write(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    one_line_error(run("plot", other, code=2), "not a CSV written by infoprobe")


def test_the_cli_builds_parameters_from_the_declaration_only():
    source = inspect.getsource(cli_options)
    assert "--max-samples" not in source and "--csv" not in source  # nothing listed here
