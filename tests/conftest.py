"""Small real models and data built in tmp_path (nothing is downloaded)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

N_CLASSES = 10
IN_CHANS = 1
SIZE = 16

CUSTOM_MODEL_SRC = """
import torch.nn as nn


def factory(num_classes=10, in_chans=1, width=8):
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 12), nn.ReLU(), nn.Linear(12, num_classes),
    )
"""


def randomize_buffers(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give BatchNorm non-default running stats, so a load that skips buffers shows up."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def make_timm(
    name: str = "test_resnet",
    num_classes: int = N_CLASSES,
    in_chans: int = IN_CHANS,
    seed: int = 0,
    **kwargs,
) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    return randomize_buffers(model, seed + 1).eval()


def make_inputs(
    n: int = 24,
    seed: int = 0,
    chans: int = IN_CHANS,
    size: int = SIZE,
    num_classes: int = N_CLASSES,
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, chans, size, size, generator=gen)
    y = torch.arange(n) % num_classes
    return x, y


def write_tensors(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(path))
    return path


def write_custom_model(directory: Path, name: str = "model.py") -> Path:
    path = directory / name
    path.write_text(CUSTOM_MODEL_SRC)
    return path


def make_image_folder(
    root: Path, counts: dict[str, int], size: tuple[int, int] = (20, 24), seed: int = 0
) -> Path:
    """One subfolder of random RGB PNGs per class."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    for cls, k in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(k):
            arr = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(arr.numpy()).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def timm_model() -> nn.Module:
    return make_timm()


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return make_inputs()


@pytest.fixture
def data_file(tmp_path, inputs) -> Path:
    return write_tensors(tmp_path / "data.safetensors", *inputs)


@pytest.fixture
def custom_model_file(tmp_path) -> Path:
    return write_custom_model(tmp_path)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    # torch.jit deprecation notices are not what the tests check; UserWarnings stay visible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture
def evaluate_calls():
    """``evaluate_calls(monkeypatch)`` wraps probe.evaluate and returns the list that
    receives the model of every call (to count passes and check the model object)."""
    from infoprobe import probe

    def install(monkeypatch) -> list[nn.Module]:
        seen: list[nn.Module] = []
        real = probe.evaluate

        def spy(model, *args, **kwargs):
            seen.append(model)
            return real(model, *args, **kwargs)

        monkeypatch.setattr(probe, "evaluate", spy)
        return seen

    return install


# A model file that leaves a marker when imported: proof that code ran.
EVIL_SRC = (
    CUSTOM_MODEL_SRC
    + """
import pathlib
pathlib.Path(__file__).with_suffix(".ran").write_text("ran")
"""
)


def evil_model_file(directory, name="model.py"):
    """A custom model file in ``directory`` that writes ``NAME.ran`` beside itself when
    imported."""
    path = directory / name
    path.write_text(EVIL_SRC)
    return path
