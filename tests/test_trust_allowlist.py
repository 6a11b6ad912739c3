"""The allowlist pinned: every entry, its kind and its bounds, each bound enforced; what no
one may pass; and the gates around it (no skipping it with --trust-checkpoint for a timm
architecture)."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from conftest import make_timm
from safetensors.torch import save_file

from infoprobe import allowlist
from infoprobe import checkpoints as ck
from infoprobe.errors import InputError

# The reviewed contract: a new entry, a widened bound or another kind must change this too.
RATE, SIZE, WIDTH = ("float", 0.0, 1.0), ("ints", 1, 8192), ("ints", 1, 65536)
MODEL_KWARGS = {
    **dict.fromkeys(
        ["drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate"]
        + ["patch_drop_rate", "drop_block_rate"],
        RATE,
    ),
    "img_size": SIZE,
    "patch_size": ("ints", 1, 1024),
    "window_size": ("ints", 1, 1024),
    "output_stride": ("int", 1, 64),
    **dict.fromkeys(
        ["embed_dim", "embed_dims", "dims", "channels", "widths", "stem_width"]
        + ["num_features", "head_hidden_size", "hidden_size", "base_width"],
        WIDTH,
    ),
    **dict.fromkeys(["depth", "depths", "layers"], ("ints", 0, 1024)),
    "num_heads": ("ints", 1, 1024),
    "cardinality": ("int", 1, 65536),
    "reg_tokens": ("int", 0, 1024),
    "num_reg_tokens": ("int", 0, 1024),
    "mlp_ratio": ("floats", 0.0, 64.0),
    "mlp_ratios": ("floats", 0.0, 64.0),
    **dict.fromkeys(
        ["width_multiplier", "channel_multiplier", "depth_multiplier"], ("float", 0.0, 64.0)
    ),
    "init_values": ("float", 0.0, 1000.0),
    **dict.fromkeys(
        ["class_token", "no_embed_class", "qkv_bias", "qk_norm", "pre_norm", "fc_norm"]
        + ["dynamic_img_size", "dynamic_img_pad", "zero_init_last", "avg_down"],
        ("bool", 0, 0),
    ),
    **dict.fromkeys(
        ["global_pool", "stem_type", "act_layer", "norm_layer", "block_type", "pos_embed"],
        ("name", 0, 0),
    ),
}
DATA_CFG = {
    **dict.fromkeys(["input_size", "test_input_size", "min_input_size"], ("image size", 1, 8192)),
    "fixed_input_size": ("bool", 0, 0),
    "interpolation": ("interpolation", 0, 0),
    "mean": ("floats", -1e6, 1e6),
    "std": ("positives", 0.0, 1e6),
    "crop_pct": ("above", 0.0, 1.0),
    "test_crop_pct": ("above", 0.0, 1.0),
    "crop_mode": ("crop mode", 0, 0),
}
FORBIDDEN = {
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
    "pretrained_strict",
    "file",
    "url",
    "hf_hub_id",
}


def test_the_allowlists_are_exactly_the_reviewed_ones():
    assert allowlist.ALLOWED_KWARGS == MODEL_KWARGS
    assert allowlist.ALLOWED_DATA_CFG == DATA_CFG
    assert allowlist.FORBIDDEN_KWARGS == FORBIDDEN
    assert (allowlist.MAX_CLASSES, allowlist.MAX_IN_CHANS) == (1 << 20, 4096)


def _values(kind, low, high):
    """(accepted, refused) values of one entry, from its kind and bounds alone."""
    if kind == "bool":
        return [True, False, None], [0, 1, "true", [True]]
    if kind == "name":
        return ["avg", "a-b_9", ""], ["a.b", "../x", "a/b", 3, "x" * 65, None]
    if kind in ("int", "ints"):
        ok, bad = [low, high], [low - 1, high + 1, True, float(low), str(low), None]
    else:
        mid = (low + high) / 2
        ok = [low, high, mid, int(high)]
        bad = [low - 1e-6, high + 1e-6, math.nan, math.inf, True, str(mid), None]
    if kind in ("ints", "floats"):
        ok += [[low] * 64, [low, high]]
        bad += [[], [low] * 65, [high + 1], [[low]], [True], (low, "x")]
    else:
        bad += [[low]]
    return ok, bad


ENTRIES = sorted(MODEL_KWARGS.items())


@pytest.mark.parametrize(("key", "spec"), ENTRIES, ids=[k for k, _ in ENTRIES])
@pytest.mark.parametrize("check", [allowlist.recorded_model_kwargs, allowlist.typed_model_kwargs])
def test_every_model_argument_is_held_to_its_kind_and_bounds(check, key, spec):
    accepted, refused = _values(*spec)
    for value in accepted:
        got = check({key: value}, "here")[key]
        assert got == (list(value) if isinstance(value, tuple) else value)
    for value in refused:
        with pytest.raises(InputError, match=f"here: model argument {key} must be"):
            check({key: value}, "here")


def test_an_argument_off_the_list_is_refused_by_name():
    with pytest.raises(InputError, match="model argument 'zero_init' is not one infoprobe takes"):
        allowlist.recorded_model_kwargs({"zero_init": True}, "here")
    with pytest.raises(InputError, match="'features_only' is not one infoprobe passes"):
        allowlist.typed_model_kwargs({"features_only": True}, "here")


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_arguments_that_open_files_are_refused_as_such_from_anyone(tmp_path, key):
    words = f"model argument {key} is not accepted: it makes timm open or download"
    for check in (allowlist.recorded_model_kwargs, allowlist.typed_model_kwargs):
        with pytest.raises(InputError, match=words):
            check({key: "x"}, "here")
    factory = tmp_path / "f.py"
    factory.write_text("import torch\ndef factory(**kw):\n    return torch.nn.Linear(1, 1)\n")
    with pytest.raises(InputError, match=words):  # a custom factory takes other arguments
        ck.build_model(
            f"{factory}:factory", num_classes=1, model_kwargs={key: "x"}, trust_code=True
        )


@pytest.mark.parametrize("value", [0, "0", -1, 0.0, False, True, 1.5, "1e3", (1 << 20) + 1])
def test_a_class_count_below_one_or_past_the_cap_is_refused(value):
    with pytest.raises(InputError, match=r"num_classes must be an integer in \[1, 1048576\]"):
        allowlist.recorded_count("num_classes", value, "here")
    assert allowlist.recorded_count("num_classes", "7", "here") == 7
    assert allowlist.recorded_count("num_classes", 1 << 20, "here") == 1 << 20


@pytest.fixture
def create_model_calls(monkeypatch):
    calls = []
    real = timm.create_model
    monkeypatch.setattr(
        timm, "create_model", lambda name, **kw: calls.append(kw) or real(name, **kw)
    )
    return calls


@pytest.mark.parametrize("recorded", [{"drop_rate": 5.0}, {"features_only": True}])
def test_trusting_a_checkpoint_never_lets_its_arguments_skip_the_allowlist(
    tmp_path, create_model_calls, recorded
):
    p = tmp_path / "w.safetensors"
    meta = {"arch": "test_resnet", "model_kwargs": json.dumps(recorded)}
    save_file(make_timm().state_dict(), str(p), metadata=meta)
    create_model_calls.clear()
    for flags in ({}, {"trust_checkpoint": True}, {"trust_checkpoint": True, "trust_code": True}):
        with pytest.raises(InputError, match="model argument") as err:
            ck.load_model(p, **flags)
        assert f"checkpoint {p} model_kwargs" in str(err.value)  # the checkpoint's own check
    assert create_model_calls == []


def test_a_recorded_class_count_of_zero_is_refused(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file(
        make_timm().state_dict(), str(p), metadata={"arch": "test_resnet", "num_classes": "0"}
    )
    with pytest.raises(InputError, match=r"num_classes must be an integer in \[1, "):
        ck.load_model(p)
    torch.save({"state_dict": make_timm().state_dict(), "num_classes": 0}, tmp_path / "w.pth")
    with pytest.raises(InputError, match=r"num_classes must be an integer in \[1, "):
        ck.load_model(tmp_path / "w.pth", arch="test_resnet")
