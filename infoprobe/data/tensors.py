"""Datasets held in memory: tensor files, labels, and seeded class-stratified subsamples."""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from infoprobe.errors import InputError
from infoprobe.memory import check_fits

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")


# Integer dtypes that models index with (nn.Embedding); inputs of these stay integer.
_INDEX_DTYPES = (torch.int32, torch.int64)


_INPUT_KEYS = ("x", "inputs", "images", "data")


_LABEL_KEYS = ("y", "labels", "targets")


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


def _class_names(raw: str | None) -> list[str] | None:
    """Class names from metadata: a JSON list or comma-separated; None when absent/odd."""
    if not raw:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = raw.split(",")
    return [str(c).strip() for c in names] if isinstance(names, list) else None


# numpy dtype kinds torch takes (bool, signed, unsigned, float, complex) with their largest
# item size; str, bytes, datetime64, timedelta64, object and structured arrays are no tensors
_NUMPY_KINDS = {"b": 1, "i": 8, "u": 8, "f": 8, "c": 16}
# dtypes that load_tensor_file keeps as they are (others get a float32 copy)
_KEPT_NUMPY = ("float32", "int32", "int64", "uint8")
_KEPT_SAFETENSORS = ("F32", "I32", "I64", "U8")


def _npz_bytes(path: Path) -> int:
    """Bytes that reading an ``.npz`` and casting its arrays allocate, from the zip
    directory and the ``.npy`` headers alone (no array is read). InputError for a member
    that is no ``.npy`` array, a dtype torch cannot hold, or a header declaring other data
    than its member holds (numpy allocates the declared size before reading)."""
    from numpy.lib import format as npy

    total = 0
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = npy.read_magic(f) if info.filename.endswith(".npy") else None
                if version not in ((1, 0), (2, 0)):
                    raise InputError(
                        f"data file {path}: member {info.filename!r} is not a numeric .npy "
                        "array; save the arrays with numpy.savez"
                    )
                read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read(f)
                header = f.tell()
            name = info.filename.removesuffix(".npy")
            if _NUMPY_KINDS.get(dtype.kind, 0) < dtype.itemsize or dtype.fields is not None:
                raise InputError(
                    f"data file {path}: array {name!r} has dtype {dtype}, which is not a tensor "
                    "dtype; store numbers (bool, integers, floats up to float64)"
                )
            size = math.prod(shape) * dtype.itemsize
            if header + size != info.file_size:
                raise InputError(
                    f"data file {path}: array {name!r} declares shape {shape} ({size} bytes) "
                    f"but its member holds {info.file_size - header}; the file is corrupt"
                )
            copy = 0 if dtype.name in _KEPT_NUMPY else 4 * math.prod(shape)
            total += size + copy
    return total


def _safetensors_bytes(path: Path) -> int:
    """Bytes that reading a safetensors file and casting its tensors allocate, from its
    header (the library checks that the header's offsets cover the file exactly, so the
    file's size is its tensors' size; a sparse file counts at its full size)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        slices = [f.get_slice(k) for k in f.keys()]
        copies = sum(
            4 * math.prod(s.get_shape()) for s in slices if s.get_dtype() not in _KEPT_SAFETENSORS
        )
    return path.stat().st_size + copies


def _declared_bytes(path: Path) -> int:
    """Bytes that reading ``path`` allocates: see the two above; a torch file as its zip
    members' uncompressed size (legacy files: the file's size)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _npz_bytes(path)
    if suffix == ".safetensors":
        return _safetensors_bytes(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist())
    return path.stat().st_size


def _read_tensor_file(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    suffix = path.suffix.lower()
    try:
        need = _declared_bytes(path)
        check_fits(need, f"data file {path}", "subsample it or use a machine with more memory")
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                found = {k: f.get_tensor(k) for k in f.keys()}
            return found, _class_names(meta.get("classes"))
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}, None
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except InputError:
        raise
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


def load_tensor_file(path: Path) -> LabelledTensors:
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
    if x.dtype not in (*_INDEX_DTYPES, torch.uint8):
        # the model's weights are float32; token ids and uint8 pixels are converted later
        x = x.float()
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise InputError(f"data file {path}: inputs contain NaN/Inf; clean the data")
    return LabelledTensors(inputs=x, labels=labels, source=str(path), classes=classes)
