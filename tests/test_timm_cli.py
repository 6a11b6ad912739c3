"""infoprobe as a timm user meets it: agreement with a copy of timm's validate.py loop on a
real image folder, timm's flag spellings, validate.py's columns, --class-map/--valid-labels,
whole folders of checkpoints and per-class CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from timm.models import save_for_hf
from typer.testing import CliRunner

from infoprobe import cli
from infoprobe.checkpoints import load_model
from infoprobe.schema import COLUMNS, PER_CLASS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
# 25 steps into training (21% test accuracy, top-5 91%): neither is 0 or 100
STEP25 = ROOT / "fixtures" / "series" / "test_efficientnet-step025.safetensors"
# the fixture models saw digits scaled to [0, 1], standardised, upsampled to 16x16
DATA_CFG = {
    "input_size": (1, 16, 16),
    "mean": (0.305225,),
    "std": (0.376006,),
    "crop_pct": 1.0,
    "interpolation": "bilinear",
}
PER_CLASS = 12
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

runner = CliRunner()


def run(*args: object, code: int = 0):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def digits_pngs(root: Path, classes: dict[str, int] | None = None) -> Path:
    """sklearn's digits as 8x8 greyscale PNGs (pixel 0..16 -> 0..255), PER_CLASS of each
    class, in folders named ``classes[name] = digit`` (default: the digit itself)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = classes or {str(c): c for c in range(10)}
    for name, c in classes.items():
        (root / name).mkdir(parents=True)
        for i in np.nonzero(digits.target == c)[0][-PER_CLASS:]:
            pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    """STEP25 written by timm's save_for_hf with the data config it was trained with."""
    folder = tmp_path_factory.mktemp("hf") / "step25"
    save_for_hf(
        load_model(STEP25).model, str(folder), safe_serialization=True, data_config=DATA_CFG
    )
    return folder


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    return digits_pngs(tmp_path_factory.mktemp("digits") / "val")


def validate_py(
    model_dir: Path, data: Path, class_map: str = "", valid_labels: list[int] | None = None
) -> tuple[float, float]:
    """top-1 and top-5 (percent) as timm's validate.py computes them with
    ``--model local-dir:MODEL_DIR --no-prefetcher --device cpu -b 25 -j 0`` (its loop,
    copied)."""
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.utils import AverageMeter, accuracy

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)  # local files only
    data_config = resolve_data_config(model=model, use_test_size=True)
    dataset = create_dataset(
        root=str(data),
        name="",
        split="validation",
        class_map=class_map,
        input_img_mode="RGB" if data_config["input_size"][0] == 3 else "L",
    )
    loader = create_loader(
        dataset,
        input_size=data_config["input_size"],
        batch_size=25,
        use_prefetcher=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=0,
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config["crop_mode"],
        device=torch.device("cpu"),
    )
    top1, top5 = AverageMeter(), AverageMeter()
    model.eval()
    with torch.inference_mode():
        for input, target in loader:
            output = model(input)
            if valid_labels is not None:
                output = output[:, valid_labels]
            acc1, acc5 = accuracy(output.detach(), target, topk=(1, 5))
            top1.update(acc1.item(), output.shape[0])
            top5.update(acc5.item(), output.shape[0])
    return top1.avg, top5.avg


def same_as_validate_py(row: pd.Series, expected: tuple[float, float]) -> None:
    """validate.py averages float32 batch percentages, so its values carry float32
    rounding: compare the counts of correct samples they stand for, which are exact."""
    n = int(row["n_samples"])
    for column, fraction, value in zip(
        ("top1", "top5"), ("accuracy", "accuracy_top5"), expected, strict=True
    ):
        count = round(value * n / 100)
        assert value == pytest.approx(100 * count / n, rel=1e-6)  # it is a count
        assert row[fraction] * n == pytest.approx(count, abs=1e-9), column
        assert row[column] == pytest.approx(100 * count / n, rel=1e-12), column


def analyze_csv(tmp_path: Path, *args: object) -> pd.DataFrame:
    csv = tmp_path / "out.csv"
    run("analyze", *args, "--device", "cpu", "--csv", csv)
    return pd.read_csv(csv)


def test_analyze_agrees_with_validate_py(tmp_path, hf_model, pngs):
    frame = analyze_csv(tmp_path, hf_model, "--data", pngs)  # no flags: config.json drives
    top1, top5 = validate_py(hf_model, pngs)
    assert 0 < top1 < top5 < 100
    same_as_validate_py(frame.iloc[0], (top1, top5))
    assert frame.loc[0, "n_samples"] == 10 * PER_CLASS


def test_model_columns_mean_what_validate_py_writes(tmp_path, hf_model, pngs):
    row = analyze_csv(tmp_path, hf_model, "--data", pngs).iloc[0]
    fresh = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    assert row["model"] == "test_efficientnet"
    assert row["param_count"] == pytest.approx(
        sum(p.numel() for p in fresh.parameters()) / 1e6, abs=1e-12
    )
    assert row["img_size"] == DATA_CFG["input_size"][-1]


