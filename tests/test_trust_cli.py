"""The command line refuses leaky data and never overwrites its own outputs."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from conftest import make_image_folder, make_timm
from safetensors.torch import save_file
from test_cli import DATA, FAST, LS, A, B, assert_same_numbers, one_line_error, reference, run

# ----------------------------------------------------------------------------- leaky data


def test_max_samples_below_the_class_count_is_refused():
    result = run("analyze", A, "--data", DATA, "--max-samples", 5, code=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("infoprobe: error: --max-samples 5") and "10 classes" in last


def test_rows_report_the_classes_present(tmp_path):
    csv = tmp_path / "a.csv"
    run("analyze", A, *FAST, "--csv", csv)
    frame = pd.read_csv(csv)
    assert frame["n_classes"].tolist() == [10] and frame["classes_present"].tolist() == [10]


def test_an_empty_class_folder_is_reported_and_keeps_the_labels(tmp_path):
    model = make_timm("test_resnet", num_classes=3, in_chans=3)
    ckpt = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(ckpt), metadata={"arch": "test_resnet"})
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "c": 3})
    (root / "b").mkdir()
    csv = tmp_path / "m.csv"
    result = run(
        "analyze",
        ckpt,
        "--data",
        root,
        "--input-size",
        16,
        "--device",
        "cpu",
        "--csv",
        csv,
        "--per-class",
        "--json",
        tmp_path / "m.json",
    )
    frame = pd.read_csv(csv)
    assert frame["n_classes"].tolist() == [3] and frame["classes_present"].tolist() == [2]
    assert "no samples of class b (index 1)" in result.stderr
    per_class = pd.read_json(tmp_path / "m.json", typ="series")["per_class"]
    assert [(r["class"], r["name"], r["n"]) for r in per_class] == [(0, "a", 2), (2, "c", 3)]


def test_lmc_reset_bn_on_the_evaluation_data_is_refused(tmp_path):
    copy = shutil.copy(DATA, tmp_path / "same.safetensors")
    for bn in (DATA, copy):
        result = run("lmc", A, B, *FAST, "--steps", 2, "--reset-bn", "--bn-data", bn, code=2)
        one_line_error(result, "--bn-data", "evaluation data", "--bn-on-eval-data")
    run(
        "lmc",
        A,
        B,
        *FAST,
        "--steps",
        2,
        "--reset-bn",
        "--bn-data",
        DATA,
        "--bn-batches",
        1,
        "--bn-on-eval-data",
    )


# ----------------------------------------------------------------------------- save-features


def test_save_features_names_keep_the_whole_stem(tmp_path):
    template = tmp_path / "feats-{name}.safetensors"
    run("analyze", *LS, *FAST, "--save-features", template)
    for path in LS:  # ls0.0 and ls0.1: names cut at the first dot would collide
        saved = tmp_path / f"feats-{path.name.removesuffix('.safetensors')}.safetensors"
        got = pd.read_csv(pd.io.common.StringIO(run("analyze", saved, "--csv", "-").stdout))
        assert_same_numbers(got.iloc[0], reference(path)[1])


@pytest.mark.parametrize("command", ["analyze", "track"])
def test_save_features_never_overwrites_its_own_output(tmp_path, command):
    for run_dir in ("r1", "r2"):
        (tmp_path / run_dir).mkdir()
        shutil.copy(A, tmp_path / run_dir / "last.safetensors")
    template = tmp_path / "feats-{name}.safetensors"
    result = run(
        command,
        tmp_path / "r1" / "last.safetensors",
        tmp_path / "r2" / "last.safetensors",
        *FAST,
        "--save-features",
        template,
        code=2,
    )
    one_line_error(result, "--save-features", "feats-last.safetensors")
    assert not list(tmp_path.glob("feats-*"))


# ----------------------------------------------------------------------------- track


def test_track_skips_aliases_and_goes_on_past_a_zero_head(tmp_path):
    from safetensors import safe_open

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with safe_open(str(A), framework="pt") as f:  # step 0 of a zero-initialised head
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {**f.metadata(), "step": "0"}
    for key in [k for k in tensors if k.startswith("classifier.")]:
        tensors[key] = tensors[key].zero_()
    save_file(tensors, str(run_dir / "step0.safetensors"), metadata=meta)
    shutil.copy(A, run_dir / "step210.safetensors")
    shutil.copy(A, run_dir / "last.safetensors")
    csv = tmp_path / "track.csv"
    result = run("track", run_dir, *FAST, "--csv", csv)
    assert f"skipping {run_dir / 'last.safetensors'}: an alias of step 210" in result.stderr
    frame = pd.read_csv(csv)
    assert frame["step"].tolist() == [0, 210]
    assert_same_numbers(frame.iloc[1], reference(A)[1])
    zero = pd.read_csv(csv, keep_default_na=False).iloc[0]  # NaN: an empty cell
    # logits all 0: argmax picks class 0 (15 of 150 samples), the loss is log 10
    assert float(zero["accuracy"]) == 0.1 and float(zero["loss"]) == pytest.approx(math.log(10))
    assert zero["mir"] == "" and zero["h_w"] == "" and float(zero["h_z"]) > 0
    assert "head rows of classes 0, 1, 2, 3, 4, ... are zero" in zero["note"]
    assert "zero" in result.stdout  # the note is printed under the table


# ----------------------------------------------------------------------------- transform


def test_the_transform_is_recorded_in_the_json_and_the_caption(tmp_path):
    model = make_timm("test_resnet", num_classes=2, in_chans=3)
    ckpt = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(ckpt), metadata={"arch": "test_resnet"})
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    js = tmp_path / "m.json"
    result = run(
        "analyze", ckpt, "--data", root, "--input-size", 16, "--device", "cpu", "--json", js
    )
    doc = json.loads(js.read_text())
    cfg = model.pretrained_cfg
    assert doc["transform"] == {
        "input_size": [3, 16, 16],
        "crop_pct": cfg["crop_pct"],
        "crop_mode": "center",
        "interpolation": cfg["interpolation"],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }
    assert (
        f"transform: 3x16x16, crop_pct={cfg['crop_pct']} (center), {cfg['interpolation']}, mean="
    ) in result.stdout
    tensors = json.loads(run("analyze", A, *FAST, "--json", "-").stdout)
    assert tensors["transform"] is None
