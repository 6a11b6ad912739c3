"""Tensor files, image folders, CIFAR folders, stratified subsampling and the cache."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import make_image_folder, make_inputs, make_timm, write_tensors
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from infoprobe import data
from infoprobe.data import DataCache, load_data, stratified_indices
from infoprobe.errors import InputError

# --------------------------------------------------------------------------- tensor files


def test_tensor_file_formats_and_aliases(tmp_path, inputs):
    x, y = inputs
    files = {
        "a.safetensors": lambda p: save_file({"images": x, "targets": y}, str(p)),
        "b.pt": lambda p: torch.save({"inputs": x, "labels": y.int()}, p),
        "c.pth": lambda p: torch.save((x, y), p),
        "d.npz": lambda p: np.savez(p, data=x.numpy(), y=y.numpy()),
    }
    for name, write in files.items():
        write(tmp_path / name)
        d = load_data(tmp_path / name, cache=None)
        assert d.inputs.dtype == torch.float32 and d.labels.dtype == torch.int64
        assert torch.equal(d.inputs, x) and torch.equal(d.labels, y), name
        assert d.source == str(tmp_path / name) and len(d) == len(y)


def test_class_names_from_metadata(tmp_path, inputs):
    x, y = inputs
    for raw, expected in [
        ('["cat", "dog"]', ["cat", "dog"]),
        ("0,1,2", ["0", "1", "2"]),
        ("{}", None),
    ]:
        p = tmp_path / "named.safetensors"
        save_file({"x": x, "y": y}, str(p), metadata={"classes": raw})
        assert load_data(p, cache=None).classes == expected


def test_integral_float_labels_accepted_and_int_inputs_cast(tmp_path):
    p = tmp_path / "d.pt"
    torch.save(
        {
            "x": torch.arange(12, dtype=torch.int16).reshape(6, 2),
            "y": torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]),
        },
        p,
    )
    d = load_data(p, cache=None)
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert d.inputs.dtype == torch.float32 and d.inputs[5, 1] == 11.0


def test_token_id_inputs_stay_integer(tmp_path):
    p = tmp_path / "tokens.pt"
    torch.save({"x": torch.tensor([[1, 2], [3, 4]]), "y": torch.tensor([0, 1])}, p)
    d = load_data(p, cache=None)
    assert d.inputs.dtype == torch.int64 and d.inputs.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"x": torch.zeros(0, 3), "y": torch.zeros(0, dtype=torch.long)}, "empty"),
        ({"x": torch.zeros(4, 3), "y": torch.tensor([0.0, 0.5, 1.0, 2.0])}, "not integers"),
        ({"x": torch.zeros(4, 3), "y": torch.tensor([0, 1, -1, 2])}, ">= 0"),
        ({"x": torch.zeros(4, 3), "y": torch.tensor([0, 1, 2])}, "4 inputs but 3 labels"),
        ({"x": torch.zeros(4, 3), "y": torch.zeros(4, 3, dtype=torch.long)}, "one-hot"),
        ({"x": torch.zeros(4, 3), "z": torch.zeros(4)}, "no labels.*looked for y"),
        ({"feat": torch.zeros(4, 3), "y": torch.zeros(4)}, "no inputs"),
        ({"x": torch.full((4, 3), float("nan")), "y": torch.zeros(4)}, "NaN"),
        ({"x": torch.zeros(4), "y": torch.zeros(4)}, r"expected \[n, ...\]"),
    ],
)
def test_bad_tensor_files(content, match, tmp_path):
    p = tmp_path / "bad.safetensors"
    save_file(content, str(p))
    with pytest.raises(InputError, match=match) as err:
        load_data(p, cache=None)
    assert str(p) in str(err.value)


def test_missing_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "none.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    with pytest.raises(InputError, match="corrupt") as err:
        load_data(tmp_path / "junk.pt", cache=None)
    assert "junk.pt" in str(err.value)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="unknown type '.csv'"):
        load_data(tmp_path / "x.csv")


def test_pickled_objects_in_data_are_refused(tmp_path):
    from fractions import Fraction  # any non-allowlisted class makes a pickled object

    p = tmp_path / "obj.pt"
    torch.save({"x": torch.zeros(2, 2), "y": torch.zeros(2), "box": Fraction(1, 3)}, p)
    with pytest.raises(InputError, match="non-tensor objects"):
        load_data(p, cache=None)


# --------------------------------------------------------------------------- subsampling


def test_stratified_subsample_is_proportional_and_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_indices(labels, 50, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [30, 15, 5]
    assert idx.unique().numel() == 50 and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, stratified_indices(labels, 50, seed=3))
    assert not torch.equal(idx, stratified_indices(labels, 50, seed=4))
    assert torch.equal(stratified_indices(labels, 500), torch.arange(100))
    with pytest.raises(InputError, match="--max-samples"):
        stratified_indices(labels, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=80), st.integers(1, 90), st.integers(0, 10))
def test_stratified_subsample_properties(raw, k, seed):
    labels = torch.tensor(raw)
    if k < labels.unique().numel():
        with pytest.raises(InputError, match="--max-samples"):
            stratified_indices(labels, k, seed)
        return
    idx = stratified_indices(labels, k, seed)
    n = len(raw)
    assert len(idx) == min(k, n) and idx.unique().numel() == len(idx)
    counts, picked = torch.bincount(labels, minlength=6), torch.bincount(labels[idx], minlength=6)
    assert ((picked >= 1) == (counts >= 1)).all()  # every class present keeps a sample
    share = counts.double() * min(k, n) / n
    lifted = int(((share < 1) & (counts >= 1)).sum())  # classes raised to one sample
    big = share >= 1
    # the others stay within one of their share, less what the lifted classes took
    assert ((picked - share)[big].abs() < 1 + lifted + 1e-9).all()


def test_max_samples_on_tensor_file(tmp_path):
    x, y = make_inputs(40)
    p = write_tensors(tmp_path / "d.safetensors", x, y)
    d = load_data(p, max_samples=20, seed=1, cache=None)
    assert len(d) == 20 and torch.bincount(d.labels).tolist() == [2] * 10
    # rows stay paired with their labels
    rows = [int((x == d.inputs[i]).flatten(1).all(1).nonzero()) for i in range(20)]
    assert torch.equal(y[rows], d.labels)


# --------------------------------------------------------------------------- cache


def test_cache_decodes_once(tmp_path, monkeypatch, data_file):
    calls = []
    real = data.tensors.load_tensor_file
    monkeypatch.setattr(data.tensors, "load_tensor_file", lambda p: calls.append(p) or real(p))
    cache = DataCache()
    a = load_data(data_file, cache=cache)
    b = load_data(str(data_file), cache=cache)
    assert a is b and len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    load_data(data_file, max_samples=10, cache=cache)  # another subsample: a new entry
    assert len(calls) == 2 and len(cache) == 2
    load_data(data_file, cache=None)
    assert len(calls) == 3
    os.utime(data_file, ns=(1, 1))  # the file changed on disk: decoded again
    load_data(data_file, cache=cache)
    assert len(calls) == 4


def test_cache_evicts_least_recently_used():
    cache = DataCache(max_entries=2)
    make = lambda: data.LabelledTensors(torch.zeros(1, 1), torch.zeros(1).long(), "s")  # noqa: E731
    for key in ("a", "b", "a", "c"):
        cache.get_or_load(key, make)
    assert len(cache) == 2 and cache.misses == 3
    cache.get_or_load("a", make)
    assert cache.hits == 2  # 'a' survived, 'b' was evicted
    cache.clear()
    assert len(cache) == 0


# --------------------------------------------------------------------------- image folders


@pytest.fixture
def grey_model():
    return make_timm("test_resnet", in_chans=1)


def test_image_folder_with_timm_transform(tmp_path, grey_model, monkeypatch):
    from PIL import Image
    from timm.data import create_transform

    root = make_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 3, "eel": 2})
    calls = []
    real = data.images.load_images
    monkeypatch.setattr(data.images, "load_images", lambda *a: calls.append(a) or real(*a))
    cache = DataCache()
    d = load_data(root, model=grey_model, input_size=12, cache=cache)
    assert d.inputs.shape == (9, 1, 12, 12) and d.inputs.dtype == torch.float32
    assert d.classes == ["cat", "dog", "eel"]
    assert d.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    # timm's eval transform from the model's pretrained_cfg, in the model's 1 channel
    tf = create_transform(
        input_size=(1, 12, 12), interpolation="bilinear", crop_pct=0.95, mean=(0.5,), std=(0.5,)
    )
    assert torch.allclose(d.inputs[5], tf(Image.open(root / "dog" / "1.png").convert("L")))
    again = load_data(root, model=grey_model, input_size=12, cache=cache)
    assert again is d and len(calls) == 1
    other = load_data(
        root, model=grey_model, input_size=(10, 14), mean=(0.0,), std=(1.0,), cache=cache
    )
    assert other.inputs.shape == (9, 1, 10, 14) and other.inputs.min() >= 0 and len(calls) == 2


def test_image_folder_matches_manual_timm_pipeline(tmp_path):
    from PIL import Image
    from timm.data import create_transform

    root = make_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    d = load_data(
        root,
        input_size=(3, 16, 16),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        cache=None,
    )
    tf = create_transform(
        input_size=(3, 16, 16),
        interpolation="bilinear",
        crop_pct=1.0,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    expected = tf(Image.open(root / "b" / "0.png").convert("RGB"))
    assert torch.allclose(d.inputs[1], expected) and d.labels.tolist() == [0, 1]


def test_image_folder_split_subsample_and_errors(tmp_path, grey_model):
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"a": 2, "b": 2})
    make_image_folder(root / "val", {"a": 6, "b": 2}, seed=1)
    d = load_data(
        root, model=grey_model, split="val", input_size=8, max_samples=4, seed=0, cache=None
    )
    assert torch.bincount(d.labels).tolist() == [3, 1] and "val" in d.source
    assert len(load_data(root, model=grey_model, split="train", input_size=8, cache=None)) == 4
    with pytest.raises(InputError, match="--split test: no such split folder.*train"):
        load_data(root, split="test", input_size=8, cache=None)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="empty"):
        load_data(tmp_path / "empty", input_size=8, cache=None)


def test_corrupt_image_is_named(tmp_path, grey_model):
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    (root / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"cannot decode image .*b/1\.png"):
        load_data(root, model=grey_model, input_size=8, cache=None)


def test_transform_config_channels():
    cfg = data.resolve_transform_config(make_timm("test_resnet", in_chans=1))
    assert cfg["input_size"][0] == 1 and len(cfg["mean"]) == 1 and len(cfg["std"]) == 1
    cfg = data.resolve_transform_config(None, input_size=20, mean=(0.1,))
    assert cfg["input_size"] == (3, 20, 20) and cfg["mean"] == (0.1, 0.1, 0.1)
    with pytest.raises(InputError, match="--mean has 2 values"):
        data.resolve_transform_config(None, input_size=(3, 8, 8), mean=(0.1, 0.2))
    with pytest.raises(InputError, match="--crop-pct"):
        data.resolve_transform_config(None, crop_pct=1.5)


# --------------------------------------------------------------------------- CIFAR


def _fake_cifar10(root, n_test=12):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else 2
        entry = {
            "data": gen.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(n)],
        }
        (base / name).write_bytes(pickle.dumps(entry))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return base


def test_cifar_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    base = _fake_cifar10(tmp_path)
    # fake files fail torchvision's md5 check: corrupted/incomplete folders are refused
    with pytest.raises(InputError, match="CIFAR folder .* incomplete or corrupted"):
        load_data(tmp_path, cache=None)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(
        tvd.CIFAR10,
        "_load_meta",
        lambda self: setattr(self, "classes", [f"c{i}" for i in range(10)]),
    )
    d = load_data(base, input_size=(3, 8, 8), max_samples=10, cache=None)  # default: test split
    assert d.inputs.shape == (10, 3, 8, 8) and d.classes[3] == "c3"
    assert sorted(d.labels.tolist()) == list(range(10))
    train = load_data(tmp_path, split="train", input_size=(1, 8, 8), cache=None)
    assert train.inputs.shape == (10, 1, 8, 8)
    with pytest.raises(InputError, match="CIFAR has 'train' and 'test'"):
        load_data(tmp_path, split="holdout", cache=None)


# --------------------------------------------------------------------------- leaks


def test_image_folder_with_train_and_test_needs_a_split(tmp_path, grey_model):
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"a": 2, "b": 2})
    make_image_folder(root / "test", {"a": 1, "b": 1}, seed=1)
    with pytest.raises(InputError, match=r"holds split folders \(test, train\).*--split"):
        load_data(root, model=grey_model, input_size=8, cache=None)
    assert len(load_data(root, model=grey_model, split="test", input_size=8, cache=None)) == 2


def test_empty_class_folder_keeps_the_class_index(tmp_path, grey_model):
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "c": 3})
    (root / "b").mkdir()  # a class whose images are missing
    d = load_data(root, model=grey_model, input_size=8, cache=None)
    assert d.classes == ["a", "b", "c"]
    assert d.labels.tolist() == [0, 0, 2, 2, 2]  # 'c' keeps index 2, as timm trained it


def test_timm_class_order_is_natural(tmp_path, grey_model):
    root = make_image_folder(tmp_path / "imgs", {"c2": 1, "c10": 1})
    (root / "c1").mkdir()
    d = load_data(root, model=grey_model, input_size=8, cache=None)
    assert d.classes == ["c1", "c2", "c10"] and d.labels.tolist() == [1, 2]


def test_subsample_keeps_every_class_or_refuses():
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    idx = stratified_indices(labels, 10, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [8, 1, 1]
    with pytest.raises(InputError, match=r"--max-samples 2 .* 3 classes.*--max-samples 3"):
        stratified_indices(labels, 2)
    assert torch.bincount(labels[stratified_indices(labels, 3)]).tolist() == [1, 1, 1]


# --------------------------------------------------------------------------- eval transform


def test_transform_uses_timm_test_size_like_validate_py():
    from timm.data import resolve_data_config

    model = make_timm("test_mambaout", in_chans=3)
    assert model.pretrained_cfg["test_input_size"] != model.pretrained_cfg["input_size"]
    cfg = data.resolve_transform_config(model)
    want = resolve_data_config(model=model, use_test_size=True)  # timm's validate.py default
    assert cfg["input_size"] == want["input_size"] == (3, 192, 192)
    assert cfg["crop_pct"] == want["crop_pct"] and cfg["interpolation"] == want["interpolation"]
    assert data.resolve_transform_config(model, input_size=64)["input_size"] == (3, 64, 64)


def test_image_data_records_its_transform(tmp_path, grey_model, data_file):
    root = make_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    d = load_data(root, model=grey_model, input_size=12, crop_pct=1.0, cache=None)
    assert d.transform == {
        "input_size": [1, 12, 12],
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": [0.5],
        "std": [0.5],
    }
    assert load_data(data_file, cache=None).transform is None  # tensors go in as they are


# --------------------------------------------------------------------------- typed errors


def test_only_reading_errors_become_bad_input(tmp_path, monkeypatch):
    x, y = make_inputs(4)
    p = tmp_path / "d.pt"
    torch.save({"x": x, "y": y}, p)

    def bug(*args, **kwargs):
        raise KeyError("a bug, not a corrupt file")

    monkeypatch.setattr(torch, "load", bug)
    with pytest.raises(KeyError):  # not "cannot read data file": exit 1, not exit 2
        load_data(p, cache=None)


def test_only_decoding_errors_become_bad_input(tmp_path, grey_model, monkeypatch):
    import timm.data

    root = make_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})

    def broken_transform(**kwargs):
        def apply(img):
            raise TypeError("a bug in the transform")

        return apply

    monkeypatch.setattr(timm.data, "create_transform", broken_transform)
    with pytest.raises(TypeError, match="a bug in the transform"):
        load_data(root, model=grey_model, input_size=8, cache=None)


def test_a_bad_image_in_a_worker_is_named(tmp_path, grey_model):
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    (root / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"^cannot decode image .*a/1\.png"):
        load_data(root, model=grey_model, input_size=8, workers=1, cache=None)
