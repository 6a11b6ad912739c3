"""Per-class numbers of `infoprobe analyze --per-class` on hand-made evaluations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from infoprobe.rows import per_class_rows
from infoprobe.schema import PER_CLASS_COLUMNS


def evaluation(features, labels, head, logits=None):
    return SimpleNamespace(
        features=torch.tensor(features, dtype=torch.float32),
        labels=torch.tensor(labels),
        head=torch.tensor(head),
        logits=None if logits is None else torch.tensor(logits),
    )


def test_collapsed_classes_have_zero_entropy_and_align_with_the_head():
    ev = evaluation(
        features=[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]],
        labels=[0, 0, 1, 1],
        head=[[0.6, -0.8], [-0.6, 0.8]],
        logits=[[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]],
    )
    rows = per_class_rows("m.pt", ev, ["zero", "one"])
    assert [tuple(r) for r in rows] == [PER_CLASS_COLUMNS] * 2
    assert [(r["class"], r["name"], r["n"]) for r in rows] == [(0, "zero", 2), (1, "one", 2)]
    assert [r["accuracy"] for r in rows] == [1.0, 0.5]
    want = F.cross_entropy(ev.logits[2:].double(), ev.labels[2:])
    assert rows[1]["loss"] == pytest.approx(float(want))
    for r in rows:
        assert r["h_z"] == pytest.approx(0.0, abs=1e-12)  # one direction per class
        assert r["h_z_max"] == pytest.approx(math.log(2))
        assert r["cos_head"] == pytest.approx(1.0)  # centred means along their head rows


def test_orthogonal_features_reach_the_entropy_ceiling_and_nan_without_logits():
    ev = evaluation(
        features=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        labels=[0, 0, 0],
        head=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    )
    (row,) = per_class_rows("m.pt", ev)
    assert row["h_z"] == pytest.approx(math.log(3)) and row["h_z_max"] == pytest.approx(math.log(3))
    assert math.isnan(row["accuracy"]) and math.isnan(row["loss"]) and row["name"] == "0"
