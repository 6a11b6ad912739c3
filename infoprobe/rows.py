"""One evaluation -> one row of the shared column schema (the README's CSV schema).

Every command emits rows with :data:`COLUMNS` (lmc adds ``alpha``, prune adds ``ratio,
sparsity, mir_dense, hdr_dense`` and the after-fine-tuning :data:`FT_COLUMNS`, track adds
``step``), so CSV from any command loads straight into pandas and joins on these names.
``estimate`` says which route gave the joint entropy of a row: ``exact``,
``slq(probes=..,steps=..,seed=..)`` or ``batch(B=..,seed=..)``; ``h_zw_err, mi_err,
mir_err`` are its 1-sigma error bars (NaN when exact), ``mir_lower`` a certified lower bound
of MIR (NaN when the route gives none); ``n_samples`` says on how many samples, ``n_used``
how many entered the values and ``n_batches`` in how many batches; ``nc1, nc2_equinorm,
nc2_equiangular, nc3, nc4`` are the neural-collapse measures of :mod:`infoprobe.collapse`
on the same samples; ``note`` says why a value is NaN (empty otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from infoprobe.collapse import NeuralCollapse, neural_collapse
from infoprobe.errors import InputError
from infoprobe.info import (
    DEFAULT_BATCH_SIZE,
    Estimate,
    Interplay,
    feature_entropy,
    interplay,
    nc_optimum,
)
from infoprobe.label_info import label_information, matched_widths
from infoprobe.layers import LayerFeatures
from infoprobe.schema import (
    COLUMNS,
    LAYER_COLUMNS,
    MODEL_COLUMNS,
    NC_COLUMNS,
    TEXT_COLUMNS,
)
from infoprobe.slq import PROBES


class Evaluated(Protocol):
    """What a row needs from an evaluation pass (``infoprobe.evaluation.Evaluation``)."""

    features: Tensor
    labels: Tensor
    head: Tensor
    loss: float
    accuracy: float


@dataclass(frozen=True)
class MeasureOptions:
    """How the information quantities are computed (see :func:`infoprobe.info.interplay`).

    ``device``: where the eigen-solves run (None: where the features are); ``max_exact_dim``
    None follows the device (:func:`infoprobe.info.default_max_exact_dim`), 0: no limit.
    """

    estimate: Estimate = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    drop_zero_rows: bool = False
    max_exact_dim: int | None = None
    device: str | None = None
    probes: int = PROBES

    def matches(self, label: str) -> bool:
        """Whether a row's ``estimate`` label can come from these options (``--resume``)."""
        if self.estimate == "batch":
            return label == f"batch(B={self.batch_size},seed={self.seed})"
        slq = label.startswith(f"slq(probes={self.probes},") and label.endswith(
            f",seed={self.seed})"
        )
        return {"exact": label == "exact", "slq": slq}.get(self.estimate, label == "exact" or slq)


def model_columns(
    arch: str | None, model: torch.nn.Module | None, inputs: Tensor | None = None
) -> dict:
    """``model``: the architecture name (None: unknown); ``param_count``: parameters in
    millions (``sum(p.numel()) / 1e6``, as timm's validate.py counts them, unrounded);
    ``img_size``: the width of the image inputs [n, C, H, W] (timm writes
    ``input_size[-1]``), None for other inputs."""
    count = sum(p.numel() for p in model.parameters()) / 1e6 if model is not None else None
    size = int(inputs.shape[-1]) if inputs is not None and inputs.ndim == 4 else None
    return {"model": arch, "param_count": count, "img_size": size}


def percent(fraction: float, n: int) -> float:
    """``fraction`` (k / n of n samples) in percent as the double nearest to 100 k / n: 3.5,
    where ``100 * 0.035`` gives 3.5000000000000004. NaN stays NaN."""
    if math.isnan(fraction) or n <= 0:
        return math.nan
    return 100.0 * round(fraction * n) / n


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``min(k, C)`` largest logits (timm's
    ``accuracy``: with C <= k classes every label is, so the value is 1)."""
    k = min(k, int(logits.shape[1]))
    top = logits.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def _or_missing(column: str, value):
    # an unknown model name is an empty string (like note), an unknown number NaN
    if value is None:
        return "" if column == "model" else math.nan
    return value


def measure(evaluation: Evaluated, options: MeasureOptions = MeasureOptions()) -> Interplay:
    """The interplay between an evaluation's features and its head."""
    return _interplay(evaluation.features, evaluation.labels, evaluation.head, options)


