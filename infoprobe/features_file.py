"""Features files: the features, labels, head and logits of one pass, as safetensors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from infoprobe.data import stratified_indices, validate_labels
from infoprobe.errors import InputError, unwritable
from infoprobe.evaluation import Evaluation, check_features, scores


def save_features(path: str | Path, evaluation: Evaluation) -> Path:
    """Write 'features' [n,d], 'labels' [n], 'head' [C,d] (+ 'logits' [n,C]) as safetensors,
    atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"--save-features {path}: folder {path.parent} does not exist")
    tensors = {
        "features": evaluation.features.float(),
        "labels": evaluation.labels.long(),
        "head": evaluation.head.float(),
    }
    if evaluation.logits is not None:
        tensors["logits"] = evaluation.logits.float()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "infoprobe-features"})
        os.replace(tmp, path)
    except OSError as e:
        raise unwritable(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_features_file(path: str | Path) -> bool:
    """Whether ``path`` is a .safetensors file holding 'features', 'labels' and 'head'
    (see :func:`save_features`); only the header is read. Unreadable files give False, so
    that the checkpoint loader reports them."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.name.lower().endswith(".safetensors") or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return {"features", "labels", "head"} <= set(f.keys())
    except Exception:
        return False


def load_features(
    path: str | Path,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    valid_labels: Sequence[int] | None = None,
) -> Evaluation:
    """Read a features file (see :func:`save_features`); any framework can write one.

    Validates shapes (features [n,d], head [C,d], labels [n], logits [n,C]), labels in
    [0, C) and finiteness. Loss and accuracy come from the logits, NaN without them.

    The file's labels index its head's rows (model classes). ``valid_labels`` (k class
    indices) keeps the samples of those classes, relabelled 0..k-1 in the list's order, with
    the head rows and logit columns restricted to them: the evaluation a checkpoint gives on
    data of those k classes with ``--valid-labels``. ``max_samples`` then takes the same
    seeded class-stratified subsample that ``--max-samples`` takes of a dataset with these
    labels (:func:`~infoprobe.data.stratified_indices`), in the file's order.
    """
    path = Path(path).expanduser()
    z, labels, w, logits = _read_checked(path)
    if valid_labels is not None:
        classes = _valid_classes(valid_labels, w.shape[0], path)
        z, labels, logits = _of_classes(z, labels, logits, classes, path)
        w = w[classes]
    if max_samples is not None:
        keep = stratified_indices(labels, max_samples, seed)
        z, labels = z[keep], labels[keep]
        logits = logits[keep] if logits is not None else None
    nan = float("nan")
    evaluation = Evaluation(z, logits, labels, w, loss=nan, accuracy=nan, note="")
    return evaluation if logits is None else _scored(evaluation)


def _read_checked(path: Path) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(features float32 [n, d], labels int64 [n], head float32 [C, d], logits float32
    [n, C] or None) of a features file, every shape, label and value checked."""
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"features file {path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            found = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(
            f"cannot read features file {path}: corrupt or not safetensors ({str(e).strip()[:200]})"
        ) from None
    missing = [k for k in ("features", "labels", "head") if k not in found]
    if missing:
        raise InputError(
            f"features file {path} lacks {', '.join(missing)}; it needs "
            "'features' [n,d], 'labels' [n] and 'head' [C,d]"
        )
    z, w, logits = found["features"], found["head"], found.get("logits")
    if z.ndim != 2 or w.ndim != 2 or z.shape[1] != w.shape[1]:
        raise InputError(
            f"features file {path}: features {tuple(z.shape)} and head "
            f"{tuple(w.shape)} must be [n, d] and [C, d] with the same d"
        )
    if z.shape[0] == 0:
        raise InputError(f"features file {path} holds 0 samples")
    labels = validate_labels(found["labels"], int(z.shape[0]), f"features file {path}")
    if int(labels.max()) >= w.shape[0]:
        raise InputError(
            f"features file {path}: labels reach {int(labels.max())} but the head "
            f"has {w.shape[0]} classes [0, {w.shape[0]})"
        )
    z, w = z.float(), w.float()
    check_features(z, f"features file {path}")
    if not torch.isfinite(w).all():
        raise InputError(f"features file {path}: the head weights contain NaN/Inf")
    if logits is not None:
        if tuple(logits.shape) != (z.shape[0], w.shape[0]):
            raise InputError(
                f"features file {path}: logits {tuple(logits.shape)} should be "
                f"[{z.shape[0]}, {w.shape[0]}]"
            )
        logits = logits.float()
    return z, labels, w, logits


def _scored(evaluation: Evaluation) -> Evaluation:
    loss, accuracy, note = scores(evaluation.logits, evaluation.labels)
    evaluation.loss, evaluation.accuracy, evaluation.note = loss, accuracy, note
    return evaluation


def _valid_classes(valid: Sequence[int], num_classes: int, path: Path) -> Tensor:
    classes = torch.as_tensor(list(valid), dtype=torch.long)
    if int(classes.max()) >= num_classes:
        raise InputError(
            f"--valid-labels lists class {int(classes.max())}, past the {num_classes} classes "
            f"of features file {path}'s head"
        )
    return classes


def _of_classes(
    z: Tensor, labels: Tensor, logits: Tensor | None, classes: Tensor, path: Path
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The samples whose label is one of ``classes``, relabelled to its position there, and
    their logits restricted to those classes."""
    position = torch.full((max(int(labels.max()), int(classes.max())) + 1,), -1)
    position[classes] = torch.arange(len(classes))
    keep = position[labels] >= 0
    if not keep.any():
        raise InputError(f"features file {path} holds no sample of the --valid-labels classes")
    restricted = logits[keep][:, classes] if logits is not None else None
    return z[keep], position[labels[keep]], restricted
