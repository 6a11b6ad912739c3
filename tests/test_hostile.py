"""Hostile and malformed inputs: each is bad input (InputError: one line, exit 2), never
another exception; and a property test feeding random JSON and metadata to every parser of
untrusted input."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, make_timm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from infoprobe import allowlist, parsing
from infoprobe import checkpoints as ck
from infoprobe.checkpoints.meta import CHECKPOINT_META_KEYS, read_hf_config, record_meta
from infoprobe.data import load_data, read_class_map
from infoprobe.errors import InputError
from infoprobe.options import RunOptions

# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"seed": 2**70}, r"--seed \d+ \(seed\): must be <= 9223372036854775807"),
        ({"probes": 10_000_000}, r"--probes \d+ \(probes\): must be <= 4096"),
        ({"input_size": "1 100000 100000"}, "image sides are at most 8192"),
        ({"input_size": [5000, 16, 16]}, "channels at most 4096"),
        ({"valid_labels": [2**64]}, "class index 18446744073709551616 is outside"),
        ({"valid_labels": [-1]}, "class index -1 is outside"),
        ({"num_classes": 2**21}, r"--num-classes \d+ \(num_classes\): must be <= 1048576"),
    ],
)
def test_option_values_past_their_bounds_are_bad_input(options, words):
    with pytest.raises(InputError, match=words) as err:
        RunOptions.of("analyze", options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01\x02\xff\xfe binary", b"\x80\x04\x95 pickled \x00", "7\n99999999999999999999999\n"],
    ids=["binary", "pickle", "past-int64"],
)
def test_label_lists_that_are_no_text_or_past_int64_are_bad_input(tmp_path, content):
    p = tmp_path / "labels.txt"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match="--valid-labels"):
        parsing.read_valid_labels(p)


class _Marker:
    """Unpickling it creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("read", [parsing.read_class_map, read_class_map])