def _interplay(features: Tensor, labels: Tensor, head: Tensor, options: MeasureOptions):
    return interplay(
        features,
        labels,
        head,
        estimate=options.estimate,
        batch_size=options.batch_size,
        seed=options.seed,
        drop_zero_rows=options.drop_zero_rows,
        max_exact_dim=options.max_exact_dim,
        device=options.device,
        probes=options.probes,
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def error_row(checkpoint: str, error: BaseException) -> dict:
    """The row of a checkpoint that could not be measured: :data:`COLUMNS` with every value
    empty (NaN) but ``checkpoint``, and ``note`` = ``"error: MESSAGE"`` on one line."""
    row = {c: "" if c in TEXT_COLUMNS else math.nan for c in COLUMNS}
    row.update(checkpoint=checkpoint, note="error: " + " ".join(str(error).split()))
    return row


def is_measured(row: Mapping) -> bool:
    """Whether ``row`` holds numbers (not an :func:`error_row`): its ``n_samples`` is set."""
    n = row.get("n_samples")
    return isinstance(n, (int, float)) and not (isinstance(n, float) and math.isnan(n))


def analysis_row(
    checkpoint: str,
    evaluation: Evaluated,
    options: MeasureOptions = MeasureOptions(),
    model: dict | None = None,
) -> dict:
    """A dict with exactly :data:`COLUMNS`, in order, for one evaluated checkpoint.

    ``model``: the :data:`MODEL_COLUMNS` values (:func:`model_columns`; None each when not
    given). ``accuracy``/``accuracy_top5`` are fractions; ``top1``/``top5`` the same in
    percent, as timm's validate.py writes them; top-5 needs the logits (NaN without).
    ``mir_nc``/``hdr_nc`` are the neural-collapse optimum for the head's class count
    (NaN for C = 2); ``classes_present`` counts the classes that have samples, which is
    below ``n_classes`` when the data lacks a class the head knows. Floats are Python
    floats; NaN marks an undefined ratio.
    """
    result = measure(evaluation, options)
    logits = getattr(evaluation, "logits", None)
    collapse = neural_collapse(evaluation.features, evaluation.labels, evaluation.head, logits)
    return _row(checkpoint, evaluation, result, collapse, model)


def _row(
    checkpoint: str,
    evaluation: Evaluated,
    result: Interplay,
    collapse: NeuralCollapse,
    model: dict | None,
    notes: Sequence[str] = (),
) -> dict:
    """:data:`COLUMNS` of an evaluation, its interplay and neural collapse (``notes`` join
    the row's note)."""
    optimum = nc_optimum(result.n_classes) if result.n_classes >= 2 else None
    nan = math.nan
    logits = getattr(evaluation, "logits", None)
    top5 = topk_accuracy(logits, evaluation.labels) if logits is not None else nan
    notes = [getattr(evaluation, "note", ""), result.note, *notes]
    if logits is None:
        notes.append("nc4 needs the model's logits, which this features file does not hold")
    row = {
        "checkpoint": checkpoint,
        **{c: _or_missing(c, (model or {}).get(c)) for c in MODEL_COLUMNS},
        "n_samples": result.n_samples,
        "n_classes": result.n_classes,
        "classes_present": int(evaluation.labels.unique().numel()),
        "accuracy": float(evaluation.accuracy),
        "accuracy_top5": top5,
        "top1": percent(float(evaluation.accuracy), len(evaluation.labels)),
        "top5": percent(top5, len(evaluation.labels)),
        "loss": float(evaluation.loss),
        "h_z": result.h_z,
        "h_w": result.h_w,
        "h_zw": result.h_zw,
        "mi": result.mi,
        "mir": result.mir,
        "hdr": result.hdr,
        "mir_nc": optimum.mir if optimum else nan,
        "hdr_nc": optimum.hdr if optimum else nan,
        **{column: getattr(collapse, column) for column in NC_COLUMNS},
        "h_zw_err": _nan(result.h_zw_err),
        "mi_err": _nan(result.mi_err),
        "mir_err": _nan(result.mir_err),
        "mir_lower": _nan(result.mir_lower),
        "estimate": result.label,
        "n_used": result.n_used,
        "n_batches": result.n_batches,
        "note": "; ".join(filter(None, notes)),
    }
    return row


class LayerEvaluated(Evaluated, Protocol):
    """An evaluation with layers (``infoprobe.evaluation.Evaluation`` of ``evaluate(layers=)``)."""

    logits: Tensor | None
    layers: tuple[LayerFeatures, ...]


def layer_rows(
    checkpoint: str,
    evaluation: LayerEvaluated,
    options: MeasureOptions = MeasureOptions(),
    model: dict | None = None,
) -> list[dict]:
    """One row with :data:`LAYER_COLUMNS` per layer of ``evaluation.layers``, in order.

    Each row measures the layer's pooled features z [n, d_l] as :func:`analysis_row`
    measures the penultimate ones: ``h_z``, ``mi``, ``mir``, ``hdr`` against the head's
    K_W (which depends on the labels and the head only, so it is the same for every layer:
    :func:`infoprobe.label_info.matched_widths`), exact or estimated as ``options`` say;
    NC1, NC2 and NC4 of the layer's class means (NC4 against the model's predictions); NC3
    only where d_l equals the head's width (NaN with a note otherwise); ``h_y = H(K_Y)``
    and ``mi_y = I(K_Z; K_Y)`` (:func:`infoprobe.label_info.label_information`, batch means
    under the batch estimate). Accuracy and loss are the model's. The last layer,
    ``pre_logits``, is the head's input: its row is the :func:`analysis_row`.
    """
    rows = []
    for layer in evaluation.layers:
        try:
            rows.append(_layer_row(checkpoint, evaluation, layer, options, model))
        except InputError as e:
            raise type(e)(f"layer {layer.name}: {e}") from None
    return rows


def _layer_row(
    checkpoint: str,
    evaluation: LayerEvaluated,
    layer: LayerFeatures,
    options: MeasureOptions,
    model: dict | None,
) -> dict:
    z, labels, head = layer.features, evaluation.labels, evaluation.head
    features, matched = matched_widths(z, head)
    result = _interplay(features, labels, matched, options)
    same = layer.dim == head.shape[1]
    collapse = neural_collapse(z, labels, head if same else None, evaluation.logits)
    notes = []
    if not same:
        notes.append(f"nc3 is undefined where layer_dim differs from the head's {head.shape[1]}")
    batch = options.estimate == "batch"
    info = label_information(
        z,
        labels,
        drop_zero_rows=options.drop_zero_rows,
        batch_size=options.batch_size if batch else None,
        seed=options.seed,
    )
    row = _row(checkpoint, evaluation, result, collapse, model, notes)
    row.update(layer=layer.name, layer_dim=layer.dim, pooling=layer.pooling)
    row.update(h_y=info.h_y, mi_y=info.mi_y)
    return {column: row[column] for column in LAYER_COLUMNS}


def per_class_csv(csv: str) -> str:
    """Where ``--per-class`` rows go beside ``--csv FILE``: ``FILE`` with ``.per_class``
    before its suffix (``runs.csv`` -> ``runs.per_class.csv``)."""
    p = Path(csv)
    return str(p.with_name(f"{p.stem}.per_class{p.suffix or '.csv'}"))


class EvaluatedWithLogits(Evaluated, Protocol):
    logits: Tensor | None


def per_class_rows(
    checkpoint: str, evaluation: EvaluatedWithLogits, classes: list[str] | None = None
) -> list[dict]:
    """One row per class present in the labels, with :data:`PER_CLASS_COLUMNS`.

    ``n`` samples; ``accuracy`` and mean cross-entropy ``loss`` over them (NaN without
    logits); ``h_z`` the matrix entropy of the class's own normalised features (nats, 0 when
    they collapse onto one direction, at most ``h_z_max = log min(n, d)``); ``cos_head`` the
    cosine between the centred class mean (class mean minus global mean) and the class's
    head row, which is 1 at neural collapse (self-duality, NC3).
    """
    labels = evaluation.labels.long()
    logits = getattr(evaluation, "logits", None)
    global_mean = evaluation.features.double().mean(0)
    rows = []
    for c in torch.unique(labels).tolist():
        mask = labels == c
        z = evaluation.features[mask]
        accuracy = loss = float("nan")
        if logits is not None:
            accuracy = float((logits[mask].argmax(1) == c).double().mean())
            loss = float(F.cross_entropy(logits[mask].double(), labels[mask]))
        # Zero rows have no direction and are left out of the class's entropy.
        h_z = feature_entropy(z, drop_zero_rows=True)
        h_max = math.log(min(len(z), z.shape[1]))
        centred = z.double().mean(0) - global_mean
        cos = F.cosine_similarity(centred, evaluation.head[c].double(), dim=0)
        rows.append(
            {
                "checkpoint": checkpoint,
                "class": int(c),
                "name": classes[c] if classes and c < len(classes) else str(c),
                "n": int(mask.sum()),
                "accuracy": accuracy,
                "loss": loss,
                "h_z": h_z,
                "h_z_max": h_max,
                "cos_head": float(cos),
            }
        )
    return rows
