"""Datasets as labelled tensors, and the in-memory cache of decoded inputs.

A data spec is a path:

- a tensor file (``.safetensors``, ``.pt``/``.pth``, ``.npz``) holding inputs ``x`` (aliases
  ``inputs``/``images``/``data``) and integer labels ``y`` (``labels``/``targets``); the
  inputs are fed to the model as they are (int32/int64 token ids kept, others cast to
  float32);
- a folder with one subfolder per class (optionally under a split folder such as ``val/``),
  or a torchvision CIFAR-10/100 folder already on disk (``cifar-10-batches-py`` /
  ``cifar-100-python`` or its parent). Images go through timm's dataset factory and timm's
  eval transform resolved from the model, overridable by ``input_size``, ``mean``, ``std``,
  ``crop_pct``, ``interpolation``. Nothing is ever downloaded.

``max_samples`` takes a seeded, class-stratified subsample. Tensor files are held in memory
(:class:`LabelledTensors`). Image data whose decoded float32 inputs fit ``stream_above`` bytes
(default :data:`STREAM_ABOVE`, 1 GiB) is decoded once into memory too; larger image data is
an :class:`ImageStream`, decoded batch by batch through a torch DataLoader with ``workers``
processes at every pass, so memory stays flat in the number of images. Both kinds are kept
in a :class:`DataCache` keyed by path and transform configuration (a stream holds only its
file list and labels), so sweeps over many models decode data that fits once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from infoprobe.data import images, tensors
from infoprobe.data.images import STREAM_ABOVE, Dataset, ImageStream
from infoprobe.data.tensors import (
    TENSOR_SUFFIXES,
    LabelledTensors,
    stratified_indices,
    validate_labels,
)
from infoprobe.data.transforms import (
    looks_unnormalised,
    model_in_chans,
    resolve_transform_config,
    tensor_transform,
    transform_record,
)
from infoprobe.errors import InputError
from infoprobe.parsing import read_class_map

__all__ = [
    "DEFAULT_CACHE",
    "STREAM_ABOVE",
    "TENSOR_SUFFIXES",
    "DataCache",
    "Dataset",
    "ImageStream",
    "LabelledTensors",
    "load_data",
    "looks_unnormalised",
    "model_in_chans",
    "read_class_map",
    "resolve_transform_config",
    "stratified_indices",
    "transform_record",
    "validate_labels",
]


class DataCache:
    """Least-recently-used store of loaded datasets (decoded tensors, or image streams).

    Keys are built by :func:`load_data` from the resolved path, file stamp, split, transform
    configuration and subsample; ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if key in self._store:
            self.hits += 1
            self._store.move_to_end(key)
            return self._store[key]
        self.misses += 1
        value = load()
        self._store[key] = value
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return value

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


DEFAULT_CACHE = DataCache()


def load_data(
    spec: str | Path,
    *,
    model: nn.Module | None = None,
    split: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    workers: int = 0,
    class_map: str | Path | None = None,
    cache: DataCache | None = DEFAULT_CACHE,
    progress: Any = None,
    stream_above: int | None = None,
) -> Dataset:
    """Load a dataset (see the module docstring for specs): :class:`LabelledTensors`, or an
    :class:`ImageStream` for image data whose decoded inputs exceed ``stream_above`` bytes
    (None: :data:`STREAM_ABOVE`).

    ``model`` resolves the image transform (ignored for tensor files); ``workers`` decode
    images in parallel; ``cache=None`` disables caching; ``progress`` is a ProgressSink
    (``start``/``advance``/``stop``) for image decoding. ``class_map``: timm's class-map
    text file for image folders (:func:`read_class_map`): each folder's label is the model
    class index the map gives it, and folders it does not name are left out.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"data {path} does not exist; give a tensor file "
            f"({', '.join(TENSOR_SUFFIXES)}) or an image folder"
        )
    if path.is_file():
        key, load = _tensor_file(path, max_samples, seed, model, mean, std, class_map)
    else:
        key, load = _image_folder(
            path,
            split,
            max_samples,
            seed,
            workers,
            progress,
            read_class_map(class_map) if class_map is not None else None,
            STREAM_ABOVE if stream_above is None else stream_above,
            resolve_transform_config(
                model,
                input_size=input_size,
                mean=mean,
                std=std,
                crop_pct=crop_pct,
                interpolation=interpolation,
            ),
        )
    if cache is None:
        return load()
    return cache.get_or_load(key, load)


def _image_folder(
    path: Path,
    split: str | None,
    max_samples: int | None,
    seed: int,
    workers: int,
    progress: Any,
    mapping: dict[str, int] | None,
    limit: int,
    cfg: dict,
) -> tuple[Hashable, Callable[[], Dataset]]:
    """The cache key of an image folder read with the transform ``cfg``, and its loader."""
    key = (
        "images",
        str(path.resolve()),
        split,
        tuple(sorted((k, str(v)) for k, v in cfg.items())),
        max_samples,
        seed,
        tuple(sorted(mapping.items())) if mapping else None,
        limit,
        workers,
    )

    def load() -> Dataset:
        return images.load_images(
            path, split, cfg, max_samples, seed, workers, progress, mapping, limit
        )

    return key, load


def _tensor_file(
    path: Path,
    max_samples: int | None,
    seed: int,
    model: nn.Module | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_map: str | Path | None,
) -> tuple[Hashable, Callable[[], LabelledTensors]]:
    """The cache key of a tensor file's subsample, and how to load it (inputs prepared by
    :func:`~infoprobe.data.transforms.tensor_transform`)."""
    if class_map is not None:
        raise InputError(
            "--class-map applies to image folders; a tensor file's labels are used as they are"
        )
    if path.suffix.lower() not in TENSOR_SUFFIXES:
        raise InputError(
            f"data file {path}: unknown type '{path.suffix}'; use "
            f"{', '.join(TENSOR_SUFFIXES)} or an image folder"
        )
    stat = path.stat()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    norm = (tuple(mean or ()), tuple(std or ()), str(cfg.get("mean")), str(cfg.get("std")))
    key = ("tensors", str(path.resolve()), stat.st_mtime_ns, stat.st_size, max_samples, seed, norm)

    def load() -> LabelledTensors:
        full = tensors.load_tensor_file(path)
        idx = stratified_indices(full.labels, max_samples, seed)
        inputs, labels = (
            (full.inputs, full.labels)
            if len(idx) == len(full)
            else (full.inputs[idx], full.labels[idx])
        )
        inputs, record = tensor_transform(inputs, model, mean, std)
        return LabelledTensors(inputs, labels, full.source, full.classes, record)

    return key, load
