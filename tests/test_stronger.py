"""Checks that a deliberate bug once slipped through: each fails on that bug."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_inputs, make_timm

from infoprobe import checkpoints as ck
from infoprobe import report
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.probe import evaluate
from infoprobe.schema import COLUMNS
from infoprobe.sweeps.lmc import barriers


def test_barrier_lines_run_from_the_alpha_0_end_to_the_alpha_1_end():
    rows = [
        {"alpha": a, "loss": loss, "accuracy": acc}
        for a, loss, acc in zip(
            (0.0, 0.25, 0.5, 0.75, 1.0),
            (0.2, 1.0, 1.0, 1.0, 1.0),
            (1.0, 0.5, 0.6, 0.6, 0.6),
            strict=True,
        )
    ]
    got = barriers(rows)
    # lines: loss 0.2 -> 1.0 (0.4 at 0.25), accuracy 1.0 -> 0.6 (0.9 at 0.25)
    assert got["loss_barrier"] == pytest.approx(0.6) and got["loss_barrier_alpha"] == 0.25
    assert got["accuracy_barrier"] == pytest.approx(0.4)
    assert got["accuracy_barrier_alpha"] == 0.25


def test_csv_cells_hold_their_own_column_and_nan_is_empty():
    row = {c: 1 for c in COLUMNS}
    row.update(
        checkpoint="a.pt",
        n_samples=3,
        n_classes=2,
        classes_present=2,
        estimate="exact",
        note="why mir is NaN",
        mir=math.nan,
    )
    header, line = report.csv_text([row], COLUMNS).splitlines()
    cells = dict(zip(header.split(","), line.split(","), strict=True))
    assert cells["mir"] == ""  # not the text 'nan'
    assert cells["estimate"] == "exact" and cells["note"] == "why mir is NaN"
    assert "nan" not in line.lower().replace("why mir is nan", "")


def test_a_prefix_only_some_keys_carry_is_kept():
    t = torch.zeros(1)
    assert set(ck.clean_keys({"model.a": t, "b": t})) == {"model.a", "b"}
    assert set(ck.clean_keys({"model.a": t, "model.b": t})) == {"a", "b"}


def test_ema_weights_are_the_ema_ones(tmp_path, timm_model):
    sd = timm_model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    p = tmp_path / "train.pth.tar"
    torch.save({"state_dict": sd, "state_dict_ema": ema}, p)
    got, _ = ck.read_state_dict(p, ema=True)
    assert all(torch.equal(got[k], ema[k]) for k in sd)
    torch.save({"state_dict": sd}, p)
    with pytest.raises(InputError, match="no EMA weights"):
        ck.read_state_dict(p, ema=True)


def test_amp_evaluates_under_autocast():
    model = make_timm("test_resnet")
    x, y = make_inputs(8)
    d = LabelledTensors(inputs=x, labels=y, source="t")
    ev = evaluate(model, d, device="cpu", amp="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(x).float()
    with torch.no_grad():
        plain = model(x)
    assert torch.equal(ev.logits, want) and not torch.equal(ev.logits, plain)
