"""Layer rows: the last stage equals the plain analysis, every layer equals brute force.

The models are the trained fixtures (a ResNet and an EfficientNet trained on the digits);
the references are the plain :func:`analysis_row` of an evaluation without layers, the
features of ``forward_features`` pooled by hand, and explicit n x n matrices in numpy.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_timm
from test_multihead import _data

from infoprobe.checkpoints import load_model
from infoprobe.data import LabelledTensors, load_data
from infoprobe.probe import evaluate
from infoprobe.rows import MeasureOptions, analysis_row, layer_rows
from infoprobe.schema import COLUMNS, LAYER_COLUMNS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RESNET = FIXTURES / "label_smoothing" / "ls0.0.safetensors"
DIGITS = FIXTURES / "digits" / "test.safetensors"
N = 150
#: Numbers that do not depend on the layer.
_SHARED = ("n_samples", "n_classes", "accuracy", "accuracy_top5", "loss", "h_w", "mir_nc")


@pytest.fixture(scope="module")
def digits() -> LabelledTensors:
    return load_data(str(DIGITS), max_samples=N, cache=None)


@pytest.fixture(scope="module")
def resnet():
    return load_model(RESNET).model


def _same(a, b, tol: float = 1e-9) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol
    return a == b


def test_the_last_stage_row_equals_the_plain_analysis(resnet, digits):
    # timm's ResNet pre-logits are the last stage (layer4) averaged over H x W
    rows = layer_rows("r", evaluate(resnet, digits, device="cpu", layers="stages"))
    plain = analysis_row("r", evaluate(resnet, digits, device="cpu"))
    assert [r["layer"] for r in rows] == ["act1", "layer1", "layer2", "layer3", "layer4"] + [
        "pre_logits"
    ]
    for row in rows[-2:]:
        assert list(row) == list(LAYER_COLUMNS)
        differ = [c for c in COLUMNS if not _same(row[c], plain[c])]
        assert not differ, {c: (row[c], plain[c]) for c in differ}
    assert rows[-1]["pooling"] == "head" and rows[-2]["pooling"] == "avg"
    assert plain["mir"] > 0.5  # a trained model: the comparison is not between zeros


def test_convnext_last_stage_row_is_its_pooled_map():
    # ConvNeXt's head normalises after pooling, so its pre-logits are not the last stage;
    # the stage row is the analysis of forward_features(x) averaged over H x W
    model = make_timm("test_convnext", in_chans=3, num_classes=5)
    d = _data(model, 32, n=40)
    ev = evaluate(model, d, device="cpu", layers="stages")
    rows = layer_rows("c", ev)
    with torch.no_grad():
        pooled = model.forward_features(d.inputs).mean((2, 3))
    plain = analysis_row("c", replace(ev, features=pooled, layers=()))
    differ = [c for c in COLUMNS if not _same(rows[-2][c], plain[c])]
    assert not differ, {c: (rows[-2][c], plain[c]) for c in differ}
    assert not _same(rows[-2]["h_z"], rows[-1]["h_z"], 1e-3)  # the LayerNorm changes K_Z


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _entropy(k: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(k / k.shape[0])
    lam = lam[lam > 1e-15]
    return float(-(lam * np.log(lam)).sum())


def _brute(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> dict:
    """h_z, h_w, mi, mir, hdr, h_y, mi_y from explicit n x n matrices."""
    zh, wy = _unit(z.double().numpy()), _unit(w.double().numpy()[y.numpy()])
    k_z, k_w = zh @ zh.T, wy @ wy.T
    k_y = (y.numpy()[:, None] == y.numpy()[None, :]).astype(float)
    h_z, h_w, h_y = _entropy(k_z), _entropy(k_w), _entropy(k_y)
    mi = h_z + h_w - _entropy(k_z * k_w)
    return {
        "h_z": h_z,
        "h_w": h_w,
        "mi": mi,
        "mir": mi / min(h_z, h_w),
        "hdr": abs(h_z - h_w) / max(h_z, h_w),
        "h_y": h_y,
        "mi_y": h_z + h_y - _entropy(k_z * k_y),
    }


def _brute_nc1_nc4(z: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> tuple:
    """Papyan et al.'s NC1 = tr(Sigma_W Sigma_B^+) / C and the nearest-class-mean agreement."""
    z, y = z.double().numpy(), y.numpy()
    classes = np.unique(y)
    means = np.stack([z[y == c].mean(0) for c in classes])
    centred = means - means.mean(0)
    scatter = sum((z[y == c] - m).T @ (z[y == c] - m) for c, m in zip(classes, means, strict=True))
    within = scatter / len(z)
    between = centred.T @ centred / len(classes)
    nc1 = float(np.trace(within @ np.linalg.pinv(between, hermitian=True)) / len(classes))
    nearest = classes[((z[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    return nc1, float((nearest == logits.argmax(1).numpy()).mean())


def test_every_layer_row_equals_brute_force(resnet, digits):
    ev = evaluate(resnet, digits, device="cpu", layers="stages")
    rows = layer_rows("r", ev, MeasureOptions(estimate="exact"))
    for layer, row in zip(ev.layers, rows, strict=True):
        want = _brute(layer.features, ev.labels, ev.head)
        got = {k: row[k] for k in want}
        assert got == pytest.approx(want, abs=1e-9), layer.name
        nc1, nc4 = _brute_nc1_nc4(layer.features, ev.labels, ev.logits)
        assert row["nc1"] == pytest.approx(nc1, rel=1e-6), layer.name
        assert row["nc4"] == pytest.approx(nc4, abs=1e-12), layer.name
        assert row["layer_dim"] == layer.features.shape[1]
        wide = row["layer_dim"] == ev.head.shape[1]
        assert math.isnan(row["nc3"]) != wide
        assert ("nc3 is undefined" in row["note"]) != wide
    for column in _SHARED:  # h_w to round-off: a narrower layer sees the rotated head
        values = [row[column] for row in rows]
        assert max(values) - min(values) <= 1e-12, column
    assert rows[-1]["mi_y"] > rows[0]["mi_y"]  # label information grows with depth here


def test_batch_and_slq_routes_give_their_labels_and_error_bars(resnet, digits):
    ev = evaluate(resnet, digits, device="cpu", layers="layer2")
    batch = layer_rows("r", ev, MeasureOptions(estimate="batch", batch_size=64, seed=1))
    assert [r["estimate"] for r in batch] == ["batch(B=64,seed=1)"] * 2
    from infoprobe.info import batch_indices

    parts = batch_indices(N, 64, 1)
    z, y = ev.layers[0].features, ev.labels
    want = np.mean([[_brute(z[i], y[i], ev.head)[k] for k in ("h_y", "mi_y")] for i in parts], 0)
    assert (batch[0]["h_y"], batch[0]["mi_y"]) == pytest.approx(tuple(want), abs=1e-9)
    slq = layer_rows("r", ev, MeasureOptions(estimate="slq", probes=8, seed=2))
    assert all(r["estimate"].startswith("slq(") and r["mir_err"] > 0 for r in slq)
    exact = layer_rows("r", ev, MeasureOptions(estimate="exact"))
    for got, ref in zip(slq, exact, strict=True):
        assert abs(got["mir"] - ref["mir"]) < 5 * got["mir_err"] + 1e-3
        assert (got["h_z"], got["mi_y"]) == pytest.approx((ref["h_z"], ref["mi_y"]), abs=1e-12)


def test_a_layer_error_names_the_layer():
    model = make_timm("test_resnet", in_chans=3, num_classes=5)
    d = _data(model, 16, n=10)
    ev = evaluate(model, d, device="cpu", layers="layer2")
    zero = replace(ev.layers[0], features=ev.layers[0].features.clone())
    zero.features[3] = 0
    with pytest.raises(ValueError, match="layer layer2: .*zero-norm"):
        layer_rows("m", replace(ev, layers=(zero, *ev.layers[1:])))
    rows = layer_rows("m", replace(ev, layers=(zero,)), MeasureOptions(drop_zero_rows=True))
    assert rows[0]["n_samples"] == 9
