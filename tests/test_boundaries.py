"""Input checks exactly at their boundaries, and resume cases the old record let through."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import make_image_folder, make_timm
from test_cli import FAST, FIX, A, run

import infoprobe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.evaluation import Evaluation, restrict_classes
from infoprobe.sweeps.finetune import FinetuneOptions, finetune

TRAIN = FIX / "digits" / "train.safetensors"


@pytest.mark.parametrize("top,ok", [(2, True), (3, False)])
def test_finetuning_labels_at_the_class_count(top, ok):
    model = make_timm("test_resnet", in_chans=1, num_classes=3)
    labels = torch.tensor([0, 1, top, 0])
    data = LabelledTensors(torch.randn(4, 1, 8, 8), labels, "toy")
    if ok:
        finetune(model, data, FinetuneOptions(epochs=1, batch_size=4), device="cpu")
    else:
        with pytest.raises(InputError, match=r"lie in \[0, 3\] but the model has 3 classes"):
            finetune(model, data, FinetuneOptions(epochs=1, batch_size=4), device="cpu")


@pytest.mark.parametrize("listed,ok", [(4, True), (3, False)])
def test_valid_labels_one_entry_short(listed, ok):
    evaluation = Evaluation(
        torch.randn(8, 2), torch.randn(8, 6), torch.arange(8) % 4, torch.randn(6, 2), 0.0, 0.0
    )
    valid = [5, 0, 2, 1][:listed]
    if ok:
        out = restrict_classes(evaluation, valid)
        assert out.head.shape == (4, 2) and torch.equal(out.logits, evaluation.logits[:, valid])
    else:
        with pytest.raises(
            InputError, match="labels of the data reach 3 but --valid-labels lists 3"
        ):
            restrict_classes(evaluation, valid)


def test_empty_first_and_last_class_folders_keep_indices_and_are_reported(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"b": 2, "c": 3}, size=(8, 8))
    (root / "a").mkdir()
    (root / "d").mkdir()
    model = make_timm("test_resnet", in_chans=3, num_classes=4)
    ckpt = tmp_path / "m.safetensors"
    from safetensors.torch import save_file

    save_file(model.state_dict(), ckpt, metadata={"arch": "test_resnet", "num_classes": "4"})
    logs: list[str] = []
    frame = infoprobe.analyze(
        ckpt, data=str(root), input_size="3 8 8", device="cpu", log=logs.append
    )
    assert frame.iloc[0]["classes_present"] == 2 and frame.iloc[0]["n_classes"] == 4
    missing = next(line for line in logs if "no samples of class" in line)
    assert "a (index 0)" in missing and "d (index 3)" in missing


@pytest.mark.slow
def test_a_diverged_fine_tuning_row_does_not_block_resuming(tmp_path):
    csv = tmp_path / "p.csv"
    args = [A, *FAST, "--finetune-data", TRAIN, "--lr", "1e6", "--csv", csv]
    run("prune", *args, "--ratios", "0")
    first = pd.read_csv(csv, keep_default_na=False)
    assert "fine-tuning diverged" in first["note"][0]
    run("prune", *args, "--ratios", "0 0.5", "--resume")
    rows = pd.read_csv(csv, keep_default_na=False)
    assert rows["ratio"].tolist() == [0.0, 0.5]
    assert rows.iloc[0].to_dict() == first.iloc[0].to_dict()  # kept as it was


@pytest.mark.slow
def test_adamw_records_no_momentum_and_resumes(tmp_path):
    csv = tmp_path / "p.csv"
    args = [A, *FAST, "--finetune-data", TRAIN, "--optimizer", "adamw", "--csv", csv]
    run("prune", *args, "--ratios", "0")
    record = json.loads((tmp_path / "p.csv.run.json").read_text())["options"]
    assert record["optimizer"] == "adamw" and record["momentum"] is None
    assert record["lr"] == 1e-3 and record["weight_decay"] == 0.01  # the defaults, settled
    run("prune", *args, "--lr", "0.001", "--ratios", "0 0.5", "--resume")  # the default again
    assert pd.read_csv(csv)["ratio"].tolist() == [0.0, 0.5]
