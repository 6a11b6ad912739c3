"""InterplayMonitor in a plain training loop: the rows of a one-shot analysis, written to a
SummaryWriter (or anything with add_scalar), and training left bitwise as it was."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from infoprobe.data import load_data
from infoprobe.errors import InputError
from infoprobe.integrations import InterplayMonitor
from infoprobe.probe import evaluate
from infoprobe.rows import analysis_row

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "fixtures" / "digits" / "test.safetensors"
TRAIN = load_file(str(ROOT / "fixtures" / "digits" / "train.safetensors"))
KEYS = ("h_z", "h_w", "h_zw", "mi", "mir", "hdr", "nc1", "nc2_equinorm", "nc3", "nc4")
KEYS += ("accuracy", "n_samples")


class Recorder:
    """Any object with add_scalar will do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step) -> None:
        self.calls.append((tag, value, step))


def train(steps: int, on_step=None) -> torch.nn.Module:
    """A few AdamW steps of a dropout ResNet on shuffled digits; ``on_step(step, model)``
    after each optimizer step (and at step 0)."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1, drop_rate=0.3)
    model.bn1.eval()  # a module in eval mode must stay in eval mode
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    if on_step is not None:
        on_step(0, model)
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(TRAIN["y"]), (32,))
        loss = F.cross_entropy(model(TRAIN["x"][batch]), TRAIN["y"][batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, model)
    return model


@pytest.mark.slow
def test_due_steps_return_the_one_shot_row_and_write_it(tmp_path):
    recorder, board = Recorder(), SummaryWriter(str(tmp_path))
    monitors, rows, states = [], {}, {}

    def on_step(step, model):
        if not monitors:
            monitors.append(InterplayMonitor(model, str(TEST), 2, writer=recorder, max_samples=40))
            monitors.append(
                InterplayMonitor(model, str(TEST), every=3, writer=board, max_samples=40)
            )
        rows[step] = [m.step(step) for m in monitors]
        states[step] = copy.deepcopy(model.state_dict())

    train(4, on_step)
    board.close()
    assert [s for s, (a, _) in rows.items() if a is not None] == [0, 2, 4]
    assert [s for s, (_, b) in rows.items() if b is not None] == [0, 3]
    data = load_data(TEST, max_samples=40, seed=0)
    for step in (0, 2, 3, 4):
        model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
        model.load_state_dict(states[step])
        want = analysis_row("x", evaluate(model, data, device="cpu"))
        row = rows[step][0] or rows[step][1]
        assert row["step"] == step
        for key in KEYS:
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (step, key)
    written = {(tag, step): value for tag, value, step in recorder.calls}
    assert written[("interplay/mir", 2)] == rows[2][0]["mir"]
    assert written[("interplay/nc1", 4)] == rows[4][0]["nc1"]
    assert {step for _, step in written} == {0, 2, 4}
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    got = {e.step: e.value for e in events.Scalars("interplay/hdr")}
    assert got == {s: float(np.float32(rows[s][1]["hdr"])) for s in (0, 3)}


@pytest.mark.slow
def test_training_with_the_monitor_is_bitwise_the_same():
    monitor = []

    def on_step(step, model):
        if not monitor:
            monitor.append(InterplayMonitor(model, str(TEST), every=1, max_samples=30))
        rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
        flags = [m.training for m in model.modules()]
        with torch.enable_grad():
            assert monitor[0].step(step)["n_samples"] == 30
            assert torch.is_grad_enabled()
        assert torch.equal(rng[0], torch.get_rng_state()) and rng[1] == random.getstate()
        assert np.array_equal(rng[2], np.random.get_state()[1])
        assert flags == [m.training for m in model.modules()]

    got, want = train(3, on_step).state_dict(), train(3).state_dict()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_bad_arguments_are_refused():
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    with pytest.raises(InputError, match="every must be a positive int"):
        InterplayMonitor(model, str(TEST), every=0)
    with pytest.raises(InputError, match="add_scalar"):
        InterplayMonitor(model, str(TEST), every=5, writer=object())
    with pytest.raises(InputError, match="does not exist"):
        InterplayMonitor(model, str(TEST) + ".missing", every=5)
