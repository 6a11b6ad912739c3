"""Memory is bounded before it is allocated: models are built on meta and compared with
their checkpoint, what files declare is checked against the memory available, and a
config.json's data config is typed and bounded."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest
import timm
import torch
from conftest import make_timm
from safetensors.torch import save_file
from timm.models import save_for_hf

from infoprobe import allowlist, memory
from infoprobe import checkpoints as ck
from infoprobe.data import load_data
from infoprobe.errors import InputError


@pytest.fixture
def built_on(monkeypatch):
    """The device of every model timm.create_model builds (a stand-in that records it)."""
    devices = []
    real = timm.create_model

    def recording(name, **kwargs):
        model = real(name, **kwargs)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(timm, "create_model", recording)
    return devices


def _tiny(path, **meta):
    """A checkpoint of one float that records an architecture (132 bytes and up)."""
    save_file({"x": torch.zeros(1)}, str(path), metadata={k: str(v) for k, v in meta.items()})
    return path


@pytest.mark.parametrize(
    "meta",
    [
        {"arch": "resnet18", "num_classes": 1 << 20},  # 2.9 GB RSS before
        {"arch": "resnet50"},  # 8.6 GB
        {  # a ViT of allowed sizes: 51 GB
            "arch": "vit_base_patch16_224",
            "model_kwargs": json.dumps({"embed_dim": 65536, "depth": 12, "num_heads": 16}),
        },
    ],
)
def test_a_tiny_checkpoint_naming_a_huge_model_allocates_nothing(tmp_path, built_on, meta):
    p = _tiny(tmp_path / "tiny.safetensors", **meta)
    with pytest.raises(InputError, match="does not fit model") as err:
        ck.load_model(p)
    assert "\n" not in str(err.value)
    assert built_on == ["meta"]  # compared on meta, never built on cpu


def test_model_kwargs_num_classes_meets_the_flag_cap(tmp_path, built_on):
    p = tmp_path / "m.safetensors"
    save_file(make_timm().state_dict(), str(p), metadata={"arch": "test_resnet"})
    built_on.clear()
    cap = r"--model-kwargs: {} must be an integer in \[1, {}\], not {}; give it with --{}"
    with pytest.raises(InputError, match=cap.format("num_classes", 1 << 20, 10**8, "num-classes")):
        ck.load_model(p, model_kwargs={"num_classes": 100_000_000})
    with pytest.raises(InputError, match=cap.format("in_chans", 4096, 5000, "in-chans")):
        ck.load_model(p, model_kwargs={"in_chans": 5000})
    with pytest.raises(InputError, match=r"num_classes must be an integer"):
        ck.build_model("test_resnet", num_classes=100_000_000)
    assert built_on == []


HUGE_BUFFER_SRC = """
import torch
from torch import nn


class Big(nn.Module):
    def __init__(self, num_classes=3, in_chans=1):
        super().__init__()
        self.fc = nn.Linear(4, num_classes)
        # computed at construction, held by no checkpoint: 4 TiB
        self.register_buffer("table", torch.zeros(1 << 40), persistent=False)


def factory(**kwargs):
    return Big(**kwargs)
