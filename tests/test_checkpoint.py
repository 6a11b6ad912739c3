"""Checkpoint forms, architectures, the trust gate and load errors."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from conftest import make_inputs, make_timm, randomize_buffers, write_custom_model
from safetensors.torch import save_file

from infoprobe import checkpoints as ck
from infoprobe.errors import InputError


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _write_form(form, tmp_path, model):
    """Write ``model`` in one of the forms users bring; return (path, load kwargs)."""
    sd = model.state_dict()
    other = make_timm(seed=5).state_dict()  # distinct weights: picking them would show
    if form == "safetensors_meta":
        p = tmp_path / "m.safetensors"
        save_file(
            sd,
            str(p),
            metadata={"arch": "test_resnet", "num_classes": "10", "in_chans": "1", "step": "7"},
        )
        return p, {}
    if form == "bare_pt":
        p = tmp_path / "m.pt"
        torch.save(sd, p)
        return p, {"arch": "test_resnet"}
    if form == "timm_train":
        p = tmp_path / "checkpoint-3.pth.tar"
        torch.save(
            {
                "epoch": 3,
                "arch": "test_resnet",
                "state_dict": sd,
                "state_dict_ema": other,
                "optimizer": {"state": {}},
                "args": __import__("argparse").Namespace(num_classes=10, in_chans=1),
                "version": 2,
                "metric": 0.5,
            },
            p,
        )
        return p, {}
    if form == "timm_train_ema":
        p = tmp_path / "ema.pth.tar"
        torch.save(
            {
                "epoch": 3,
                "arch": "test_resnet",
                "state_dict": other,
                "state_dict_ema": _prefixed(sd, "module."),
            },
            p,
        )
        return p, {"ema": True}
    if form == "lightning":
        p = tmp_path / "epoch=1-step=20.ckpt"
        torch.save(
            {
                "epoch": 1,
                "global_step": 20,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": _prefixed(sd, "model."),
                "hyper_parameters": {"lr": 0.1},
            },
            p,
        )
        return p, {"arch": "test_resnet"}
    if form == "dataparallel":
        p = tmp_path / "dp.pth"
        torch.save(_prefixed(sd, "module."), p)
        return p, {"arch": "test_resnet"}
    if form == "compiled":
        p = tmp_path / "compiled.bin"
        torch.save({"model": _prefixed(sd, "_orig_mod.")}, p)
        return p, {"arch": "test_resnet"}
    if form == "ddp_compiled":
        p = tmp_path / "both.pt"
        torch.save(_prefixed(sd, "module._orig_mod."), p)
        return p, {"arch": "test_resnet"}
    raise AssertionError(form)


FORMS = [
    "safetensors_meta",
    "bare_pt",
    "timm_train",
    "timm_train_ema",
    "lightning",
    "dataparallel",
    "compiled",
    "ddp_compiled",
]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_loads_identical_logits(form, tmp_path, timm_model):
    x, _ = make_inputs(6)
    path, kwargs = _write_form(form, tmp_path, timm_model)
    loaded = ck.load_model(path, **kwargs)
    assert loaded.arch == "test_resnet"
    assert loaded.num_classes == 10
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model, x), _logits(timm_model, x))


def test_recorded_metadata_is_parsed(tmp_path, timm_model):
    path, _ = _write_form("safetensors_meta", tmp_path, timm_model)
    meta = ck.load_model(path).meta
    assert meta["step"] == 7 and meta["num_classes"] == 10 and meta["format"] == "safetensors"
    path, _ = _write_form("timm_train", tmp_path, timm_model)
    meta = ck.load_model(path).meta
    assert meta["epoch"] == 3 and meta["source_key"] == "state_dict"


def test_read_state_dict_cleans_keys_and_selects_prefix(tmp_path, timm_model):
    path, _ = _write_form("lightning", tmp_path, timm_model)
    sd, meta = ck.read_state_dict(path)
    assert set(sd) == set(timm_model.state_dict())
    assert meta["global_step"] == 20
    # explicit prefix: only the keys under it, without it
    mixed = {**_prefixed(timm_model.state_dict(), "net."), "criterion.weight": torch.ones(3)}
    p = tmp_path / "mixed.pt"
    torch.save({"state_dict": mixed}, p)
    sd, _ = ck.read_state_dict(p, strip_prefix="net.")
    assert set(sd) == set(timm_model.state_dict())
    loaded = ck.load_model(p, arch="test_resnet", strip_prefix="net.")
    x, _ = make_inputs(4)
    assert torch.equal(_logits(loaded.model, x), _logits(timm_model, x))


def test_custom_file_factory_and_inferred_sizes(tmp_path):
    model_file = write_custom_model(tmp_path)
    arch = f"{model_file}:factory"
    torch.manual_seed(0)
    ref = randomize_buffers(ck.build_model(arch, num_classes=7, in_chans=2, trust_code=True))
    ref.eval()
    p = tmp_path / "custom.pt"
    torch.save(ref.state_dict(), p)
    with pytest.raises(InputError, match="--trust-code"):
        ck.load_model(p, arch=arch)
    loaded = ck.load_model(p, arch=arch, trust_code=True)  # num_classes from the head weight
    assert loaded.num_classes == 7
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(_logits(loaded.model, x), _logits(ref, x))


def test_recorded_relative_factory_is_found_beside_the_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_custom_model(run_dir)  # run/model.py
    arch = f"{run_dir / 'model.py'}:factory"
    ref = ck.build_model(arch, num_classes=3, in_chans=1, trust_code=True).eval()
    p = run_dir / "w.safetensors"
    save_file(ref.state_dict(), str(p), metadata={"arch": "model.py:factory"})
    monkeypatch.chdir(tmp_path)  # model.py is not in the working directory
    loaded = ck.load_model(p, trust_checkpoint=True, trust_code=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(_logits(loaded.model, x), _logits(ref, x))
    with pytest.raises(InputError, match="does not exist"):  # a typed path is not re-based
        ck.load_model(p, arch="model.py:factory", trust_code=True)


def test_package_module_factory_and_recorded_kwargs(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write_custom_model(pkg, "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    ref = ck.build_model(
        "mypkg.nets:factory",
        num_classes=4,
        in_chans=1,
        model_kwargs={"width": 5},
        trust_code=True,
    ).eval()
    p = tmp_path / "w.safetensors"
    save_file(
        ref.state_dict(),
        str(p),
        metadata={"arch": "mypkg.nets:factory", "model_kwargs": json.dumps({"width": 5})},
    )
    # a recorded custom arch imports code: refused unless both the file and code are trusted
    for flags in ({}, {"trust_checkpoint": True}, {"trust_code": True}):
        with pytest.raises(InputError, match="--trust-code"):
            ck.load_model(p, **flags)
    # trusted, a recorded module is mypkg/nets.py beside the checkpoint, imported by path
    loaded = ck.load_model(p, trust_checkpoint=True, trust_code=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(_logits(loaded.model, x), _logits(ref, x))
    # a typed factory is the user's code, but the untrusted recorded 'width' does not reach
    # it unless the user gives it (or trusts the checkpoint)
    with pytest.raises(InputError, match="'width' is not one infoprobe takes"):
        ck.load_model(p, arch="mypkg.nets:factory", trust_code=True)
    typed = ck.load_model(p, arch="mypkg.nets:factory", model_kwargs={"width": 5}, trust_code=True)
    assert typed.num_classes == 4


def test_pickled_module_refused_then_trusted(tmp_path, timm_model, monkeypatch):
    p = tmp_path / "whole.pt"
    torch.save(timm_model, p)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    with pytest.raises(InputError, match="--trust-checkpoint") as err:
        ck.load_model(p, arch="test_resnet")
    assert "arbitrary code" in str(err.value) and str(p) in str(err.value)
    # refused without ever attempting an unsafe load
    assert calls and all(k.get("weights_only") is True for k in calls)
    loaded = ck.load_model(p, trust_checkpoint=True)
    x, _ = make_inputs(4)
    assert torch.equal(_logits(loaded.model, x), _logits(timm_model, x))
    assert loaded.num_classes == 10
    with pytest.raises(InputError, match="--trust-checkpoint"):
        ck.read_state_dict(p)


def test_pickled_module_inside_dict_is_refused(tmp_path, timm_model):
    p = tmp_path / "wrapped.pth"
    torch.save({"model": timm_model, "epoch": 2}, p)
    with pytest.raises(InputError, match="pickled Python objects"):
        ck.load_model(p, arch="test_resnet")
    loaded = ck.load_model(p, arch="test_resnet", trust_checkpoint=True)
    x, _ = make_inputs(3)
    assert torch.equal(_logits(loaded.model, x), _logits(timm_model, x))


def test_torchscript_refused_then_trusted(tmp_path, custom_model_file):
    ref = ck.build_model(f"{custom_model_file}:factory", num_classes=10, trust_code=True).eval()
    x = torch.randn(2, 1, 8, 8)
    p = tmp_path / "scripted.pt"
    torch.jit.trace(ref, x).save(str(p))
    with pytest.raises(InputError, match="TorchScript.*--trust-checkpoint"):
        ck.load_model(p)
    loaded = ck.load_model(p, trust_checkpoint=True)
    assert loaded.meta["format"] == "torchscript"
    assert torch.allclose(_logits(loaded.model, x), _logits(ref, x))
    # with --arch, only the weights go into a Python model
    arch = f"{custom_model_file}:factory"
    as_arch = ck.load_model(p, arch=arch, trust_checkpoint=True, trust_code=True)
    assert torch.equal(_logits(as_arch.model, x), _logits(ref, x))


@pytest.mark.parametrize(
    "content",
    [b"", b"\x80\x02garbage" * 8, "truncate_pt", "truncate_st", b"not a checkpoint at all"],
)
def test_corrupt_files(content, tmp_path, timm_model):
    if content == "truncate_pt":
        full = tmp_path / "full.pt"
        torch.save(timm_model.state_dict(), full)
        content, name = full.read_bytes()[:5000], "bad.pt"
    elif content == "truncate_st":
        full = tmp_path / "full.safetensors"
        save_file(timm_model.state_dict(), str(full))
        content, name = full.read_bytes()[:3000], "bad.safetensors"
    else:
        name = "bad.pth"
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputError, match="corrupt") as err:
        ck.load_model(p, arch="test_resnet")
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ck.load_model(tmp_path / "nope.pt", arch="test_resnet")
    with pytest.raises(InputError, match="not a file"):
        ck.read_state_dict(tmp_path)


def test_unknown_arch_suggests_names():
    with pytest.raises(InputError, match="unknown timm model.*test_resnet"):
        ck.build_model("test_resnt", num_classes=10)
    with pytest.raises(InputError, match="not supported"):
        ck.build_model("hf-hub:timm/resnet18", num_classes=10)


def test_custom_arch_errors(tmp_path, custom_model_file):
    trusted = {"num_classes": 3, "trust_code": True}
    with pytest.raises(InputError, match="does not exist"):
        ck.build_model(f"{tmp_path}/missing.py:factory", **trusted)
    with pytest.raises(InputError, match="no callable 'nope'.*factory"):
        ck.build_model(f"{custom_model_file}:nope", **trusted)
    with pytest.raises(InputError, match="rejected its arguments"):
        ck.build_model(f"{custom_model_file}:factory", model_kwargs={"depth": 2}, **trusted)
    with pytest.raises(InputError, match="cannot import"):
        ck.build_model("no_such_pkg_xyz.mod:factory", **trusted)


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        ({"arch": "test_resnet", "num_classes": 5}, "wrong --num-classes.*10 outputs"),
        ({"arch": "test_resnet", "in_chans": 3}, "wrong --in-chans"),
        ({"arch": "test_efficientnet"}, "wrong --arch"),
        ({"arch": "test_resnet", "strip_prefix": ""}, "--strip-prefix module."),
    ],
)
def test_mismatch_names_the_cause(kwargs, cause, tmp_path, timm_model):
    p = tmp_path / "dp.pt"
    torch.save(_prefixed(timm_model.state_dict(), "module."), p)
    with pytest.raises(InputError, match=cause) as err:
        ck.load_model(p, **kwargs)
    msg = str(err.value)
    assert "does not fit model" in msg and "\n" not in msg
    assert len(msg) < 1200  # key lists are truncated


def test_wrong_arch_lists_keys(tmp_path, timm_model):
    p = tmp_path / "m.pt"
    torch.save(timm_model.state_dict(), p)
    with pytest.raises(InputError) as err:
        ck.load_model(p, arch="test_efficientnet")
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "more]" in msg


def test_nan_weights_rejected(tmp_path, timm_model):
    sd = timm_model.state_dict()
    sd["fc.weight"] = sd["fc.weight"].clone()
    sd["fc.weight"][0, 0] = float("nan")
    p = tmp_path / "nan.safetensors"
    save_file(sd, str(p))
    with pytest.raises(InputError, match="NaN/Inf.*fc.weight"):
        ck.load_model(p, arch="test_resnet")


def test_arch_required_when_not_recorded(tmp_path, timm_model):
    p = tmp_path / "bare.pt"
    torch.save(timm_model.state_dict(), p)
    with pytest.raises(InputError, match="pass --arch"):
        ck.load_model(p)
    with pytest.raises(InputError, match="no EMA weights"):
        ck.load_model(p, arch="test_resnet", ema=True)


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "odd.pt"
    torch.save({"hello": "world", "n": 3}, p)
    with pytest.raises(InputError, match="holds no state dict"):
        ck.read_state_dict(p)


def test_checkpoint_step_and_series_order(tmp_path, timm_model):
    sd = timm_model.state_dict()
    save_file(sd, str(tmp_path / "b.safetensors"), metadata={"step": "200"})
    torch.save({"state_dict": sd, "global_step": 50}, tmp_path / "a.ckpt")
    torch.save({"state_dict": sd, "epoch": 9}, tmp_path / "c.pth.tar")
    assert ck.checkpoint_step(tmp_path / "b.safetensors") == 200
    assert ck.checkpoint_step(tmp_path / "a.ckpt") == 50
    assert ck.checkpoint_step(tmp_path / "c.pth.tar") == 9
    order = ck.series_order([tmp_path])
    assert [p.name for p in order] == ["c.pth.tar", "a.ckpt", "b.safetensors"]
    assert [s for _, s in ck.series_steps([tmp_path])] == [9, 50, 200]
    # no recorded steps: numbers in file names, naturally ordered
    names = ["ep10.pt", "ep2.pt", "ep1.pt"]
    for n in names:
        torch.save(sd, tmp_path / n)
    assert ck.checkpoint_step(tmp_path / "ep2.pt") is None
    order = ck.series_order([tmp_path / n for n in names])
    assert [p.name for p in order] == ["ep1.pt", "ep2.pt", "ep10.pt"]
    with pytest.raises(InputError, match="no checkpoint files"):
        (tmp_path / "empty").mkdir()
        ck.series_order([tmp_path / "empty"])
    # one file without a recorded step, names only partly numbered: every step is a position
    mixed = [tmp_path / "b.safetensors", tmp_path / "ep10.pt", tmp_path / "a.ckpt"]
    assert [(p.name, s) for p, s in ck.series_steps(mixed)] == [
        ("a.ckpt", 0),
        ("b.safetensors", 1),
        ("ep10.pt", 2),
    ]


def test_partly_numbered_names_do_not_mix_numbers_and_positions(tmp_path, timm_model):
    sd = timm_model.state_dict()
    names = ["ep10.pt", "final.pt", "ep2.pt"]
    for i, n in enumerate(names):
        torch.save({k: v + i for k, v in sd.items()}, tmp_path / n)
    plan = ck.series_plan([tmp_path / n for n in names])
    assert [(p.name, s) for p, s in plan.steps] == [("ep2.pt", 0), ("ep10.pt", 1), ("final.pt", 2)]
    assert "final.pt" in plan.note and "positions" in plan.note


def test_aliases_of_a_step_are_skipped(tmp_path, timm_model):
    sd = timm_model.state_dict()
    for epoch in (1, 2):  # timm's train.py: checkpoint-N, last and model_best
        torch.save(
            {"state_dict": {k: v + epoch for k, v in sd.items()}, "epoch": epoch},
            tmp_path / f"checkpoint-{epoch}.pth.tar",
        )
    shutil.copy(tmp_path / "checkpoint-2.pth.tar", tmp_path / "last.pth.tar")
    shutil.copy(tmp_path / "checkpoint-1.pth.tar", tmp_path / "model_best.pth.tar")
    plan = ck.series_plan([tmp_path])
    assert [(p.name, s) for p, s in plan.steps] == [
        ("checkpoint-1.pth.tar", 1),
        ("checkpoint-2.pth.tar", 2),
    ]
    assert sorted((p.name, why) for p, why in plan.skipped) == [
        ("last.pth.tar", "an alias of step 2 (checkpoint-2.pth.tar)"),
        ("model_best.pth.tar", "an alias of step 1 (checkpoint-1.pth.tar)"),
    ]


def test_lightning_last_ckpt_alias_without_steps(tmp_path, timm_model):
    sd = timm_model.state_dict()
    for step in (5, 9):  # no recorded step: same bytes make last.ckpt an alias
        torch.save({k: v + step for k, v in sd.items()}, tmp_path / f"step={step}.ckpt")
    shutil.copy(tmp_path / "step=9.ckpt", tmp_path / "last.ckpt")
    plan = ck.series_plan([tmp_path])
    assert [(p.name, s) for p, s in plan.steps] == [("step=5.ckpt", 5), ("step=9.ckpt", 9)]
    assert [(p.name, why) for p, why in plan.skipped] == [
        ("last.ckpt", "an alias of step 9 (step=9.ckpt)")
    ]
    # a last.ckpt that is no copy is a checkpoint of its own
    torch.save({k: v + 20 for k, v in sd.items()}, tmp_path / "last.ckpt")
    plan = ck.series_plan([tmp_path])
    assert [p.name for p, _ in plan.steps] == ["step=5.ckpt", "step=9.ckpt", "last.ckpt"]
    assert plan.skipped == [] and "last.ckpt" in plan.note


def test_parse_model_kwargs():
    assert ck.parse_model_kwargs(["width=5", "act=relu", "drop=0.1", "flag=true"]) == {
        "width": 5,
        "act": "relu",
        "drop": 0.1,
        "flag": True,
    }
    with pytest.raises(InputError, match="key=value"):
        ck.parse_model_kwargs(["oops"])


def test_infer_num_classes():
    sd = {
        "features.0.weight": torch.zeros(8, 3, 3, 3),
        "fc.weight": torch.zeros(6, 8),
        "fc.bias": torch.zeros(6),
        "aux.weight": torch.zeros(2, 6),
    }
    assert ck.infer_num_classes(sd) == 6  # named like a head beats "last"
    assert ck.infer_num_classes({"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(5, 4)}) == 5
    assert ck.infer_num_classes({"conv.weight": torch.zeros(4, 3, 3, 3)}) is None
