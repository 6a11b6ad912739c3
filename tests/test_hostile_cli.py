"""The trust gate and hostile inputs through the command line and the API: bad input is
one 'infoprobe: error:' line and exit 2, never exit 1 or a traceback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CUSTOM_MODEL_SRC, make_image_folder, make_timm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_cli import DATA, FAST, A, one_line_error, run, runner

from infoprobe import api, cli, versions
from infoprobe.errors import InputError


class _Marker:
    """Unpickling it creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad(*args, words=()):
    """Exit 2 and one error line, last, naming ``words``; the lines before it (if any) are
    the progress of the checkpoints (``[k/n] path``); no traceback."""
    result = run(*args, code=2)
    *before, last = result.stderr.strip().splitlines()
    assert last.startswith("infoprobe: error: ") and all(line.startswith("[") for line in before), (
        result.stderr
    )
    assert all(word in last for word in words), (words, last)
    assert "Traceback" not in result.stdout + result.stderr
    return last


# ----------------------------------------------------------------------------- code


def test_a_library_file_or_module_as_factory_is_refused(tmp_path):
    marker = tmp_path / "ran"
    cmd = ["--model-kwargs", f"cmd=touch {marker}"]
    arch = f"{subprocess.__file__}:getoutput"
    _bad("analyze", A, *FAST, "--arch", arch, *cmd, words=["--trust-code"])
    _bad("analyze", A, *FAST, "--arch", arch, *cmd, "--trust-code", words=["Python installation"])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Marker(marker)))
    pickled = ["--model-kwargs", f"filepath_or_buffer={evil}"]
    _bad("analyze", A, *FAST, "--arch", "pandas:read_pickle", *pickled, words=["--trust-code"])
    assert not marker.exists()


def test_typed_arguments_of_a_timm_model_pass_the_allowlist():
    args = ("--arch", "test_resnet", "--model-kwargs", "features_only=true")
    _bad("analyze", A, *FAST, *args, words=["'features_only' is not one infoprobe passes"])


def test_a_custom_factory_runs_with_trust_code(tmp_path):
    model_file = tmp_path / "model.py"
    model_file.write_text(CUSTOM_MODEL_SRC)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(CUSTOM_MODEL_SRC, namespace)
    p = tmp_path / "custom.safetensors"
    model = namespace["factory"](num_classes=10, in_chans=1)
    save_file(model.state_dict(), str(p))
    arch = f"{model_file}:factory"
    _bad("analyze", p, *FAST, "--arch", arch, words=["--trust-code"])
    csv = tmp_path / "rows.csv"
    run("analyze", p, *FAST, "--arch", arch, "--trust-code", "--csv", csv)
    assert pd.read_csv(csv)["model"].tolist() == [arch]


