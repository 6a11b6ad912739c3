"""The trust gate under attack: what a checkpoint may make infoprobe run, build or open."""

from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import timm
import torch
from conftest import evil_model_file, make_timm
from safetensors.torch import save_file

from infoprobe import allowlist
from infoprobe import checkpoints as ck
from infoprobe.errors import InputError


def _safetensors(path, sd, **meta):
    save_file(
        sd,
        str(path),
        metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
    )
    return path


@pytest.fixture
def sd():
    return make_timm().state_dict()


@pytest.fixture
def create_model_calls(monkeypatch):
    """A stand-in timm.create_model that records the arguments it receives, then builds."""
    calls = []
    real = timm.create_model

    def recording(name, **kwargs):
        calls.append((name, dict(kwargs)))
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    return calls


# ----------------------------------------------------------------------- item 1: --arch


def test_typed_file_factory_runs_only_with_trust_code(tmp_path, monkeypatch):
    evil_model_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="--trust-code"):
        ck.build_model("model.py:factory", num_classes=3, in_chans=1)
    assert not (tmp_path / "model.ran").exists()
    model = ck.build_model("model.py:factory", num_classes=3, in_chans=1, trust_code=True)
    assert (tmp_path / "model.ran").exists()  # the user chose to run it
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_recorded_file_factory_never_runs_without_trust(tmp_path, sd):
    evil_model_file(tmp_path)
    p = _safetensors(tmp_path / "w.safetensors", sd, arch="model.py:factory")
    with pytest.raises(InputError) as err:
        ck.load_model(p)
    assert not (tmp_path / "model.ran").exists()
    # the refusal names the gate, and does not tell the user to type the recorded string
    assert "--trust-checkpoint" in str(err.value)
    assert "--arch model.py:factory" not in str(err.value)


@pytest.mark.parametrize("recorded", [False, True])
def test_standard_library_callables_are_never_factories(tmp_path, sd, monkeypatch, recorded):
    import subprocess

    ran = []
    monkeypatch.setattr(subprocess, "getoutput", lambda *a, **k: ran.append(a) or "")
    if recorded:  # looked for as subprocess.py beside the checkpoint, never imported
        p = _safetensors(tmp_path / "w.safetensors", sd, arch="subprocess:getoutput")
        with pytest.raises(InputError, match="subprocess.py does not exist"):
            ck.load_model(p, trust_checkpoint=True, trust_code=True)
    else:
        with pytest.raises(InputError, match="standard-library"):
            ck.build_model(
                "subprocess:getoutput",
                num_classes=3,
                model_kwargs={"cmd": "echo hi"},
                trust_code=True,
            )
    assert ran == []


# ----------------------------------------------------------------------- item 5: beside only


