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

import json
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from torch import Tensor, nn

from infoprobe.errors import InputError

__all__ = [
    "DEFAULT_CACHE",
    "TENSOR_SUFFIXES",
    "STREAM_ABOVE",
    "DataCache",
    "Dataset",
    "ImageStream",
    "LabelledTensors",
    "load_data",
    "model_in_chans",
    "read_class_map",
    "resolve_transform_config",
    "stratified_indices",
    "transform_record",
    "validate_labels",
]

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
# Integer dtypes that models index with (nn.Embedding); inputs of these stay integer.
_INDEX_DTYPES = (torch.int32, torch.int64)
_INPUT_KEYS = ("x", "inputs", "images", "data")
_LABEL_KEYS = ("y", "labels", "targets")
_CIFAR_DIRS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}
_TRAIN_SPLITS = ("train", "training")
_EVAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation", "test")
_IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# What reading a damaged tensor file raises (safetensors, torch.load, numpy's zip reader);
# anything else is a failure of the code, not of the file.
_READ_ERRORS = (
    SafetensorError,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)
# What decoding a damaged image raises (PIL: OSError incl. UnidentifiedImageError,
# ValueError, the decompression-bomb guard).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: Image data whose decoded float32 inputs take more bytes than this streams (1 GiB).
STREAM_ABOVE = 1 << 30


@dataclass
class LabelledTensors:
    """A whole dataset in memory.

    ``inputs``: [n, ...] exactly as fed to the model (float32, or int32/int64 token ids);
    ``labels``: int64 [n], >= 0;
    ``source``: where it came from; ``classes``: class names by index when known;
    ``transform``: the evaluation transform images went through (:func:`transform_record`),
    None for tensor files. Instances served from a cache are shared: treat the tensors as
    read-only.
    """

    inputs: Tensor
    labels: Tensor
    source: str
    classes: list[str] | None = None
    transform: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Tensor]:
        """The inputs of samples ``[start, stop)`` in order, ``batch_size`` at a time."""
        stop = len(self) if stop is None else stop
        for i in range(start, stop, batch_size):
            yield self.inputs[i : min(i + batch_size, stop)]

    def take(self, indices: Tensor) -> Tensor:
        """The inputs of the samples at ``indices`` (int64), in that order."""
        return self.inputs[indices]


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


# --------------------------------------------------------------------------- subsampling


def _apportion(counts: Tensor, k: int) -> Tensor:
    """Hamilton (largest-remainder) apportionment of ``k`` samples to classes of ``counts``,
    with at least one sample per class: classes whose share is below one get exactly one,
    and the rest of ``k`` is shared among the others in proportion to their counts."""
    take = torch.zeros_like(counts)
    free = torch.ones_like(counts, dtype=torch.bool)
    while True:
        left = k - int(take[~free].sum())
        quota = counts.double() * left / counts[free].sum()
        lifted = free & (quota < 1)
        if not lifted.any():
            break
        take[lifted] = 1
        free &= ~lifted
    floor = torch.where(free, quota.floor().long(), take)
    short = k - int(floor.sum())
    remainder = torch.where(free, quota - floor, torch.full_like(quota, -1.0))
    # stable sort: equal remainders go to the lower class index
    floor[torch.argsort(-remainder, stable=True)[:short]] += 1
    return floor


def stratified_indices(labels: Tensor, max_samples: int | None, seed: int = 0) -> Tensor:
    """Indices (int64, ascending) of a seeded subsample of ``max_samples`` that keeps each
    class's share (largest-remainder rounding) and at least one sample of every class; all
    indices when ``max_samples >= n``. Raises :class:`InputError` when ``max_samples`` is
    below the number of classes present, which would drop a class."""
    n = int(labels.shape[0])
    if max_samples is not None and max_samples < 1:
        raise InputError(f"--max-samples {max_samples}: must be at least 1")
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    classes, counts = labels.unique(return_counts=True)
    if max_samples < len(classes):
        raise InputError(
            f"--max-samples {max_samples} keeps fewer samples than the {len(classes)} classes "
            f"in the data, so some classes would be missing; use --max-samples {len(classes)} "
            "or more"
        )
    take = _apportion(counts, max_samples)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(chosen).sort().values


