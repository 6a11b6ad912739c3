"""Checkpoint forms timm users have, each written by its own library's writer in tmp_path:
timm's save_for_hf folders (and ``--arch local-dir:``), Lightning checkpoints naming the arch
in ``hyper_parameters``, and ``safetensors.torch.save_model`` files with tied weights."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_inputs, make_timm
from safetensors.torch import save_model
from timm.models import save_for_hf

from infoprobe import data as datasets
from infoprobe.checkpoints import checkpoint_files, load_model
from infoprobe.errors import InputError

DATA_CFG = {
    "input_size": (1, 16, 16),
    "mean": (0.25,),
    "std": (0.5,),
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, _ = make_inputs(8)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.fixture
def hf_folder(tmp_path, timm_model):
    folder = tmp_path / "hf"
    save_for_hf(timm_model, str(folder), safe_serialization=True, data_config=DATA_CFG)
    return folder


@pytest.mark.parametrize("which", ["folder", "model.safetensors", "config.json"])
def test_save_for_hf_folder_loads_with_no_flags(hf_folder, timm_model, which):
    path = hf_folder if which == "folder" else hf_folder / which
    loaded = load_model(path)
    assert loaded.arch == "test_resnet" and loaded.num_classes == 10
    assert same_outputs(loaded.model, timm_model)


def test_save_for_hf_torch_weights(tmp_path, timm_model):
    save_for_hf(timm_model, str(tmp_path / "hf"), safe_serialization=False)
    assert (tmp_path / "hf" / "pytorch_model.bin").is_file()
    assert same_outputs(load_model(tmp_path / "hf").model, timm_model)


def test_pretrained_cfg_drives_the_transform(hf_folder):
    recorded = json.loads((hf_folder / "config.json").read_text())["pretrained_cfg"]
    cfg = datasets.resolve_transform_config(load_model(hf_folder).model)
    for key in ("mean", "std", "input_size"):
        assert tuple(cfg[key]) == tuple(recorded[key]) == tuple(DATA_CFG[key])
    assert cfg["crop_pct"] == recorded["crop_pct"] == 0.875
    assert cfg["interpolation"] == recorded["interpolation"] == "bilinear"
    # without the folder's config the model's own defaults apply
    plain = datasets.resolve_transform_config(make_timm())
    assert plain["mean"] != cfg["mean"] and plain["crop_pct"] != cfg["crop_pct"]


def test_local_dir_arch_reads_the_folder(tmp_path, hf_folder, timm_model):
    bare = tmp_path / "weights.pth"
    torch.save(timm_model.state_dict(), bare)
    with pytest.raises(InputError, match="--arch"):
        load_model(bare)
    loaded = load_model(bare, arch=f"local-dir:{hf_folder}")
    assert loaded.arch == "test_resnet" and same_outputs(loaded.model, timm_model)
    assert loaded.model.pretrained_cfg["mean"] == (0.25,)
    with pytest.raises(InputError, match="no config.json"):
        load_model(bare, arch=f"local-dir:{tmp_path}")


def test_folder_without_weights_and_bad_config(tmp_path, hf_folder):
    (hf_folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights file"):
        load_model(hf_folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"architectures": ["ViTForImageClassification"]}')
    (bad / "model.safetensors").write_bytes((hf_folder / "config.json").read_bytes())
    with pytest.raises(InputError, match="not a timm model config"):
        load_model(bad)


def test_a_folder_of_checkpoints_expands(tmp_path, hf_folder, timm_model):
    torch.save(timm_model.state_dict(), tmp_path / "a.pth")
    (tmp_path / "notes.txt").write_text("x")
    assert checkpoint_files([tmp_path]) == [tmp_path / "a.pth", hf_folder]
    assert checkpoint_files([hf_folder]) == [hf_folder]


@pytest.mark.parametrize("key", ["arch", "model_name", "model"])
def test_lightning_hyper_parameters_name_the_arch(tmp_path, timm_model, key):
    state = {f"model.{k}": v for k, v in timm_model.state_dict().items()}
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "hyper_parameters": {key: "test_resnet", "num_classes": 10, "in_chans": 1, "lr": 0.1},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_model(tmp_path / "last.ckpt")
    assert loaded.arch == "test_resnet" and same_outputs(loaded.model, timm_model)


def test_lightning_model_entry_that_is_not_a_timm_name(tmp_path, timm_model):
    ckpt = {"state_dict": timm_model.state_dict(), "hyper_parameters": {"model": "v2"}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(InputError, match="does not record its architecture"):
        load_model(tmp_path / "last.ckpt")


def test_save_model_with_tied_weights(tmp_path):
    model = make_timm()
    block = model.layer1[0]
    block.conv2.weight = block.conv1.weight  # tie two same-shape kernels
    path = tmp_path / "tied.safetensors"
    save_model(model, str(path), metadata={"arch": "test_resnet", "num_classes": "10"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # stored once, the name in the metadata
        assert "layer1.0.conv2.weight" not in f.keys()
        assert f.metadata()["layer1.0.conv2.weight"] == "layer1.0.conv1.weight"
    loaded = load_model(path)
    assert same_outputs(loaded.model, model)
    assert "layer1.0.conv2.weight" not in loaded.meta
