"""Image data too large for memory streams: decoded batch by batch, with the same numbers.

Each check compares the stream (``stream_above=0``) and the same data decoded whole into
memory (the default for small data) with a reference built here from the files: timm's
eval transform on each image, in timm's order, with the labels of the class folders.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_image_folder, make_timm
from test_data import _fake_cifar10

from infoprobe import data
from infoprobe.data import (
    DataCache,
    ImageStream,
    LabelledTensors,
    load_data,
    resolve_transform_config,
    stratified_indices,
)
from infoprobe.errors import InputError
from infoprobe.probe import evaluate
from infoprobe.sweeps.lmc import reset_bn_statistics

SIZE = 12


@pytest.fixture
def grey_model():
    return make_timm("test_resnet", in_chans=1)


COUNTS = {"a": 7, "b": 4, "c": 6, "d": 3}


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "imgs", COUNTS)


def _reference(root, model, max_samples=None, seed=0):
    """(inputs, labels) of the folder, decoded here file by file."""
    from PIL import Image
    from timm.data import create_transform

    cfg = resolve_transform_config(model, input_size=SIZE)
    tf = create_transform(
        input_size=cfg["input_size"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg["crop_pct"],
        crop_mode=cfg.get("crop_mode"),
    )
    files = [(c, i) for c, k in COUNTS.items() for i in range(k)]
    labels = torch.tensor([list(COUNTS).index(c) for c, _ in files])
    x = torch.stack([tf(Image.open(root / c / f"{i}.png").convert("L")) for c, i in files])
    idx = stratified_indices(labels, max_samples, seed)
    return x[idx], labels[idx]


def _both(root, model, **kwargs):
    whole = load_data(root, model=model, input_size=SIZE, cache=None, **kwargs)
    stream = load_data(root, model=model, input_size=SIZE, cache=None, stream_above=0, **kwargs)
    assert isinstance(whole, LabelledTensors) and isinstance(stream, ImageStream)
    return whole, stream


@pytest.mark.parametrize("max_samples", [None, 9])
def test_stream_keeps_subsample_labels_order_and_inputs(folder, grey_model, max_samples):
    whole, stream = _both(folder, grey_model, max_samples=max_samples, seed=3)
    x, y = _reference(folder, grey_model, max_samples, seed=3)
    assert torch.equal(whole.labels, y) and torch.allclose(whole.inputs, x)
    assert torch.equal(stream.labels, y) and len(stream) == len(whole)
    assert (stream.source, stream.classes, stream.transform) == (
        whole.source,
        whole.classes,
        whole.transform,
    )
    # shape only: nothing decoded is held
    assert stream.inputs.is_meta and stream.inputs.shape == whole.inputs.shape
    assert torch.equal(torch.cat(list(stream.batches(4))), whole.inputs)
    assert torch.equal(torch.cat(list(stream.batches(3, 2, 8))), whole.inputs[2:8])
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(stream.take(idx), whole.inputs[idx])
    assert torch.equal(stream.decode().inputs, whole.inputs)


def test_streaming_evaluation_equals_the_in_memory_one(folder, grey_model):
    whole, stream = _both(folder, grey_model)
    ref = evaluate(grey_model, whole, device="cpu", batch_size=8)
    got = evaluate(grey_model, stream, device="cpu", batch_size=8)
    for k in ("features", "logits", "labels", "head"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), k
    assert (got.loss, got.accuracy) == (ref.loss, ref.accuracy)


def test_stream_with_worker_processes(folder, grey_model):
    whole, _ = _both(folder, grey_model)
    stream = load_data(
        folder, model=grey_model, input_size=SIZE, cache=None, stream_above=0, workers=2
    )
    assert stream.workers == 2
    assert torch.equal(torch.cat(list(stream.batches(5))), whole.inputs)


def test_cifar_folder_streams(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    base = _fake_cifar10(tmp_path)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(
        tvd.CIFAR10,
        "_load_meta",
        lambda self: setattr(self, "classes", [f"c{i}" for i in range(10)]),
    )
    kw = dict(input_size=(3, 8, 8), max_samples=10, cache=None)
    whole, stream = load_data(base, **kw), load_data(base, stream_above=0, **kw)
    assert isinstance(stream, ImageStream) and torch.equal(stream.labels, whole.labels)
    assert torch.equal(torch.cat(list(stream.batches(4))), whole.inputs)


def test_only_data_that_fits_is_decoded_and_cached(folder, grey_model):
    per_sample = SIZE * SIZE * 4  # one channel of float32
    cache = DataCache()
    fits = load_data(
        folder, model=grey_model, input_size=SIZE, cache=cache, stream_above=20 * per_sample
    )
    big = load_data(
        folder, model=grey_model, input_size=SIZE, cache=cache, stream_above=20 * per_sample - 1
    )
    assert isinstance(fits, LabelledTensors) and isinstance(big, ImageStream)
    # the stream is cached as a recipe (file list and labels), never as decoded inputs
    again = load_data(
        folder, model=grey_model, input_size=SIZE, cache=cache, stream_above=20 * per_sample - 1
    )
    assert again is big and cache.hits == 1 and big.inputs.is_meta


def test_broken_image_in_a_stream_is_named_when_decoded(folder, grey_model):
    (folder / "c" / "2.png").write_bytes(b"not a png")
    stream = load_data(folder, model=grey_model, input_size=SIZE, cache=None, stream_above=0)
    with pytest.raises(InputError, match=r"cannot decode image .*c/2\.png"):
        evaluate(grey_model, stream, device="cpu", batch_size=8)


def test_bn_reset_reads_a_stream_like_memory(folder):
    model = make_timm("test_resnet", in_chans=1)
    whole, stream = _both(folder, model)
    reset_bn_statistics(model, whole, batch_size=4, batches=3, seed=1)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model = make_timm("test_resnet", in_chans=1)
    reset_bn_statistics(model, stream, batch_size=4, batches=3, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_cli_sweep_on_a_streamed_folder_equals_memory(tmp_path, folder, monkeypatch):
    """prune reads the data at every ratio: streamed, its rows equal the in-memory run's."""
    import pandas as pd
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from infoprobe import cli

    model = make_timm("test_resnet", num_classes=4, in_chans=1)
    ckpt = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(ckpt), metadata={"arch": "test_resnet"})
    frames, passes = [], []
    real = ImageStream.batches
    monkeypatch.setattr(ImageStream, "batches", lambda self, *a: passes.append(a) or real(self, *a))
    for limit in (data.STREAM_ABOVE, 0):
        monkeypatch.setattr(data, "STREAM_ABOVE", limit)
        csv = tmp_path / f"p{limit}.csv"
        result = CliRunner().invoke(
            cli.app,
            [
                "prune",
                str(ckpt),
                "--data",
                str(folder),
                "--input-size",
                str(SIZE),
                "--device",
                "cpu",
                "--batch-size",
                "8",
                "--ratios",
                "0,0.5",
                "--csv",
                str(csv),
            ],
        )
        assert result.exit_code == 0, result.stderr
        frames.append(pd.read_csv(csv))
    # in memory: one decode of all 20 images; streamed: one decoding pass per evaluation
    # (the dense model, which is also ratio 0, then ratio 0.5)
    assert passes == [(64,)] + [(8, 0, 20)] * 2 and len(frames[0]) == 2
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
