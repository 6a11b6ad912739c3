"""``--layers`` on the command line and ``layers=`` in the API: long-format rows (one per
checkpoint and layer), the CSV, the grouped table, the figures, resume and bad input.

The numbers are checked against the plain run: the head's-input row of a layer run equals
the row ``analyze`` gives without ``--layers``, computed on another path through the code.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from test_cli import FAST, LS, SERIES, one_line_error, run
from test_partial_runs import counting

from infoprobe import api
from infoprobe.schema import COLUMNS, LAYER_COLUMNS

RESNET_LAYERS = ["act1", "layer1", "layer2", "layer3", "layer4", "pre_logits"]
EFFNET_LAYERS = ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "pre_logits"]
NUMBERS = [c for c in COLUMNS if c not in ("checkpoint", "model", "estimate", "note")]


def _same(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9


@pytest.mark.slow
def test_analyze_layers_writes_one_row_per_checkpoint_and_layer(tmp_path):
    csv, png, js = tmp_path / "l.csv", tmp_path / "l.png", tmp_path / "l.json"
    result = run("analyze", *LS, *FAST, "--layers", "stages", "--csv", csv, "--plot", png,
                 "--json", js)  # fmt: skip
    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(LAYER_COLUMNS)
    assert frame.checkpoint.tolist() == [str(p) for p in LS for _ in RESNET_LAYERS]
    assert frame.layer.tolist() == RESNET_LAYERS * 2
    assert frame.pooling.tolist() == (["avg"] * 5 + ["head"]) * 2
    run("analyze", *LS, *FAST, "--csv", tmp_path / "p.csv")
    plain = pd.read_csv(tmp_path / "p.csv")
    heads = frame[frame.layer == "pre_logits"].reset_index(drop=True)
    for column in NUMBERS:
        assert all(map(_same, heads[column], plain[column])), column
    assert png.stat().st_size > 0
    doc = json.loads(js.read_text())
    assert [r["layer"] for r in doc["rows"]] == RESNET_LAYERS * 2
    # the tables (information, neural collapse) name each checkpoint once, over its layers
    assert result.stdout.count("ls0.0") == 2 and result.stdout.count("ls0.1") == 2
    assert "note: act1, layer1, layer2, layer3: nc3 is undefined" in result.stdout


@pytest.mark.slow
def test_track_layers_and_resume(tmp_path, monkeypatch):
    csv, png = tmp_path / "t.csv", tmp_path / "t.png"
    run("track", *SERIES, *FAST, "--layers", "stages", "--csv", csv, "--plot", png)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["step", *LAYER_COLUMNS]
    assert frame.layer.tolist() == EFFNET_LAYERS * len(SERIES)
    assert frame.step.tolist() == [s for s in (0, 25, 32, 40, 60, 210) for _ in EFFNET_LAYERS]
    assert png.stat().st_size > 0
    # resumed: nothing measured again; with one checkpoint's rows gone, that one only
    calls = counting(monkeypatch)
    run("track", *SERIES, *FAST, "--layers", "stages", "--csv", csv, "--resume")
    assert calls == [] and pd.read_csv(csv).equals(frame)
    frame[frame.step != 32].to_csv(csv, index=False)
    run("track", *SERIES, *FAST, "--layers", "stages", "--csv", csv, "--resume")
    assert len(calls) == 1
    again = pd.read_csv(csv)
    assert again.layer.tolist() == frame.layer.tolist()
    assert all(map(_same, again.mir, frame.mir))
    redrawn = tmp_path / "redrawn.png"
    run("plot", csv, "--out", redrawn)
    assert redrawn.stat().st_size > 0


def test_resume_refuses_other_layers(tmp_path):
    csv = tmp_path / "l.csv"
    run("analyze", LS[0], *FAST, "--layers", "layer4", "--csv", csv)
    result = run("analyze", LS[0], *FAST, "--layers", "stages", "--csv", csv, "--resume", code=2)
    one_line_error(result, "--layers")


def test_the_api_takes_layers_and_names_them(tmp_path):
    frame = api.analyze(LS[0], FAST[1], max_samples=60, device="cpu", layers=["layer2", -1])
    assert frame.layer.tolist() == ["layer2", "layer4", "pre_logits"]
    assert list(frame.columns) == list(LAYER_COLUMNS)
    assert frame.attrs["command"] == "analyze"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--layers", "layer9"], ["no such module", "act1, layer1"]),
        (["--layers", "a;b"], ["is not a layer"]),
    ],
)
def test_bad_layers_exit_2_with_one_line(args, words):
    # a name is checked against the model, so after the progress line that loads it
    result = run("analyze", LS[0], *FAST, *args, code=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("infoprobe: error: --layers") and all(w in last for w in words)
    assert "Traceback" not in result.stdout + result.stderr


def test_layers_need_checkpoints_and_apply_to_analyze_and_track_only(tmp_path):
    run("analyze", LS[0], *FAST, "--save-features", tmp_path / "{name}.safetensors")
    features = tmp_path / "ls0.0.safetensors"
    result = run("analyze", features, "--layers", "stages", code=2)
    one_line_error(result, "--layers needs checkpoints")
    result = run("lmc", LS[0], LS[1], *FAST, "--layers", "stages", code=2)
    assert "No such option" in result.stderr and "--layers" in result.stderr
