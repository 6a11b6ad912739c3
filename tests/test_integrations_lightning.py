"""InterplayCallback: Lightning runs log the values of a one-shot analysis of their weights.

A timm ``test_resnet`` (with dropout, so training draws random numbers) trains on the digits
for a few batches. The logged values must equal :func:`infoprobe.rows.analysis_row` of the
weights at each measurement (a snapshot taken right after the callback) as float32, in the
CSVLogger's file and in the TensorBoardLogger's event files, and training with the callback
must give bitwise the same weights as training without it.
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infoprobe.data import load_data
from infoprobe.errors import InputError
from infoprobe.integrations.lightning import InterplayCallback
from infoprobe.integrations.scalars import scalars
from infoprobe.probe import evaluate
from infoprobe.rows import analysis_row

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "fixtures" / "digits" / "test.safetensors"
TRAIN = load_file(str(ROOT / "fixtures" / "digits" / "train.safetensors"))
PROBE = 100  # probe samples: C d = 960 > 100, so every value is exact (NC4 included)
KEYS = ("h_z", "h_w", "h_zw", "mi", "mir", "hdr", "nc1", "nc2_equinorm", "nc2_equiangular")
KEYS += ("nc3", "nc4", "accuracy", "mir_nc", "n_samples")


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = timm.create_model("test_resnet", num_classes=10, in_chans=1, drop_rate=0.3)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class Snapshots(L.Callback):
    """The weights at the start, each batch end and each epoch end (runs after the
    callback)."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.states[trainer.global_step] = copy.deepcopy(pl_module.model.state_dict())

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.states[trainer.global_step] = copy.deepcopy(pl_module.model.state_dict())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states[trainer.global_step] = copy.deepcopy(pl_module.model.state_dict())


def loader() -> DataLoader:
    return DataLoader(TensorDataset(TRAIN["x"], TRAIN["y"]), batch_size=32, shuffle=True)


def fit(callbacks, tmp_path: Path, loggers=False, epochs: int = 2, **trainer) -> Classifier:
    L.seed_everything(0, verbose=False)
    module = Classifier()
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=3,
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    L.Trainer(callbacks=callbacks, **{**options, **trainer}).fit(module, loader())
    return module


def one_shot(state: dict, batch_size: int = 256) -> dict:
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    model.load_state_dict(state)
    data = load_data(TEST, max_samples=PROBE, seed=0)
    return analysis_row("x", evaluate(model, data, device="cpu", batch_size=batch_size))


@pytest.mark.slow
def test_logs_the_one_shot_values_to_csv_and_tensorboard(tmp_path):
    callback = InterplayCallback(
        str(TEST), every_n_epochs=1, every_n_train_steps=2, max_samples=PROBE
    )
    snapshots = Snapshots()
    csv, board = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    fit([callback, snapshots], tmp_path, loggers=[csv, board], log_every_n_steps=50)

    # epochs end at steps 3 and 6, every 2 steps measures at 0, 2, 4 and 6: once per step
    steps = [(r["step"], r["epoch"]) for r in callback.rows]
    assert steps == [(0, 0), (2, 0), (3, 0), (4, 1), (6, 1)]
    for row in callback.rows:
        want = one_shot(snapshots.states[row["step"]])
        for key in KEYS:
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (row["step"], key)
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert row["estimate"] == "exact" and row["note"] == ""

    # both loggers hold each value at its step: the CSV in full, TensorBoard as float32
    logged = pd.read_csv(Path(csv.log_dir) / "metrics.csv").set_index("step")
    events = EventAccumulator(board.log_dir)
    events.Reload()
    for row in callback.rows:
        values = scalars(row)
        assert {"interplay/mir", "interplay/hdr", "interplay/h_z", "interplay/nc1"} <= set(values)
        assert len(values) == 15  # every scalar column but the error bars of an estimate
        for tag, value in values.items():
            assert logged.loc[row["step"], tag] == value, (tag, row["step"])
            found = {e.step: e.value for e in events.Scalars(tag)}
            assert found[row["step"]] == float(np.float32(value)), (tag, row["step"])
    assert sorted(found) == [0, 2, 3, 4, 6]