"""


def test_a_model_larger_than_the_memory_available_is_refused_before_it_is_built(tmp_path):
    (tmp_path / "big.py").write_text(HUGE_BUFFER_SRC)
    p = tmp_path / "big.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, str(p))
    with pytest.raises(InputError, match="weights and buffers needs 4096.00 GiB of memory"):
        ck.load_model(p, arch=f"{tmp_path / 'big.py'}:factory", trust_code=True)


def _sparse_safetensors(path, gib: int, **meta):
    """A valid safetensors file whose one tensor covers ``gib`` GiB of a sparse file."""
    n = gib << 28  # float32 elements
    header = {"x": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    header["__metadata__"] = {k: str(v) for k, v in meta.items()}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + 4 * n)
    return path


def _room(monkeypatch, mib: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: mib << 20)


def test_a_sparse_checkpoint_is_refused_before_it_is_read(tmp_path, monkeypatch):
    p = _sparse_safetensors(tmp_path / "sparse.safetensors", 2, arch="test_resnet")
    _room(monkeypatch, 1024)
    with pytest.raises(InputError, match=r"checkpoint .* needs 2.00 GiB of memory.* 1.00 GiB"):
        ck.load_model(p)
    with pytest.raises(InputError, match="needs 2.00 GiB"):
        ck.read_state_dict(p)


def test_a_sparse_data_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    p = _sparse_safetensors(tmp_path / "data.safetensors", 2)
    _room(monkeypatch, 1024)
    with pytest.raises(InputError, match=r"data file .* needs 2.00 GiB"):
        load_data(p, cache=None)


def test_a_compressed_npz_declaring_more_than_the_memory_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "bomb.npz"
    np.savez_compressed(p, x=np.zeros((1024, 8192), dtype=np.float64), y=np.zeros(1024, int))
    assert p.stat().st_size < 200_000  # 64 MiB of zeros, compressed
    _room(monkeypatch, 32)
    with pytest.raises(InputError, match=r"data file .* needs 0.09 GiB"):  # + float32 copy
        load_data(p, cache=None)


def test_an_npz_header_declaring_more_than_its_member_holds_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "forged.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (1 << 30,)  # 8 GiB of float64, in a member of 8 bytes
    with zipfile.ZipFile(p, "w") as z, z.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(1).tobytes())
    allocations = []
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: allocations.append(a) or real_empty(*a, **k))
    with pytest.raises(InputError, match="declares shape \\(1073741824,\\).*corrupt"):
        load_data(p, cache=None)
    assert allocations == []


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", "bc"]),
        np.array([b"a", b"bc"]),
        np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]"),
        np.array([1, 2], dtype="timedelta64[s]"),
        np.zeros(2, dtype=np.longdouble),
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
    ],
    ids=["str", "bytes", "datetime64", "timedelta64", "longdouble", "structured"],
)
def test_npz_arrays_that_are_no_tensors_are_bad_input(tmp_path, array):
    p = tmp_path / "odd.npz"
    np.savez(p, x=np.zeros((2, 3), dtype=np.float32), y=array)
    with pytest.raises(InputError, match="is not a tensor dtype") as err:
        load_data(p, cache=None)
    assert str(array.dtype) in str(err.value)


def test_npz_arrays_load_as_they_did(tmp_path):
    p = tmp_path / "ok.npz"
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez_compressed(p, x=x, y=np.array([0, 1, 0, 1], dtype=np.uint8))
    data = load_data(p, cache=None)
    assert torch.equal(data.inputs, torch.from_numpy(x).float())
    assert data.labels.tolist() == [0, 1, 0, 1] and data.labels.dtype == torch.int64


# ----------------------------------------------------------------- config.json pretrained_cfg


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    save_for_hf(make_timm(), str(folder), safe_serialization=True)
    return folder


def _edit_cfg(folder, **entries):
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(entries)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"input_size": [1, 40000, 40000]}, "input_size must be \\[C, H, W\\]"),
        ({"input_size": "abc"}, "input_size must be"),
        ({"input_size": [1, 16]}, "input_size must be"),
        ({"test_input_size": [1, 16, True]}, "test_input_size must be"),
        ({"mean": "0.5"}, "mean must be a number in"),
        ({"mean": [0.5] * 65}, "mean must be"),
        ({"std": [0.0]}, "std must be a list of at most 64 numbers in \\(0, "),
        ({"std": [float("nan")]}, "std must be"),
        ({"crop_pct": "0.9"}, "crop_pct must be a number in \\(0, 1\\]"),
        ({"crop_pct": 0}, "crop_pct must be"),
        ({"crop_mode": "bogus"}, "crop_mode must be one of center, squash, border"),
        ({"interpolation": "random"}, "interpolation must be one of"),
        ({"fixed_input_size": "yes"}, "fixed_input_size must be true or false"),
    ],
)
def test_a_config_json_data_config_is_typed_and_bounded(hf_folder, entry, words):
    _edit_cfg(hf_folder, **entry)
    with pytest.raises(InputError, match=words) as err:
        ck.load_model(hf_folder)
    assert "config.json pretrained_cfg" in str(err.value) and "\n" not in str(err.value)


def test_a_config_json_data_config_within_bounds_is_taken(hf_folder):
    _edit_cfg(
        hf_folder,
        input_size=[1, 24, 24],
        mean=[0.25],
        std=[0.5],
        crop_pct=0.9,
        crop_mode="squash",
        interpolation="bilinear",
        url="https://example.invalid/weights.pth",
    )
    cfg = ck.read_hf_config(hf_folder)["pretrained_cfg"]
    assert cfg["input_size"] == (1, 24, 24) and cfg["mean"] == (0.25,) and cfg["std"] == (0.5,)
    assert cfg["crop_pct"] == 0.9 and cfg["crop_mode"] == "squash"
    assert "url" not in cfg  # not a transform entry: not taken
    assert set(cfg) <= set(allowlist.ALLOWED_DATA_CFG)


def test_deeply_nested_config_json_is_bad_input(hf_folder):
    (hf_folder / "config.json").write_text(
        '{"architecture": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(InputError, match="is not a timm model config"):
        ck.load_model(hf_folder)