# --------------------------------------------------------------------------- tensor files


def _class_names(raw: str | None) -> list[str] | None:
    """Class names from metadata: a JSON list or comma-separated; None when absent/odd."""
    if not raw:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = raw.split(",")
    return [str(c).strip() for c in names] if isinstance(names, list) else None


def _read_tensor_file(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                found = {k: f.get_tensor(k) for k in f.keys()}
            return found, _class_names(meta.get("classes"))
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k].copy()) for k in z.files}, None
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except _READ_ERRORS as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(
            f"cannot read data file {path}: corrupt, truncated or holding "
            f"non-tensor objects ({reason}); save a dict of tensors"
        ) from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return {"x": obj[0], "y": obj[1]}, None
    if not isinstance(obj, dict):
        raise InputError(
            f"data file {path} holds a {type(obj).__name__}; save a dict "
            "{'x': inputs, 'y': labels}"
        )
    classes = obj.get("classes")
    return obj, list(classes) if isinstance(classes, (list, tuple)) else None


def _pick(found: dict, aliases: tuple[str, ...], what: str, path: Path) -> Tensor:
    for k in aliases:
        if k in found:
            v = found[k]
            if not isinstance(v, Tensor):
                raise InputError(f"data file {path}: '{k}' is a {type(v).__name__}, not a tensor")
            return v
    raise InputError(
        f"data file {path} has no {what} (looked for {', '.join(aliases)}; "
        f"found {', '.join(map(str, found)) or 'nothing'}); rename the entry"
    )


def validate_labels(labels: Tensor, n: int, source: str) -> Tensor:
    """Check class indices: shape [n], integral values >= 0; returns them as int64."""
    if labels.ndim != 1:
        raise InputError(
            f"{source}: labels have shape {tuple(labels.shape)}; expected class "
            f"indices of shape [{n}] (for one-hot labels save y.argmax(1))"
        )
    if labels.shape[0] != n:
        raise InputError(f"{source}: {n} inputs but {labels.shape[0]} labels; they must match")
    if labels.dtype == torch.bool or labels.is_complex():
        raise InputError(f"{source}: labels have dtype {labels.dtype}; expected integers")
    if labels.is_floating_point():
        if not (torch.isfinite(labels).all() and (labels == labels.round()).all()):
            raise InputError(f"{source}: labels are not integers; save integer class indices")
    labels = labels.long()
    if n and labels.min() < 0:
        raise InputError(
            f"{source}: labels include {int(labels.min())}; class indices must be >= 0"
        )
    return labels


def _load_tensor_file(path: Path) -> LabelledTensors:
    found, classes = _read_tensor_file(path)
    x = _pick(found, _INPUT_KEYS, "inputs", path)
    y = _pick(found, _LABEL_KEYS, "labels", path)
    if x.ndim < 2:
        raise InputError(
            f"data file {path}: inputs have shape {tuple(x.shape)}; expected "
            "[n, ...] with one row per sample"
        )
    if x.shape[0] == 0:
        raise InputError(f"data file {path} is empty (0 samples)")
    labels = validate_labels(y, int(x.shape[0]), f"data file {path}")
    if x.is_complex():
        raise InputError(f"data file {path}: inputs have dtype {x.dtype}; store real inputs")
    if x.dtype not in _INDEX_DTYPES:
        x = x.float()  # the model's weights are float32; int32/int64 token ids stay as they are
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise InputError(f"data file {path}: inputs contain NaN/Inf; clean the data")
    return LabelledTensors(inputs=x, labels=labels, source=str(path), classes=classes)


# --------------------------------------------------------------------------- images


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