def test_a_recorded_module_never_comes_from_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "models.py").write_text(
        CUSTOM_MODEL_SRC + "\nimport pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n"
    )
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))  # as under python -m and torchrun -m
    monkeypatch.delitem(sys.modules, "models", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = run_dir / "w.safetensors"
    save_file(make_timm().state_dict(), str(p), metadata={"arch": "models:factory"})
    trusted = ("--trust-checkpoint", "--trust-code")
    result = run("analyze", p, *FAST, *trusted, code=2)
    assert "models.py does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (cwd / "models.ran").exists()


@pytest.mark.parametrize("flag", ["trust_checkpoint", "trust_code"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1])
def test_api_trust_flags_take_only_true_or_false(tmp_path, timm_model, flag, value):
    marker = tmp_path / "unpickled"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": timm_model.state_dict(), "x": _Marker(marker)}, p)
    with pytest.raises(InputError, match=rf"\({flag}\): give True or False"):
        api.analyze([p], data=str(DATA), arch="test_resnet", **{flag: value})
    assert not marker.exists()


def test_unsafe_dependencies_refuse_to_run(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda p: "2.5.1" if p == "torch" else "1.0.31")
    result = run("analyze", A, *FAST, code=1)
    one_line_error(result, "torch 2.5.1 is installed", "CVE-2025-32434")
    with pytest.raises(versions.UnsafeDependency, match="CVE-2025-32434"):
        api.analyze([A], data=str(DATA))


# ----------------------------------------------------------------------------- memory


def test_a_tiny_checkpoint_naming_a_huge_model_is_bad_input(tmp_path):
    p = tmp_path / "tiny.safetensors"
    save_file(
        {"x": torch.zeros(1)}, str(p), metadata={"arch": "resnet18", "num_classes": "1048576"}
    )
    _bad("analyze", p, *FAST, words=["does not fit model 'resnet18'"])
    _bad("analyze", A, *FAST, "--model-kwargs", "num_classes=100000000", words=["[1, 1048576]"])


@pytest.mark.parametrize(
    "entry",
    [{"input_size": [1, 40000, 40000]}, {"mean": "0.5"}, {"crop_mode": "bogus"}],
    ids=["input_size", "mean", "crop_mode"],
)
def test_a_config_json_data_config_out_of_bounds_is_bad_input(tmp_path, entry):
    from timm.models import save_for_hf

    folder = tmp_path / "hf"
    save_for_hf(make_timm(), str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(entry)
    (folder / "config.json").write_text(json.dumps(config))
    _bad("analyze", folder, *FAST, words=[f"pretrained_cfg: {next(iter(entry))} must be"])
    (folder / "config.json").write_text('{"architecture": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _bad("analyze", folder, *FAST, words=["not a timm model config"])


@pytest.mark.parametrize("dtype", ["U3", "datetime64[D]", "longdouble"])
def test_an_npz_of_no_tensor_dtype_is_bad_input(tmp_path, dtype):
    p = tmp_path / "odd.npz"
    y = np.zeros(4, dtype=dtype) if dtype != "U3" else np.array(["a", "b", "c", "d"])
    np.savez(p, x=np.zeros((4, 1, 8, 8), dtype=np.float32), y=y)
    _bad("analyze", A, "--data", p, "--device", "cpu", words=["not a tensor dtype"])


# ----------------------------------------------------------------------------- other input


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seed", str(2**70)], "--seed"),
        (["--probes", "10000000"], "--probes"),
        (["--input-size", "1", "100000", "100000"], "--input-size"),
    ],
)
def test_option_values_past_their_bounds_are_bad_input(args, words):
    _bad("analyze", A, *FAST, *args, words=[words])


@pytest.mark.parametrize("content", [b"\x00\x01\xfe\xff", "1\n" + "9" * 30 + "\n"])
def test_bad_label_lists_are_bad_input(tmp_path, content):
    p = tmp_path / "labels.txt"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    _bad("analyze", A, *FAST, "--valid-labels", p, words=["--valid-labels"])


def test_a_binary_class_map_is_bad_input(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    p = tmp_path / "map.txt"
    p.write_bytes(b"a\x00b\n")
    _bad("analyze", A, "--data", root, "--class-map", p, "--device", "cpu", words=["--class-map"])


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    last = _bad("analyze", p, *FAST, "--arch", "test_resnet", words=["not a checkpoint"])
    assert "--trust-checkpoint" not in last


def test_a_symlink_loop_in_an_image_folder_is_bad_input(tmp_path):
    model = make_timm("test_resnet", num_classes=2, in_chans=3)
    p = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(p), metadata={"arch": "test_resnet"})
    root = make_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    os.symlink(root, root / "b" / "again")
    args = ("--data", root, "--input-size", "16", "--device", "cpu")
    _bad("analyze", p, *args, words=["reached through a symbolic link"])


# ----------------------------------------------------------------------------- CSV


def test_names_that_start_a_formula_are_text_in_the_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "=1+1.safetensors"
    (tmp_path / name).write_bytes(A.read_bytes())
    csv = tmp_path / "rows.csv"
    run("analyze", name, *FAST, "--csv", csv)
    cells = pd.read_csv(csv, dtype=str)["checkpoint"].tolist()
    assert cells == ["'" + name]
    run("analyze", name, *FAST, "--csv", csv, "--resume")  # read back as the same name
    assert pd.read_csv(csv, dtype=str)["checkpoint"].tolist() == cells


# ----------------------------------------------------------------------------- property

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_KEYS = st.sampled_from(["arch", "num_classes", "in_chans", "model_kwargs", "step", "epoch", "x"])
_SD = make_timm().state_dict()


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(meta=st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_random_checkpoint_metadata_exits_0_or_2(tmp_path, meta):
    p = tmp_path / "w.safetensors"
    texts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    save_file(_SD, str(p), metadata=texts)
    for extra in ([], ["--arch", "test_resnet"]):
        args = ["analyze", str(p), *FAST, *extra]
        result = runner.invoke(cli.app, args)
        assert result.exit_code in (0, 2), (meta, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