def test_trusted_recorded_file_is_looked_up_beside_the_checkpoint_only(tmp_path, sd, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    evil_model_file(tmp_path)  # in the working directory, not beside the checkpoint
    monkeypatch.chdir(tmp_path)
    p = _safetensors(run / "w.safetensors", sd, arch="model.py:factory")
    with pytest.raises(InputError, match="does not exist"):
        ck.load_model(p, trust_checkpoint=True, trust_code=True)
    assert not (tmp_path / "model.ran").exists()


@pytest.mark.parametrize("recorded", ["../model.py:factory", "{abs}:factory"])
def test_trusted_recorded_file_outside_the_checkpoint_folder_is_refused(tmp_path, sd, recorded):
    run = tmp_path / "run"
    run.mkdir()
    evil = evil_model_file(tmp_path)
    p = _safetensors(run / "w.safetensors", sd, arch=recorded.format(abs=evil))
    with pytest.raises(InputError, match="must sit in the checkpoint's folder"):
        ck.load_model(p, trust_checkpoint=True, trust_code=True)
    assert not (tmp_path / "model.ran").exists()


# ----------------------------------------------------------------------- item 2: allowlist


def _namespace_ckpt(path, sd, **args):
    torch.save({"arch": "test_resnet", "state_dict": sd, "args": argparse.Namespace(**args)}, path)
    return path


def _lightning_ckpt(path, sd, **hparams):
    torch.save(
        {"state_dict": {"model." + k: v for k, v in sd.items()}, "hyper_parameters": hparams}, path
    )
    return path


@pytest.mark.parametrize(
    "bad",
    [
        {"checkpoint_path": "/tmp/evil.pth"},
        {"pretrained": True},
        {"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}},
        {"cache_dir": "/tmp"},
        {"some_arbitrary_kwarg": 1},
        {"drop_rate": 5.0},
        {"global_pool": "../../etc"},
        {"img_size": [[[[16]]]]},
    ],
)
@pytest.mark.parametrize("form", ["safetensors", "timm_args", "lightning"])
def test_recorded_kwargs_outside_the_allowlist_never_reach_create_model(
    tmp_path, sd, create_model_calls, bad, form
):
    if form == "safetensors":
        p = _safetensors(tmp_path / "w.safetensors", sd, arch="test_resnet", model_kwargs=bad)
        kwargs = {}
    elif form == "timm_args":
        p = _namespace_ckpt(tmp_path / "w.pth.tar", sd, model_kwargs=bad)
        kwargs = {}
    else:
        p = _lightning_ckpt(tmp_path / "w.ckpt", sd, model_kwargs=bad)
        kwargs = {"arch": "test_resnet"}
    with pytest.raises(InputError, match="model argument"):
        ck.load_model(p, **kwargs)
    assert create_model_calls == []


def test_allowed_recorded_kwargs_pass_exactly(tmp_path, create_model_calls):
    model = make_timm(drop_rate=0.25)
    p = _safetensors(
        tmp_path / "w.safetensors",
        model.state_dict(),
        arch="test_resnet",
        model_kwargs={"drop_rate": 0.25, "global_pool": "avg"},
    )
    create_model_calls.clear()
    ck.load_model(p)
    assert create_model_calls == [
        (
            "test_resnet",
            {
                "pretrained": False,
                "drop_rate": 0.25,
                "global_pool": "avg",
                "num_classes": 10,
                "in_chans": 1,
            },
        )
    ]


def test_typed_file_opening_kwargs_are_refused_too(create_model_calls):
    with pytest.raises(InputError, match="checkpoint_path"):
        ck.build_model("test_resnet", num_classes=3, model_kwargs={"checkpoint_path": "x"})
    assert create_model_calls == []


def test_typed_kwargs_replace_a_recorded_one_that_is_not_allowed(tmp_path, create_model_calls):
    model = make_timm(drop_rate=0.5)
    p = _safetensors(
        tmp_path / "w.safetensors",
        model.state_dict(),
        arch="test_resnet",
        model_kwargs={"drop_rate": 5.0},
    )
    with pytest.raises(InputError, match="drop_rate must be a number in"):
        ck.load_model(p)
    create_model_calls.clear()
    ck.load_model(p, model_kwargs={"drop_rate": 0.5})
    assert [kwargs["drop_rate"] for _, kwargs in create_model_calls] == [0.5]


# ----------------------------------------------------------------------- item 9: bad metadata


@pytest.mark.parametrize(
    "meta,words",
    [
        ({"num_classes": "abc"}, "num_classes must be an integer"),
        ({"num_classes": "-3"}, "num_classes must be an integer"),
        ({"num_classes": "4000000000"}, f"\\[1, {allowlist.MAX_CLASSES}\\]"),
        ({"in_chans": "-1"}, "in_chans must be an integer"),
        ({"in_chans": "x"}, "in_chans must be an integer"),
        ({"model_kwargs": '{"a":' + "[" * 100000 + "]" * 100000 + "}"}, "not a JSON object"),
        ({"arch": "test_resnet\x1b[2J"}, "not a model name"),
    ],
)
def test_bad_metadata_is_bad_input(tmp_path, sd, create_model_calls, meta, words):
    p = _safetensors(tmp_path / "w.safetensors", sd, **{"arch": "test_resnet", **meta})
    with pytest.raises(InputError, match=words):
        ck.load_model(p)
    assert create_model_calls == []


def test_model_kwargs_num_classes_is_not_overridden_by_the_checkpoint(
    tmp_path, sd, create_model_calls
):
    p = _safetensors(tmp_path / "w.safetensors", sd, arch="test_resnet", num_classes="10")
    with pytest.raises(InputError, match="wrong --num-classes"):
        ck.load_model(p, model_kwargs={"num_classes": 5})
    assert create_model_calls[0][1]["num_classes"] == 5  # the user's value was built
    with pytest.raises(InputError, match="conflicts with --num-classes"):
        ck.load_model(p, num_classes=10, model_kwargs={"num_classes": 5})


class _CraftedArgs:
    def __reduce__(self):
        return (argparse.Namespace, (1, 2))


def test_unreadable_torch_files_are_bad_input(tmp_path, sd):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    with pytest.raises(InputError, match="corrupt, truncated or not a checkpoint"):
        ck.load_model(text, arch="test_resnet")
    crafted = tmp_path / "crafted.pth.tar"
    torch.save({"state_dict": sd, "args": _CraftedArgs()}, crafted)
    with pytest.raises(InputError, match="not a checkpoint"):
        ck.load_model(crafted, arch="test_resnet")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("legacy", ["torch_legacy", "plain_pickle"])
def test_blocked_legacy_pickles_name_the_trust_flag(tmp_path, legacy):
    p = tmp_path / "old.pt"
    with open(p, "wb") as f:
        if legacy == "torch_legacy":
            torch.save({"x": _RunsCode()}, f, _use_new_zipfile_serialization=False)
        else:
            pickle.dump({"x": _RunsCode()}, f, protocol=4)
    with pytest.raises(InputError, match="--trust-checkpoint") as err:
        ck.load_model(p, arch="test_resnet")
    assert "corrupt" not in str(err.value)


def test_file_names_over_255_bytes_are_bad_input(tmp_path):
    long = tmp_path / ("x" * 300 + ".pt")
    with pytest.raises(InputError, match="255"):
        ck.load_model(long, arch="test_resnet")
    with pytest.raises(InputError, match="255"):
        ck.series_steps([long])


# ----------------------------------------------------------------------- item 3: floors


def test_dependency_floors_exclude_the_weights_only_bypasses():
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {r.name: r.specifier for r in map(Requirement, deps)}
    # CVE-2025-32434 (torch <= 2.5.1), CVE-2026-24747 (torch < 2.10), timm 1.0.0-1.0.25
    for name, unsafe in (("torch", ["2.5.1", "2.9.1"]), ("timm", ["1.0.0", "1.0.25"])):
        assert not any(floors[name].contains(Version(v)) for v in unsafe), name
    readme = (root / "README.md").read_text()
    assert "CVE-2025-32434" in readme and "CVE-2026-24747" in readme


# ----------------------------------------------------------------------- save_for_hf folders


@pytest.mark.parametrize("via_local_dir", [False, True])
@pytest.mark.parametrize(
    "edit,words",
    [
        ({"architecture": "model.py:factory"}, "--trust-checkpoint"),
        ({"model_args": {"checkpoint_path": "/tmp/x.pth"}}, "checkpoint_path"),
        ({"num_classes": 4_000_000_000}, "num_classes must be an integer"),
    ],
)
def test_save_for_hf_config_goes_through_the_same_gate(
    tmp_path, create_model_calls, via_local_dir, edit, words
):
    from timm.models import save_for_hf

    folder = tmp_path / "hf"
    save_for_hf(make_timm(), str(folder), safe_serialization=True)
    evil_model_file(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(edit)
    (folder / "config.json").write_text(json.dumps(config))
    create_model_calls.clear()
    with pytest.raises(InputError, match=words):
        if via_local_dir:
            ck.load_model(folder / "model.safetensors", arch=f"local-dir:{folder}")
        else:
            ck.load_model(folder)
    assert create_model_calls == []
    assert not (folder / "model.ran").exists()
