"""Image data: class folders and CIFAR folders on disk, decoded with timm's eval transform.

Image data whose decoded float32 inputs fit a byte limit is decoded once into memory; larger
image data is an :class:`ImageStream`, decoded batch by batch through a torch DataLoader at
every pass, so memory stays flat in the number of images.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from infoprobe.allowlist import MAX_SIDE
from infoprobe.data.tensors import LabelledTensors, stratified_indices
from infoprobe.data.transforms import transform_record
from infoprobe.errors import InputError

_CIFAR_DIRS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}


_TRAIN_SPLITS = ("train", "training")


_EVAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation", "test")


_IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


# What decoding a damaged image raises (PIL: OSError incl. UnidentifiedImageError,
# ValueError, the decompression-bomb guard).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


#: Image data whose decoded float32 inputs take more bytes than this streams (1 GiB).
STREAM_ABOVE = 1 << 30


#: Largest side an image is resized to before its center crop (input side / crop_pct).
MAX_RESIZE = 2 * MAX_SIDE


def _cifar(root: Path) -> tuple[str, Path] | None:
    if root.name in _CIFAR_DIRS:
        return _CIFAR_DIRS[root.name], root.parent
    for sub, name in _CIFAR_DIRS.items():
        if (root / sub).is_dir():
            return name, root
    return None


def check_links(folder: Path) -> None:
    """InputError when following the symbolic links under ``folder`` reaches one folder
    twice (a link to a parent folder makes a loop): timm's reader follows links, so every
    image under it would be counted again at each turn."""
    seen: dict[tuple[int, int], str] = {}
    for here, _, _ in os.walk(folder, followlinks=True):
        stat = os.stat(here)
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            raise InputError(
                f"image folder {folder}: {here} is {seen[key]} again, reached through a "
                "symbolic link, so its images would be counted more than once; remove the link"
            )
        seen[key] = here


def _class_map(folder: Path) -> dict[str, int]:
    """Class name -> index as timm's training assigns it: the class folders in timm's
    natural order, including folders that hold no image here, so that a missing class does
    not shift the labels of the classes after it."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    from timm.utils.misc import natural_key

    _, found = find_images_and_targets(str(folder))
    names = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return {c: i for i, c in enumerate(sorted(names | set(found), key=natural_key))}


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
    check_links(folder)
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
    """The input batches of ``loader``; failures in worker processes arrive wrapped.

    The loader's iterator is released here, in this process, before an error leaves:
    kept alive by an error (torch's re-raised one sits in a reference cycle with its
    frames), it would be freed by a garbage collection that may run in the next loader's
    forked workers, and each of them would print a traceback of its failed clean-up."""
    batches = iter(loader)
    message = None
    try:
        for x, _ in batches:
            yield x.float()
    except InputError as e:  # a worker's arrives re-raised with its traceback as text
        if "Original Traceback" not in str(e):
            raise
        message = _worker_error(e)
        e.__traceback__ = None  # breaks the cycle: its frames hold the iterator
    finally:
        batches = None  # the last reference: the workers shut down here, in this process
    if message is not None:
        raise InputError(message)


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


def open_images(
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
    resize = math.floor(max(cfg["input_size"][1:]) / float(cfg["crop_pct"]))
    if resize > MAX_RESIZE:
        raise InputError(
            f"input size {tuple(cfg['input_size'])} with crop_pct {cfg['crop_pct']} resizes "
            f"images to {resize} pixels a side, over {MAX_RESIZE}; give a larger --crop-pct "
            "or a smaller --input-size"
        )
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


def load_images(
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
    stream = open_images(root, split, cfg, max_samples, seed, workers, class_map)
    if stream.inputs.numel() * 4 > stream_above:
        return stream
    return stream.decode(progress, f"decoding {root.name}")