def test_class_maps_are_text_never_pickles(tmp_path, read):
    marker = tmp_path / "unpickled"
    for name, protocol in (("map.pkl", 0), ("map.pickle", 4)):  # protocol 0 is ASCII text
        p = tmp_path / name
        p.write_bytes(pickle.dumps(_Marker(marker), protocol=protocol))
        with pytest.raises(InputError, match="give a .txt file"):
            read(p)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"cat\x00dog\n")
    with pytest.raises(InputError, match="binary"):
        read(binary)
    assert not marker.exists()
    (tmp_path / "ok.txt").write_text("dog\ncat\n")
    assert read(tmp_path / "ok.txt") == {"dog": 0, "cat": 1}


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    rng = random.Random(seed)
    p = tmp_path / "garbage.pt"
    lead = rng.choice([b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04"])
    p.write_bytes(lead + bytes(rng.getrandbits(8) for _ in range(2000)))
    with pytest.raises(InputError) as err:
        ck.load_model(p, arch="test_resnet")
    message = str(err.value)
    assert "not a checkpoint" in message and "--trust-checkpoint" not in message


# A factory whose first layer ('stem') sorts after a later one ('body'): safetensors stores
# keys sorted by name, so the first 4-D weight of the file is not the first layer's.
STEM_SRC = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=3, in_chans=3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def factory(**kwargs):
    return Net(**kwargs)
"""


def test_a_factory_takes_in_chans_from_its_first_layer_not_the_file_order(tmp_path):
    (tmp_path / "net.py").write_text(STEM_SRC)
    arch = f"{tmp_path / 'net.py'}:factory"
    ref = ck.build_model(arch, num_classes=3, in_chans=2, trust_code=True).eval()
    p = tmp_path / "net.safetensors"
    save_file(ref.state_dict(), str(p))
    loaded = ck.load_model(p, arch=arch, trust_code=True)
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ref(x))


# ----------------------------------------------------------------------------- images


def test_a_symlink_loop_in_an_image_folder_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    model = make_timm("test_resnet", num_classes=2, in_chans=3)
    assert len(load_data(root, model=model, input_size=16, cache=None)) == 6
    os.symlink(root, root / "a" / "loop")
    with pytest.raises(InputError, match="reached through a symbolic link") as err:
        load_data(root, model=model, input_size=16, cache=None)
    assert "\n" not in str(err.value)


def test_a_resize_past_the_largest_side_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    with pytest.raises(InputError, match="resizes images to 32768 pixels a side"):
        load_data(root, input_size=(3, 8192, 8192), crop_pct=0.25, cache=None)


@pytest.mark.slow
def test_a_corrupt_image_with_workers_is_one_error_and_no_worker_traceback(tmp_path, capfd):
    import multiprocessing

    from infoprobe.probe import evaluate

    root = make_image_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    (root / "a" / "3.png").write_bytes(b"not an image" * 10)
    model = make_timm("test_resnet", num_classes=2, in_chans=3)
    for _ in range(3):  # one data stream per checkpoint: each forks new workers
        stream = load_data(root, model=model, input_size=16, workers=2, stream_above=0, cache=None)
        try:
            evaluate(model, stream, device="cpu", batch_size=4)
        except InputError as e:
            assert "cannot decode image" in str(e) and "\n" not in str(e)
            cycle = [e]  # a caller may keep the error in garbage that only gc frees,
            cycle.append(cycle)  # which may run in the next loader's forked workers
        else:
            pytest.fail("a corrupt image must fail the pass")
        # the failed loader's workers are shut down already, not left to that collection
        assert multiprocessing.active_children() == []
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


# ----------------------------------------------------------------------------- property

_KEYS = st.sampled_from(
    sorted(
        {*allowlist.ALLOWED_KWARGS, *allowlist.FORBIDDEN_KWARGS, *allowlist.ALLOWED_DATA_CFG}
        | {*CHECKPOINT_META_KEYS, "architecture", "pretrained_cfg", "model_args", "args"}
        | {"hyper_parameters", "global_step", "model", "backbone", "model_name", ""}
    )
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, 1, -1, 2**20, 2**63, 2**64, 10**30])
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["test_resnet", "resnet18", "model.py:factory", "os:system", "1e309"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.text(), inner, max_size=5)
    ),
    max_leaves=8,
)
_OBJECTS = st.dictionaries(_KEYS, _JSON, max_size=6)
_PATH = Path("hostile.safetensors")


def _bad_input_or_success(call, *args, **kwargs):
    """Run ``call``: it returns, or raises InputError with a one-line message; any other
    exception fails the test (hypothesis then shows the input)."""
    try:
        call(*args, **kwargs)
    except InputError as e:
        assert "\n" not in str(e)


def _as_metadata(obj: dict) -> dict[str, str]:
    """Safetensors metadata: strings only, JSON text for what is not a string."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(meta=_OBJECTS, top=_OBJECTS, inner=_OBJECTS)
def test_random_checkpoint_metadata_is_parsed_or_bad_input(meta, top, inner):
    _bad_input_or_success(record_meta, {}, _as_metadata(meta), _PATH)
    obj = {**top, "args": argparse.Namespace(**inner), "hyper_parameters": inner}
    _bad_input_or_success(record_meta, obj, _as_metadata(meta), _PATH)
    for parse in (allowlist.recorded_model_kwargs, allowlist.typed_model_kwargs):
        _bad_input_or_success(parse, top, "test")
    _bad_input_or_success(allowlist.recorded_data_cfg, top, "test")


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(meta=_OBJECTS)
def test_random_metadata_of_a_real_checkpoint_loads_or_is_bad_input(tmp_path, meta):
    p = tmp_path / "w.safetensors"
    save_file(_SD, str(p), metadata=_as_metadata(meta))
    _bad_input_or_success(ck.load_model, p)
    _bad_input_or_success(ck.load_model, p, arch="test_resnet")


_SD = make_timm().state_dict()


@pytest.mark.slow
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    config=_JSON | _OBJECTS,
    cfg=_OBJECTS,
    args=_OBJECTS,
    arch=st.sampled_from(["test_resnet", "resnet18", "model.py:factory", "x" * 300, 3, None]),
)
def test_random_config_json_is_parsed_or_bad_input(tmp_path, config, cfg, args, arch):
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    _bad_input_or_success(read_hf_config, folder)
    shaped = {"architecture": arch, "num_classes": 10, "pretrained_cfg": cfg, "model_args": args}
    (folder / "config.json").write_text(json.dumps(shaped))
    _bad_input_or_success(read_hf_config, folder)


_TEXT_FILES = st.one_of(
    st.binary(max_size=64),
    st.lists(st.text(max_size=12) | st.integers().map(str), max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
)


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=_TEXT_FILES, value=_JSON, pairs=st.lists(st.text(max_size=10), max_size=4))
def test_random_class_maps_label_lists_and_values_are_parsed_or_bad_input(
    tmp_path, content, value, pairs
):
    p = tmp_path / "list.txt"
    p.write_bytes(content)
    _bad_input_or_success(parsing.read_class_map, p)
    _bad_input_or_success(read_class_map, p)
    _bad_input_or_success(parsing.read_valid_labels, p)
    for parse in (parsing.valid_labels, parsing.input_size, parsing.floats, parsing.ratios):
        if not isinstance(value, str):  # a string is a path for valid_labels
            _bad_input_or_success(parse, value, "--flag")
    _bad_input_or_success(parsing.model_kwargs, pairs, "--model-kwargs")
    _bad_input_or_success(parsing.model_kwargs, value, "--model-kwargs")
