"""The evaluation transform of image data: timm's, resolved from the model and the options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from infoprobe.errors import InputError


def model_in_chans(model: nn.Module | None) -> int | None:
    """Input channels of ``model``: timm's recorded first conv, else the first conv layer."""
    if model is None:
        return None
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(first, str):
        try:
            return int(model.get_submodule(first).in_channels)
        except AttributeError:
            pass
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
    return None


def _fit_channels(values: Sequence[float], chans: int, flag: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    if len(values) == 1:
        return values * chans
    if chans == 1:  # a grey model with an RGB default: use the mean of the channel stats
        return (sum(values) / len(values),)
    raise InputError(f"{flag} has {len(values)} values; the model takes {chans} channels")


def resolve_transform_config(
    model: nn.Module | None = None,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> dict[str, Any]:
    """timm's eval data config for ``model`` (``pretrained_cfg``, first conv's channels) with
    the overrides applied: keys input_size (C, H, W), interpolation, mean, std, crop_pct,
    crop_mode. ``input_size`` may be S, (H, W) or (C, H, W). As timm's ``validate.py`` does,
    the pretrained config's test size and test crop (``test_input_size``,
    ``test_crop_pct``) win over the train-time ones (``use_test_size=True``)."""
    from timm.data import resolve_data_config

    chans = model_in_chans(model)
    if input_size is not None:
        size = (input_size,) * 2 if isinstance(input_size, int) else tuple(input_size)
        if len(size) == 2:
            size = (chans or 3, *size)
        if len(size) != 3 or min(size) < 1:
            raise InputError(f"--input-size {input_size}: give S, H W or C H W (positive)")
        input_size = tuple(int(s) for s in size)
    args = {
        "input_size": input_size,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "mean": None,
        "std": None,
    }  # always truthy, so model=None works
    cfg = resolve_data_config(args=args, model=model, use_test_size=True)
    c = input_size[0] if input_size else (chans or cfg["input_size"][0])
    cfg["input_size"] = (c, *cfg["input_size"][1:])
    cfg["mean"] = _fit_channels(mean if mean is not None else cfg["mean"], c, "--mean")
    cfg["std"] = _fit_channels(std if std is not None else cfg["std"], c, "--std")
    if min(cfg["std"]) <= 0:
        raise InputError(f"--std {cfg['std']}: values must be positive")
    if not 0 < float(cfg["crop_pct"]) <= 1:
        raise InputError(f"--crop-pct {cfg['crop_pct']}: must be in (0, 1]")
    return cfg


def transform_record(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a transform config that decide the pixels, as plain JSON values:
    input_size [C, H, W], crop_pct, crop_mode, interpolation, mean [C], std [C]."""
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "crop_pct": float(cfg["crop_pct"]),
        "crop_mode": cfg.get("crop_mode") or "center",
        "interpolation": str(cfg["interpolation"]),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
    }


#: How far past the normalised range of [0, 1] pixels a float input may reach before
#: infoprobe says the data look unnormalised (raw 0..255 floats reach about 100 times it).
RANGE_FACTOR = 8.0


def tensor_transform(
    inputs: Tensor,
    model: nn.Module | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Tensor, dict[str, Any] | None]:
    """Tensor inputs as the model takes them, and the record of what was done (None: as
    stored).

    uint8 inputs are images, [n, C, H, W] or [n, H, W]: scaled as timm scales decoded images,
    x / 255, then ``(x - mean) / std`` per channel with the model's mean and std (timm's eval
    config; ``mean``/``std`` override them). Float inputs pass as stored unless ``mean`` or
    ``std`` is given, then ``(x - mean) / std`` per channel (dim 1). int32/int64 inputs are
    token ids and pass as stored. The record is ``{"kind": "tensor", "scale", "mean", "std"}``.
    """
    if inputs.dtype in (torch.int32, torch.int64):
        if mean is not None or std is not None:
            raise InputError("--mean/--std apply to images and float inputs; these are token ids")
        return inputs, None
    scale = 1.0
    if inputs.dtype == torch.uint8:
        if inputs.ndim not in (3, 4):
            raise InputError(
                f"uint8 inputs of shape {tuple(inputs.shape)}: uint8 means images, [n, C, H, W] "
                "or [n, H, W]; store other inputs as float"
            )
        inputs, scale = (inputs[:, None] if inputs.ndim == 3 else inputs), 1.0 / 255.0
    elif mean is None and std is None:
        return inputs, None
    if inputs.ndim < 2:
        raise InputError("--mean/--std need inputs with a channel axis ([n, C, ...])")
    chans = int(inputs.shape[1])
    size = (chans, *(int(s) for s in inputs.shape[2:4]))
    cfg = resolve_transform_config(
        model, input_size=size if len(size) == 3 else None, mean=mean, std=std
    )
    m = torch.tensor(_fit_channels(cfg["mean"], chans, "--mean"))
    s = torch.tensor(_fit_channels(cfg["std"], chans, "--std"))
    shape = (1, chans, *([1] * (inputs.ndim - 2)))
    out = (inputs.float() * scale - m.view(shape)) / s.view(shape)
    record = {"kind": "tensor", "scale": scale, "mean": m.tolist(), "std": s.tolist()}
    return out, record


def looks_unnormalised(inputs: Tensor, model: nn.Module | None) -> tuple[float, float] | None:
    """``(min, max)`` of float image inputs [n, C, H, W] that reach far past the range that
    [0, 1] pixels take after the model's normalisation (see :data:`RANGE_FACTOR`); None when
    they do not, or are not float images."""
    if not inputs.is_floating_point() or inputs.ndim != 4:
        return None
    cfg = resolve_transform_config(model, input_size=tuple(inputs.shape[1:]))
    bound = max(
        max(abs((0 - m) / s), abs((1 - m) / s))
        for m, s in zip(cfg["mean"], cfg["std"], strict=True)
    )
    low, high = float(inputs.min()), float(inputs.max())
    return (low, high) if max(abs(low), abs(high)) > RANGE_FACTOR * bound else None