def _cifar(root: Path) -> tuple[str, Path] | None:
    if root.name in _CIFAR_DIRS:
        return _CIFAR_DIRS[root.name], root.parent
    for sub, name in _CIFAR_DIRS.items():
        if (root / sub).is_dir():
            return name, root
    return None


def _class_map(folder: Path) -> dict[str, int]:
    """Class name -> index as timm's training assigns it: the class folders in timm's
    natural order, including folders that hold no image here, so that a missing class does
    not shift the labels of the classes after it."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    from timm.utils.misc import natural_key

    _, found = find_images_and_targets(str(folder))
    names = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return {c: i for i, c in enumerate(sorted(names | set(found), key=natural_key))}


def read_class_map(path: str | Path) -> dict[str, int]:
    """timm's ``--class-map`` text file: line i names the folder of model class i
    (``timm.data.readers.class_map.load_class_map`` for .txt files; pickles are refused)."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".txt":
        raise InputError(
            f"--class-map {p}: give a .txt file with one class folder name per "
            "line (line i is model class i)"
        )
    if not p.is_file():
        raise InputError(f"--class-map {p} does not exist; check the path")
    from timm.data.readers.class_map import load_class_map

    return load_class_map(str(p))


def _open_image_dataset(root: Path, split: str | None, class_map: dict | None = None):
    """timm dataset, its labels (no decoding) and class names by index."""
    from timm.data import create_dataset
    from timm.data.dataset_factory import _search_split

    cifar = _cifar(root)
    if cifar:
        if class_map:
            raise InputError("--class-map applies to image folders, not CIFAR")
        name, base = cifar
        if split is not None and split not in _TRAIN_SPLITS + _EVAL_SPLITS:
            raise InputError(f"--split {split}: CIFAR has 'train' and 'test' splits")
        try:
            ds = create_dataset(
                f"torch/{name}", root=str(base), split=split or "validation", download=False
            )
        except (RuntimeError, OSError) as e:
            raise InputError(
                f"CIFAR folder {base} is incomplete or corrupted ({e}); place the "
                "original python-version archive contents there"
            ) from None
        return ds, [int(t) for t in ds.targets], list(ds.classes)
    folder = Path(_search_split(str(root), split or "validation"))
    subs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split is not None and folder == root:
        raise InputError(
            f"--split {split}: no such split folder in {root} (subfolders: "
            f"{', '.join(subs[:8]) or 'none'})"
        )
    splits = [s for s in subs if s.lower() in _TRAIN_SPLITS + _EVAL_SPLITS]
    if split is None and folder == root and splits:
        # timm would read every split's class folders together: training images included
        raise InputError(
            f"image folder {root} holds split folders ({', '.join(splits)}); "
            f"evaluating them together mixes splits: choose one with --split "
            f"{splits[-1]}"
        )
    try:
        ds = create_dataset(
            "",
            root=str(root),
            split=split or "validation",
            class_map=class_map or _class_map(folder),
        )
    except RuntimeError as e:
        hint = " none of whose subfolders --class-map names;" if class_map else ""
        raise InputError(
            f"image folder {root} is empty:{hint} {str(e).splitlines()[0]}; put "
            "one subfolder of images per class in it"
        ) from None
    index = ds.reader.class_to_idx
    names = {i: c for c, i in index.items()}
    classes = [names.get(i, str(i)) for i in range(max(index.values(), default=-1) + 1)]
    ds._max_retries = 1  # timm substitutes the next image for a broken one; fail instead
    return ds, [int(t) for _, t in ds.reader.samples], classes


