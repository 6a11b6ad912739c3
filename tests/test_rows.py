"""The shared row schema from an evaluation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from infoprobe.collapse import neural_collapse
from infoprobe.info import interplay, nc_optimum
from infoprobe.rows import MeasureOptions, analysis_row
from infoprobe.schema import COLUMNS, NC_COLUMNS


def evaluation(num_classes=10, n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        features=torch.randn(n, d, generator=g),
        labels=torch.randint(0, num_classes, (n,), generator=g),
        head=torch.randn(num_classes, d, generator=g),
        logits=torch.randn(n, num_classes, generator=g),
        loss=1.25,
        accuracy=0.5,
    )


def test_row_has_the_schema_and_library_values():
    ev = evaluation()
    row = analysis_row("model.safetensors", ev)
    assert tuple(row) == COLUMNS
    ref = interplay(ev.features, ev.labels, ev.head)
    assert row["mir"] == ref.mir and row["hdr"] == ref.hdr and row["h_zw"] == ref.h_zw
    assert row["mir_nc"] == nc_optimum(10).mir and row["hdr_nc"] == 0.0
    assert (row["checkpoint"], row["accuracy"], row["loss"]) == ("model.safetensors", 0.5, 1.25)
    assert (row["n_samples"], row["n_classes"]) == (200, 10)
    assert (row["estimate"], row["note"]) == ("exact", "")
    assert (row["n_used"], row["n_batches"]) == (200, 1)
    assert all(math.isnan(row[c]) for c in ("h_zw_err", "mi_err", "mir_err", "mir_lower"))
    nc = neural_collapse(ev.features, ev.labels, ev.head, ev.logits)
    assert [row[c] for c in NC_COLUMNS] == [getattr(nc, c) for c in NC_COLUMNS]
    assert 0 < row["nc4"] < 1 and row["nc1"] > 0


def test_features_without_logits_leave_nc4_empty_with_a_note():
    ev = evaluation()
    del ev.logits
    row = analysis_row("feats.safetensors", ev)
    assert math.isnan(row["nc4"]) and not math.isnan(row["nc3"])
    assert row["note"] == "nc4 needs the model's logits, which this features file does not hold"


def test_batch_estimate_is_labelled():
    ev = evaluation()
    row = analysis_row("m", ev, MeasureOptions(estimate="batch", batch_size=64, seed=2))
    assert row["estimate"] == "batch(B=64,seed=2)"
    assert (row["n_samples"], row["n_used"], row["n_batches"]) == (200, 192, 3)
    ref = interplay(ev.features, ev.labels, ev.head, estimate="batch", batch_size=64, seed=2)
    assert row["h_z"] == pytest.approx(ref.h_z, abs=0)


def test_two_classes_have_nan_optimum():
    row = analysis_row("m", evaluation(num_classes=2))
    assert math.isnan(row["mir_nc"]) and math.isnan(row["hdr_nc"])
    assert not math.isnan(row["mir"])
