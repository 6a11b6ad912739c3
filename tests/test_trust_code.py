"""Code runs only by explicit choice: --trust-code for any architecture outside timm's
registry, --trust-checkpoint as well for a recorded one, imported from beside the
checkpoint only; trust flags take only True or False."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from conftest import CUSTOM_MODEL_SRC, evil_model_file, make_timm
from safetensors.torch import save_file

from infoprobe import checkpoints as ck
from infoprobe.errors import InputError
from infoprobe.options import RunOptions


class _Marker:
    """Unpickling it creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def sd():
    return make_timm().state_dict()


def test_a_file_of_the_python_installation_is_never_a_factory(tmp_path):
    marker = tmp_path / "ran"
    kwargs = {"cmd": f"touch {marker}"}
    arch = f"{subprocess.__file__}:getoutput"  # <python lib dir>/subprocess.py
    with pytest.raises(InputError, match="--trust-code"):
        ck.build_model(arch, num_classes=3, model_kwargs=kwargs)
    with pytest.raises(InputError, match="part of the Python installation"):
        ck.build_model(arch, num_classes=3, model_kwargs=kwargs, trust_code=True)
    site_file = f"{torch.__file__}:load"  # site-packages too
    with pytest.raises(InputError, match="part of the Python installation"):
        ck.build_model(site_file, num_classes=3, trust_code=True)
    assert not marker.exists()


def test_an_installed_module_factory_needs_trust_code(tmp_path):
    evil = tmp_path / "evil.pkl"
    marker = tmp_path / "unpickled"
    evil.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(InputError, match="--trust-code"):
        ck.build_model(
            "pandas:read_pickle", num_classes=3, model_kwargs={"filepath_or_buffer": str(evil)}
        )
    assert not marker.exists()


def test_typed_model_kwargs_of_a_timm_model_pass_the_allowlist(tmp_path):
    with pytest.raises(InputError, match="model argument 'features_only' is not one"):
        ck.build_model("test_resnet", num_classes=3, model_kwargs={"features_only": True})
    with pytest.raises(InputError, match="drop_rate must be a number in \\[0, 1\\]"):
        ck.build_model("test_resnet", num_classes=3, model_kwargs={"drop_rate": "0.5"})
    model = ck.build_model("test_resnet", num_classes=3, model_kwargs={"drop_rate": 0.5})
    assert model.drop_rate == 0.5


def test_a_custom_factory_takes_its_own_arguments_with_trust_code(tmp_path):
    model_file = tmp_path / "model.py"
    model_file.write_text(CUSTOM_MODEL_SRC)
    model = ck.build_model(
        f"{model_file}:factory", num_classes=3, model_kwargs={"width": 5}, trust_code=True
    )
    assert model[0].out_channels == 5  # 'width' is no timm argument: the factory's own


def _recorded(tmp_path, arch, sd):
    run = tmp_path / "run"
    run.mkdir()
    p = run / "w.safetensors"
    save_file(sd, str(p), metadata={"arch": arch})
    return p


def test_a_recorded_module_factory_never_resolves_through_sys_path(tmp_path, sd, monkeypatch):
    # python -m / torchrun -m put the working directory first on sys.path
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    evil_model_file(cwd, "models.py")
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    monkeypatch.delitem(sys.modules, "models", raising=False)
    p = _recorded(tmp_path, "models:factory", sd)
    with pytest.raises(InputError, match="models.py does not exist"):
        ck.load_model(p, trust_checkpoint=True, trust_code=True)
    assert not (cwd / "models.ran").exists() and "models" not in sys.modules


def test_a_recorded_module_factory_is_the_file_beside_the_checkpoint(tmp_path, monkeypatch):
    reference = ck.build_model(
        f"{evil_model_file(tmp_path, 'ref.py')}:factory", num_classes=4, in_chans=1, trust_code=True
    )
    p = _recorded(tmp_path, "nets.models:factory", reference.state_dict())
    (p.parent / "nets").mkdir()
    evil_model_file(p.parent / "nets", "models.py")
    monkeypatch.chdir(tmp_path)
    for flags in ({}, {"trust_checkpoint": True}, {"trust_code": True}):
        with pytest.raises(InputError, match="--trust-code"):
            ck.load_model(p, **flags)
        assert not (p.parent / "nets" / "models.ran").exists()
    loaded = ck.load_model(p, trust_checkpoint=True, trust_code=True)
    assert (p.parent / "nets" / "models.ran").exists()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference.eval()(x))


@pytest.mark.parametrize("value", ["false", "no", 1, 0, None, "True", [True]])
@pytest.mark.parametrize("flag", ["trust_checkpoint", "trust_code"])
def test_trust_flags_take_only_true_or_false(tmp_path, timm_model, value, flag):
    marker = tmp_path / "unpickled"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": timm_model.state_dict(), "x": _Marker(marker)}, p)
    with pytest.raises(InputError, match=f"{flag}=.*give True or False"):
        ck.load_model(p, arch="test_resnet", **{flag: value})
    assert not marker.exists()
    if value is not None:  # None is the default: unset
        with pytest.raises(InputError, match=rf"\({flag}\): give True or False"):
            RunOptions.of("analyze", {flag: value})
    assert getattr(RunOptions.of("analyze", {flag: True}), flag) is True
