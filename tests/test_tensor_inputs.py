"""Tensor data as the model takes it: uint8 pixels scaled as timm scales images, --mean/--std
on tensors, token ids as stored, and a warning for float images far outside the range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_timm
from test_cli import run

from infoprobe.data import DataCache, load_data
from infoprobe.errors import InputError

MNIST = "fixtures/mnist/test.npz"


@pytest.fixture(scope="module")
def grey():
    model = make_timm("test_resnet", in_chans=1)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.25,), "std": (0.5,)}
    return model


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def test_uint8_pixels_are_scaled_and_normalised_as_timm_does(grey, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    path = _npz(tmp_path / "d.npz", pixels, np.arange(6) % 3)
    data = load_data(path, model=grey, cache=None)
    want = (torch.from_numpy(pixels).double() / 255 - 0.25) / 0.5
    assert data.inputs.dtype == torch.float32
    assert torch.allclose(data.inputs.double(), want, atol=1e-6, rtol=0)
    assert data.transform == {"kind": "tensor", "scale": 1 / 255, "mean": [0.25], "std": [0.5]}
    grey_hw = load_data(
        _npz(tmp_path / "g.npz", pixels[:, 0], np.arange(6) % 3), model=grey, cache=None
    )
    assert torch.equal(grey_hw.inputs, data.inputs)  # [n, H, W] is one channel
    given = load_data(path, model=grey, mean=(0.5,), std=(2.0,), cache=None)
    assert torch.allclose(given.inputs.double(), (want * 0.5 + 0.25 - 0.5) / 2, atol=1e-6)


def test_mean_and_std_apply_to_float_tensors_and_the_cache_tells_them_apart(grey, tmp_path):
    x = torch.randn(5, 1, 4, 4)
    path = tmp_path / "f.npz"
    _npz(path, x.numpy(), np.arange(5) % 2)
    cache = DataCache()
    plain = load_data(path, model=grey, cache=cache)
    assert torch.equal(plain.inputs, x) and plain.transform is None
    scaled = load_data(path, model=grey, mean=(1.0,), std=(4.0,), cache=cache)
    assert torch.allclose(scaled.inputs, (x - 1) / 4, atol=1e-7)
    assert cache.misses == 2


def test_token_ids_stay_as_stored_and_refuse_a_normalisation(tmp_path):
    tokens = np.arange(12, dtype=np.int64).reshape(4, 3)
    path = _npz(tmp_path / "t.npz", tokens, np.arange(4) % 2)
    assert torch.equal(load_data(path, cache=None).inputs, torch.from_numpy(tokens))
    with pytest.raises(InputError, match="token ids"):
        load_data(path, mean=(0.5,), cache=None)


def test_uint8_that_are_not_images_are_refused(tmp_path):
    path = _npz(tmp_path / "u.npz", np.zeros((4, 7), np.uint8), np.arange(4) % 2)
    with pytest.raises(InputError, match="uint8 means images"):
        load_data(path, cache=None)


def test_the_mnist_fixture_in_pixels_is_measured_and_said_so():
    result = run(
        "analyze",
        "fixtures/lmc/same_init_a.safetensors",
        "--data",
        MNIST,
        "--input-size",
        "1",
        "28",
        "28",
        "--max-samples",
        "100",
        code=2,
    )
    assert "--input-size" in result.stderr  # a tensor file has no resize: refused, not ignored
    result = run(
        "analyze",
        "fixtures/label_smoothing/ls0.0.safetensors",
        "--data",
        MNIST,
        "--max-samples",
        "100",
        "--device",
        "cpu",
        "--csv",
        "-",
    )
    assert "scaled by 1/255, then normalised" in result.stderr
    loss = float(result.stdout.splitlines()[1].split(",")[11])
    assert loss < 50  # unscaled pixels gave a loss in the thousands


def test_float_images_far_outside_the_range_get_a_warning(tmp_path):
    raw = np.random.default_rng(1).uniform(0, 255, (8, 1, 16, 16)).astype(np.float32)
    path = _npz(tmp_path / "raw.npz", raw, np.arange(8) % 4)
    result = run(
        "analyze", "fixtures/label_smoothing/ls0.0.safetensors", "--data", path, "--device", "cpu"
    )
    assert "warning:" in result.stderr and "far outside" in result.stderr
    fine = _npz(tmp_path / "ok.npz", raw / 255 - 0.5, np.arange(8) % 4)
    assert (
        "far outside"
        not in run(
            "analyze",
            "fixtures/label_smoothing/ls0.0.safetensors",
            "--data",
            fine,
            "--device",
            "cpu",
        ).stderr
    )
