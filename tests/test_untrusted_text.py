"""Names from files (paths, class names, recorded architectures) are printed literally:
no terminal escape sequence, no rich markup, no crash after the work is done."""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd
from rich.console import Console
from test_cli import FAST, A, run

from infoprobe import report
from infoprobe.schema import PER_CLASS_COLUMNS

ESC = "\x1b]0;owned\x07\x1b[2J"


def test_markup_in_a_path_is_shown_literally_and_outputs_are_written(tmp_path):
    folder = tmp_path / "a[bold red]b["
    folder.mkdir()
    ckpt = shutil.copy(A, folder / "oops].safetensors")  # the path holds "[/oops]"
    csv, js = tmp_path / "out.csv", tmp_path / "out.json"
    result = run("prune", ckpt, *FAST, "--ratios", "0", "--csv", csv, "--json", js)
    assert "a[bold red]b[/oops]" in result.stdout
    assert pd.read_csv(csv)["checkpoint"].tolist() == [str(ckpt)]
    assert json.loads(js.read_text())["rows"][0]["checkpoint"] == str(ckpt)


def test_escape_sequences_in_a_path_never_reach_stderr(tmp_path):
    result = run("analyze", tmp_path / f"model{ESC}.safetensors", *FAST, code=2)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "model\\x1b]0;owned\\x07\\x1b[2J.safetensors" in result.stderr


def test_class_names_and_checkpoints_in_tables_are_escaped():
    row = {c: 1.0 for c in PER_CLASS_COLUMNS} | {
        "checkpoint": f"ck{ESC}.pt",
        "class": 0,
        "name": f"cat{ESC}",
        "n": 3,
    }
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system=None)
    report.render_rows(console, [row], PER_CLASS_COLUMNS, title=f"per class: ck{ESC}.pt")
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "cat\\x1b]0;owned" in text and "per class: ck\\x1b" in text


def test_plot_titles_take_dollar_signs_literally(tmp_path):
    rows = [
        {
            "ratio": 0.0,
            "accuracy": 1.0,
            "mir": 0.5,
            "hdr": 0.1,
            "mir_dense": 1.0,
            "hdr_dense": 0.0,
            "n_classes": 10,
            "sparsity": 0.0,
        }
    ]
    path = report.plot_prune(rows, tmp_path / "p.png", title="run$_x^{2$ a")
    assert path.stat().st_size > 0
