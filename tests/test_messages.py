"""Errors a timm user meets, each as one line with its exit code: ViT input sizes (a
position embedding of another length, a fixed-size ViT fed another size), --debug, and an
image that fails to decode in a DataLoader worker."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import make_image_folder, make_inputs, write_tensors
from safetensors.torch import save_file
from typer.testing import CliRunner

from infoprobe import cli, probe
from infoprobe.errors import InputError, RunFailure

runner = CliRunner()


def run(*args: object, code: int):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def error_line(result) -> str:
    """The one 'infoprobe: error:' line; no traceback anywhere."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("infoprobe: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return errors[0]


def vit(tmp_path, kwargs: dict, recorded: dict):
    """A one-block ViT trained at 32x32, saved with ``recorded`` as its model_kwargs."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, depth=1, **kwargs)
    path = tmp_path / "vit.safetensors"
    save_file(
        model.state_dict(),
        str(path),
        metadata={
            "arch": "vit_tiny_patch16_224",
            "num_classes": "10",
            "in_chans": "1",
            "model_kwargs": json.dumps(recorded),
        },
    )
    return path


@pytest.fixture
def data16(tmp_path):
    return write_tensors(tmp_path / "x16.safetensors", *make_inputs(20, size=16))


def test_pos_embed_mismatch_is_an_input_size_problem(tmp_path, data16):
    path = vit(tmp_path, {"img_size": 32}, {"depth": 1})  # built at 224 when loaded
    line = error_line(run("analyze", path, "--data", data16, code=2))
    assert "input size" in line and "pos_embed" in line
    assert "--model-kwargs img_size=32 dynamic_img_size=true" in line
    assert "in-chans" not in line
    # the hint works
    run(
        "analyze",
        path,
        "--data",
        data16,
        "--model-kwargs",
        "img_size=32",
        "dynamic_img_size=true",
        code=0,
    )


def test_fixed_size_vit_at_another_input_size_exits_2(tmp_path, data16):
    path = vit(tmp_path, {"img_size": 32}, {"depth": 1, "img_size": 32})
    line = error_line(run("analyze", path, "--data", data16, code=2))
    assert "takes 32x32 images only and got 16x16" in line
    assert "--model-kwargs dynamic_img_size=true" in line
    run("analyze", path, "--data", data16, "--model-kwargs", "dynamic_img_size=true", code=0)


@pytest.mark.parametrize(
    ("error", "code"),
    [(InputError("bad labels"), 2), (RunFailure("out of memory"), 1), (ValueError("a bug"), 1)],
)
def test_debug_never_changes_the_exit_code(monkeypatch, data16, tmp_path, error, code):
    path = vit(tmp_path, {"img_size": 16}, {"depth": 1, "img_size": 16})

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(probe, "evaluate", fail)
    plain = run("analyze", path, "--data", data16, code=code)
    assert str(error) in error_line(plain)
    debug = run("analyze", path, "--data", data16, "--debug", code=code)
    assert "Traceback" in debug.stderr and str(error) in debug.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_fails_to_decode_is_one_line(tmp_path, workers):
    folder = make_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=(16, 16))
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    path = vit(tmp_path, {"img_size": 16}, {"depth": 1, "img_size": 16})
    result = run("analyze", path, "--data", folder, "-j", workers, code=2)
    line = error_line(result)
    assert line == (
        f"infoprobe: error: cannot decode image {folder / 'b' / 'broken.png'} "
        "(cannot identify image file); remove or replace it"
    )
    assert "Skipped sample" not in result.stderr and "Original" not in result.stderr