@pytest.mark.slow
def test_training_with_the_callback_gives_bitwise_the_same_weights(tmp_path):
    probe = DataLoader(
        TensorDataset(TRAIN["x"][:200], TRAIN["y"][:200]), batch_size=50, shuffle=True
    )
    with_callback = fit(
        [
            InterplayCallback(probe, every_n_epochs=1, every_n_train_steps=1),
            InterplayCallback(
                str(TEST),
                max_samples=PROBE,
                features_fn=lambda m, x: m.model.forward_head(
                    m.model.forward_features(x), pre_logits=True
                ),
                head="model.fc",
            ),
        ],
        tmp_path,
    )
    without = fit([], tmp_path)
    got, want = with_callback.state_dict(), without.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert with_callback.training and all(m.training for m in with_callback.modules())


class Plain(L.LightningModule):
    """A module infoprobe knows nothing about: features from a function, head by name."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.GELU())
        self.classify = nn.Linear(32, 10)

    def forward(self, x):
        return self.classify(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_features_fn_and_head_measure_any_module(tmp_path):
    callback = InterplayCallback(
        TensorDataset(load_file(str(TEST))["x"], load_file(str(TEST))["y"]),
        max_samples=PROBE,
        features_fn=lambda module, x: module.body(x),
        head="classify",
    )
    module = Plain()
    L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    ).fit(module, loader())
    (row,) = callback.rows
    data = load_data(TEST, max_samples=PROBE, seed=0)  # the same stratified subsample
    with torch.no_grad():
        z = module.body(data.inputs)
        evaluation = evaluate(module, data, head=module.classify, device="cpu")
    assert torch.equal(evaluation.features, z)
    want = analysis_row("x", evaluation)
    for key in KEYS:
        assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="nothing would be measured"):
        InterplayCallback(str(TEST), every_n_epochs=0)
    with pytest.raises(InputError, match="features_fn needs head="):
        InterplayCallback(str(TEST), features_fn=lambda m, x: x)
    with pytest.raises(InputError, match="every_n_train_steps"):
        InterplayCallback(str(TEST), every_n_train_steps=1.5)
    with pytest.raises(InputError, match="estimate must be one of"):
        InterplayCallback(str(TEST), estimate="fast")


def test_without_lightning_the_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "infoprobe.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'infoprobe\[lightning\]'"):
        importlib.import_module("infoprobe.integrations.lightning")


@pytest.mark.slow
def test_importing_infoprobe_needs_neither_lightning_nor_tensorboard():
    code = (
        "import sys\n"
        "import infoprobe, infoprobe.metrics, infoprobe.cli\n"
        "from infoprobe.integrations import InterplayMonitor\n"
        "print(sorted({'lightning', 'tensorboard'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_under_ddp_each_process_measures_its_share(tmp_path):
    callback = InterplayCallback(str(TEST), max_samples=PROBE, batch_size=16)
    csv = CSVLogger(tmp_path, name="csv", version=0)  # the spawned rank 0 writes it
    module = fit([callback], tmp_path, loggers=[csv], epochs=1, strategy="ddp_spawn", devices=2)
    logged = pd.read_csv(Path(csv.log_dir) / "metrics.csv").dropna(subset=["interplay/mir"])
    assert len(logged) == 1
    # the final weights, back in this process, evaluated as the workers did: in batches of
    # 16 on one thread (Lightning gives each CPU process one), so the float32 features are
    # the same bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = one_shot(module.model.state_dict(), batch_size=16)
    finally:
        torch.set_num_threads(threads)
    for key in KEYS:
        if key != "n_samples":  # not a logged value
            got = float(logged[f"interplay/{key}"].iloc[0])
            assert got == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
