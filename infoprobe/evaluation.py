"""The result of one evaluation pass, and what is derived from it without the model: the
loss and accuracy of logits, a restriction to a subset of the classes, and the check that
features are finite."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from infoprobe.errors import InputError, NonFiniteFeatures
from infoprobe.layers import LayerFeatures

__all__ = ["Evaluation", "check_features", "restrict_classes", "scores"]


@dataclass
class Evaluation:
    """Result of one pass (all tensors on cpu).

    ``features`` float32 [n, d]; ``logits`` float32 [n, C] (None only when loaded from a
    features file without logits); ``labels`` int64 [n]; ``head`` float32 [C, d];
    ``loss`` mean cross-entropy (nats) and ``accuracy`` in [0, 1], NaN without logits or
    when a logit is not finite; ``note`` says why they are NaN (empty otherwise);
    ``layers`` the pooled features of the layers asked for, in depth order (empty without).
    """

    features: Tensor
    logits: Tensor | None
    labels: Tensor
    head: Tensor
    loss: float
    accuracy: float
    note: str = ""
    layers: tuple[LayerFeatures, ...] = ()

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.head.shape[0])


def scores(logits: Tensor, labels: Tensor) -> tuple[float, float, str]:
    """(mean cross-entropy, accuracy, note) of logits [n, C] against labels [n].

    A sample whose logits are not all finite has no defined loss, and its prediction is
    undefined too (argmax among several +inf, or NaN), so both values are NaN then, with a
    note naming how many samples overflowed, rather than a number that looks valid.
    """
    bad = ~torch.isfinite(logits).all(dim=1)
    if bad.any():
        note = (
            f"logits of {int(bad.sum())} of {len(bad)} samples are Inf/NaN (first: sample "
            f"{int(bad.nonzero()[0])}): loss and accuracy are undefined; the model "
            "overflows (with --amp fp16 use bf16 or drop --amp)"
        )
        return float("nan"), float("nan"), note
    return (
        float(F.cross_entropy(logits, labels)),
        float((logits.argmax(1) == labels).double().mean()),
        "",
    )


def restrict_classes(
    evaluation: Evaluation, valid_labels: Sequence[int], source: str = "the data"
) -> Evaluation:
    """The evaluation of the classifier made of the head rows ``valid_labels`` (k model
    class indices): logits ``[:, valid_labels]`` (timm validate.py's ``output[:,
    valid_labels]``), head ``W[valid_labels]`` [k, d], labels unchanged, which must index
    ``valid_labels`` ([0, k)). Loss and accuracy are those of the k-way logits; the features
    are unchanged, so K_Z is too, and K_W holds the same head rows for each sample as the
    full head with the labels mapped to ``valid_labels[y]``."""
    valid = torch.as_tensor(list(valid_labels), dtype=torch.long)
    c = evaluation.head.shape[0]
    if valid.numel() == 0 or int(valid.min()) < 0 or int(valid.max()) >= c:
        raise InputError(
            f"--valid-labels must list class indices in [0, {c}) of the model's "
            f"head; got {valid.numel()} values in "
            f"[{int(valid.min()) if valid.numel() else '-'}, "
            f"{int(valid.max()) if valid.numel() else '-'}]"
        )
    if valid.unique().numel() != valid.numel():
        raise InputError("--valid-labels lists a class index twice; list each once")
    labels = evaluation.labels
    if int(labels.max()) >= valid.numel():
        raise InputError(
            f"labels of {source} reach {int(labels.max())} but --valid-labels "
            f"lists {valid.numel()} classes; label i must be the i-th valid label "
            "(the folders sorted as the list is)"
        )
    logits = evaluation.logits[:, valid] if evaluation.logits is not None else None
    loss, acc, note = (
        scores(logits, labels) if logits is not None else (float("nan"), float("nan"), "")
    )
    return Evaluation(
        features=evaluation.features,
        logits=logits,
        labels=labels,
        head=evaluation.head[valid].clone(),
        loss=loss,
        accuracy=acc,
        note=note,
        layers=evaluation.layers,
    )


def check_features(features: Tensor, source: str, offset: int = 0) -> None:
    """NonFiniteFeatures naming the NaN/Inf rows; ``offset`` is the index of row 0 in the data."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0]) + offset
        raise NonFiniteFeatures(
            f"features of {int(bad.sum())} samples of {source} are NaN/Inf (first: sample "
            f"{first}); check the checkpoint's weights and the input normalisation (--mean/--std)"
        )