def test_timm_spellings_equal_the_old_forms(tmp_path, pngs):
    bare = tmp_path / "bare.pth"
    torch.save(load_model(STEP25).model.state_dict(), bare)
    timm_style = analyze_csv(
        tmp_path,
        bare,
        "-m",
        "test_efficientnet",
        "--data",
        pngs,
        "--input-size",
        1,
        20,
        20,
        "--mean",
        0.3,
        "--std",
        0.4,
        0.4,
        "-b",
        7,
        "-j",
        0,
        "--model-kwargs",
        "drop_rate=0.0",
        "global_pool=max",
        "--crop-pct",
        1,
    )
    old_style = analyze_csv(
        tmp_path,
        bare,
        "--arch",
        "test_efficientnet",
        "--data",
        pngs,
        "--input-size",
        "1,20,20",
        "--mean",
        "0.3",
        "--std",
        "0.4",
        "--batch-size",
        7,
        "--workers",
        0,
        "--model-kwargs",
        "drop_rate=0.0",
        "--model-kwargs",
        "global_pool=max",
        "--crop-pct",
        1,
    )
    pd.testing.assert_frame_equal(timm_style, old_style)
    assert timm_style.loc[0, "img_size"] == 20
    default = analyze_csv(
        tmp_path,
        bare,
        "-m",
        "test_efficientnet",
        "--data",
        pngs,
        "--input-size",
        1,
        20,
        20,
        "--mean",
        0.3,
        "--std",
        0.4,
    )
    assert default.loc[0, "h_z"] != timm_style.loc[0, "h_z"]  # global_pool=max took effect


def test_analyze_a_folder_of_checkpoints(tmp_path, hf_model):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("ep1.pth", "ep2.pth"):
        torch.save(load_model(STEP25).model.state_dict(), run_dir / name)
    save_for_hf(load_model(STEP25).model, str(run_dir / "export"), safe_serialization=True)
    data = ROOT / "fixtures" / "digits" / "test.safetensors"
    frame = analyze_csv(
        tmp_path, run_dir, "-m", "test_efficientnet", "--data", data, "--max-samples", 40
    )
    assert frame["checkpoint"].tolist() == [
        str(run_dir / n) for n in ("ep1.pth", "ep2.pth", "export")
    ]
    assert frame["mir"].nunique() == 1 and list(frame.columns) == list(COLUMNS)


def test_class_map_and_valid_labels_as_in_validate_py(tmp_path, hf_model):
    subset = {"one": 1, "seven": 7, "three": 3}
    by_name = digits_pngs(tmp_path / "by_name", subset)
    class_map = tmp_path / "imagenet_like.txt"
    class_map.write_text("\n".join(NAMES) + "\n")
    mapped = analyze_csv(tmp_path, hf_model, "--data", by_name, "--class-map", class_map)
    same_as_validate_py(mapped.iloc[0], validate_py(hf_model, by_name, class_map=str(class_map)))
    # the same images, labelled 0..2 by folder order, as indices into --valid-labels
    valid = [1, 7, 3]  # folders sorted: one, seven, three
    labels = tmp_path / "valid.txt"
    labels.write_text("\n".join(map(str, valid)) + "\n")
    restricted = analyze_csv(tmp_path, hf_model, "--data", by_name, "--valid-labels", labels)
    same_as_validate_py(restricted.iloc[0], validate_py(hf_model, by_name, valid_labels=valid))
    assert restricted.loc[0, "top5"] == 100  # 3 classes: top-5 holds every label
    assert (mapped.loc[0, "n_classes"], restricted.loc[0, "n_classes"]) == (10, 3)
    # each sample meets the same head row either way, so the information terms agree
    for column in ("h_z", "h_w", "h_zw", "mi", "mir", "hdr"):
        assert restricted.loc[0, column] == pytest.approx(mapped.loc[0, column], rel=1e-9)


def test_valid_labels_bad_input(tmp_path, hf_model, pngs):
    labels = tmp_path / "valid.txt"
    labels.write_text("1\n2\n")  # 10 class folders but 2 valid labels
    result = run("analyze", hf_model, "--data", pngs, "--valid-labels", labels, code=2)
    assert "--valid-labels lists 2 classes" in result.stderr
    labels.write_text("1\nx\n")
    result = run("analyze", hf_model, "--data", pngs, "--valid-labels", labels, code=2)
    assert "is not a class index" in result.stderr


def test_per_class_rows_go_to_a_second_csv(tmp_path, hf_model, pngs):
    csv, js = tmp_path / "runs.csv", tmp_path / "runs.json"
    run("analyze", hf_model, "--data", pngs, "--per-class", "--csv", csv, "--json", js)
    frame = pd.read_csv(tmp_path / "runs.per_class.csv", dtype={"name": str})
    assert list(frame.columns) == list(PER_CLASS_COLUMNS)
    want = pd.DataFrame(json.loads(js.read_text())["per_class"])[list(PER_CLASS_COLUMNS)]
    pd.testing.assert_frame_equal(frame, want, check_dtype=False)
    assert frame["n"].tolist() == [PER_CLASS] * 10