class _Decode(torch.utils.data.Dataset):
    """Decode + transform the chosen samples of a timm/torchvision image dataset."""

    def __init__(self, ds, indices: list[int], transform, mode: str) -> None:
        self.ds, self.indices, self.transform, self.mode = ds, indices, transform, mode

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, i: int):
        reader = getattr(self.ds, "reader", None)
        if reader is None:  # torchvision CIFAR: decoded arrays
            return self.ds[i][:2]
        # timm's dataset would log the error, try the next image and report only "failed
        # to load": open the file here to report the real reason, once
        file, target = reader[i][:2]
        return Image.open(file), target

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:  # decoding only: an error of the transform is no fault of the image
            img, target = self._read(i)
            img = img.convert(self.mode)
        except _DECODE_ERRORS as e:
            name = self.ds.filename(i, absolute=True) if hasattr(self.ds, "filename") else i
            reason = re.sub(r" <_io\.\w+ name=.*?>", "", str(e))
            raise InputError(
                f"cannot decode image {name} ({reason}); remove or replace it"
            ) from None
        return self.transform(img), int(target)


def _worker_error(err: Exception) -> str:
    """The message of an error raised in a DataLoader worker: torch re-raises it with the
    worker's traceback folded into the message; keep the last line, without the type."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if "Original Traceback" not in str(err):
        return lines[0]
    return re.sub(r"^[\w.]+: ", "", lines[-1].strip())


def _decoded(loader) -> Iterator[Tensor]:
    """The input batches of ``loader``; failures in worker processes arrive wrapped."""
    try:
        for x, _ in loader:
            yield x.float()
    except InputError as e:  # a worker's arrives re-raised with its traceback as text
        if "Original Traceback" not in str(e):
            raise
        raise InputError(_worker_error(e)) from None


class ImageStream:
    """An image dataset decoded batch by batch; only the labels are held in memory.

    ``labels`` int64 [n] (read from the file list, no decoding); ``inputs`` is a shape-only
    'meta' tensor [n, C, H, W] (no data: decode with :meth:`batches` or :meth:`take`);
    ``source``, ``classes``, ``transform`` as in :class:`LabelledTensors`. Every pass
    decodes again, ``workers`` processes at a time; peak memory is about
    ``(2 * workers + 1) * batch_size * C * H * W * 4`` bytes, whatever n is.
    """

    def __init__(
        self,
        decode: _Decode,
        labels: Tensor,
        shape: tuple[int, ...],
        source: str,
        classes: list[str] | None,
        transform: dict[str, Any],
        workers: int,
    ) -> None:
        self._decode, self.labels, self.workers = decode, labels, workers
        self.inputs = torch.empty((len(labels), *shape), device="meta")
        self.source, self.classes, self.transform = source, classes, transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _loader(self, positions: Sequence[int], batch_size: int):
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(self._decode, positions),
            batch_size=batch_size,
            num_workers=self.workers,
        )

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Tensor]:
        """The inputs of samples ``[start, stop)`` in order, float32, ``batch_size`` at a
        time, decoded as they are consumed."""
        stop = len(self) if stop is None else stop
        yield from _decoded(self._loader(range(start, stop), batch_size))

    def take(self, indices: Tensor) -> Tensor:
        """The decoded inputs of the samples at ``indices`` (int64), in that order."""
        parts = list(_decoded(self._loader(indices.tolist(), max(1, len(indices)))))
        return torch.cat(parts) if parts else self.inputs[:0].to("cpu")

    def decode(
        self, progress=None, description: str = "decoding", batch_size: int = 64
    ) -> LabelledTensors:
        """Every sample decoded into memory (float32 [n, C, H, W])."""
        inputs = torch.empty(self.inputs.shape)
        if progress is not None:
            progress.start(len(self), description)
        try:
            start = 0
            for x in self.batches(batch_size):
                inputs[start : start + len(x)] = x
                start += len(x)
                if progress is not None:
                    progress.advance(len(x))
        finally:
            if progress is not None:
                progress.stop()
        return LabelledTensors(
            inputs=inputs,
            labels=self.labels,
            source=self.source,
            classes=self.classes,
            transform=self.transform,
        )


#: What :func:`load_data` returns: a dataset in memory, or an image stream.
Dataset = LabelledTensors | ImageStream


def _open_images(
    root: Path,
    split: str | None,
    cfg: dict,
    max_samples: int | None,
    seed: int,
    workers: int,
    class_map: dict | None = None,
) -> ImageStream:
    """The chosen samples of an image dataset, ready to decode (only the file list is read)."""
    from timm.data import create_transform

    ds, targets, classes = _open_image_dataset(root, split, class_map)
    if not targets:
        raise InputError(f"dataset {root} is empty (0 samples)")
    chosen = stratified_indices(torch.tensor(targets), max_samples, seed)
    mode = _IMAGE_MODES.get(cfg["input_size"][0])
    if mode is None:
        raise InputError(
            f"images can be decoded to 1, 3 or 4 channels, not "
            f"{cfg['input_size'][0]}; check --input-size / --in-chans"
        )
    try:
        transform = create_transform(
            input_size=cfg["input_size"],
            is_training=False,
            interpolation=cfg["interpolation"],
            mean=cfg["mean"],
            std=cfg["std"],
            crop_pct=cfg["crop_pct"],
            crop_mode=cfg.get("crop_mode"),
        )
    except (KeyError, ValueError) as e:
        raise InputError(
            f"--interpolation {cfg['interpolation']}: not supported by timm ({e})"
        ) from None
    source = f"{root}" + (f" [{split}]" if split else "")
    return ImageStream(
        _Decode(ds, chosen.tolist(), transform, mode),
        torch.tensor(targets, dtype=torch.long)[chosen],
        tuple(cfg["input_size"]),
        source,
        classes,
        transform_record(cfg),
        workers,
    )


def _load_images(
    root: Path,
    split: str | None,
    cfg: dict,
    max_samples: int | None,
    seed: int,
    workers: int,
    progress,
    class_map: dict | None = None,
    stream_above: int = STREAM_ABOVE,
) -> Dataset:
    """An :class:`ImageStream`, decoded into memory when its inputs fit ``stream_above``."""
    stream = _open_images(root, split, cfg, max_samples, seed, workers, class_map)
    if stream.inputs.numel() * 4 > stream_above:
        return stream
    return stream.decode(progress, f"decoding {root.name}")


# --------------------------------------------------------------------------- entry point


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
    resolved = path.resolve()
    mapping = read_class_map(class_map) if class_map is not None else None
    if path.is_file():
        if mapping is not None:
            raise InputError(
                "--class-map applies to image folders; a tensor file's labels are used as they are"
            )
        if path.suffix.lower() not in TENSOR_SUFFIXES:
            raise InputError(
                f"data file {path}: unknown type '{path.suffix}'; use "
                f"{', '.join(TENSOR_SUFFIXES)} or an image folder"
            )
        stat = path.stat()
        key: Hashable = (
            "tensors",
            str(resolved),
            stat.st_mtime_ns,
            stat.st_size,
            max_samples,
            seed,
        )

        def load() -> LabelledTensors:
            full = _load_tensor_file(path)
            idx = stratified_indices(full.labels, max_samples, seed)
            if len(idx) == len(full):
                return full
            return LabelledTensors(
                full.inputs[idx], full.labels[idx], full.source, full.classes, full.transform
            )
    else:
        cfg = resolve_transform_config(
            model,
            input_size=input_size,
            mean=mean,
            std=std,
            crop_pct=crop_pct,
            interpolation=interpolation,
        )
        limit = STREAM_ABOVE if stream_above is None else stream_above
        key = (
            "images",
            str(resolved),
            split,
            tuple(sorted((k, str(v)) for k, v in cfg.items())),
            max_samples,
            seed,
            tuple(sorted(mapping.items())) if mapping else None,
            limit,
            workers,
        )

        def load() -> Dataset:
            return _load_images(
                path, split, cfg, max_samples, seed, workers, progress, mapping, limit
            )

    if cache is None:
        return load()
    return cache.get_or_load(key, load)
