"""Streaming metrics: MIR/HDR (exact) and NC1-NC4, accumulated batch by batch.

:class:`InterplayMetrics` follows torchmetrics' pattern: ``update`` only accumulates sums
(its states), ``compute`` only derives the values from them, ``merge`` adds another
instance's states (what a distributed ``sum`` reduction does) and ``reset`` clears them.
The math lives in pure functions shared with the one-shot forms:
:func:`infoprobe.info.interplay_from_grams` and :mod:`infoprobe.collapse`.

States (float64):

* ``counts`` [C] samples per class;
* ``grams`` [C, d, d] the Gram of each class's unit feature rows, from which the exact
  route gives H(K_Z), H(K_W) and H(K_Z o K_W) (memory ``8 C d^2`` bytes: 256 MiB for
  C = 100, d = 512; ``interplay=False`` skips it);
* ``moments``: per-class sums and one d x d scatter of the raw features (NC1-NC3);
* with logits, the features and the model's predictions themselves (``n x d``): NC4
  compares the nearest *final* class mean with the prediction, so it needs every sample
  again at the end (the one state that is not a sum).
"""

from __future__ import annotations

import torch
from torch import Tensor

from infoprobe import collapse, info
from infoprobe.errors import InputError


class InterplayMetrics:
    """MIR, HDR and the entropies (exact), and NC1-NC4, of features seen batch by batch.

    >>> metric = InterplayMetrics(num_classes=10)
    >>> for x, y in loader:                       # doctest: +SKIP
    ...     features = model.forward_head(model.forward_features(x), pre_logits=True)
    ...     metric.update(features, y, model.get_classifier()(features))
    >>> values = metric.compute(model.get_classifier().weight)  # doctest: +SKIP

    ``compute(head)`` returns a dict: ``h_z, h_w, h_zw, mi, mir, hdr, n_samples, n_classes,
    note`` (as :func:`infoprobe.info.interplay` on all samples seen, ``estimate="exact"``,
    equal to it up to round-off) and ``nc1, nc2_equinorm, nc2_equiangular, nc3, nc4,
    nc2_equinorm_head, nc2_equiangular_head`` (as :func:`infoprobe.collapse.neural_collapse`).

    Args:
        num_classes: C, the rows of the head.
        interplay: accumulate the per-class Grams for MIR/HDR (else those values are NaN).
        drop_zero_rows: leave samples with an all-zero feature row out of MIR/HDR (their
            direction is undefined; by default ``update`` raises for them). NC uses them.
        max_exact_dim: as for :func:`infoprobe.info.interplay`.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        interplay: bool = True,
        drop_zero_rows: bool = False,
        max_exact_dim: int | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.interplay = interplay
        self.drop_zero_rows = drop_zero_rows
        self.max_exact_dim = max_exact_dim
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen."""
        self.grams: Tensor | None = None
        self.counts: Tensor | None = None
        self.moments: collapse.ClassMoments | None = None
        self.features: list[Tensor] = []
        self.predictions: list[Tensor] = []

    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Add a batch: ``features`` [b, d], ``labels`` [b] in [0, C), ``logits`` [b, C]."""
        z = info._as_float64(features.detach(), "features", 2)
        y = info._check_labels(labels.detach(), z.shape[0], self.num_classes).to(z.device)
        if self.moments is not None and z.shape[1] != self.moments.shift.shape[0]:
            raise InputError(
                f"features have d = {z.shape[1]}, earlier batches had "
                f"d = {self.moments.shift.shape[0]}"
            )
        if logits is not None and tuple(logits.shape) != (z.shape[0], self.num_classes):
            raise InputError(
                f"logits must be [{z.shape[0]}, {self.num_classes}], got {tuple(logits.shape)}"
            )
        if self.interplay:
            self._add_grams(z, y)
        shift = None if self.moments is None else self.moments.shift
        batch = collapse.class_moments(z, y, self.num_classes, shift)
        self.moments = batch if self.moments is None else self.moments + batch
        if logits is not None:
            self.features.append(features.detach())
            self.predictions.append(logits.detach().argmax(1).to(z.device))

    def _add_grams(self, z: Tensor, y: Tensor) -> None:
        if self.drop_zero_rows:
            keep = z.norm(dim=1) > 0
            z, y = z[keep], y[keep]
        zh = info._normalise_rows(z, "features")
        grams = info.class_grams(zh, y, self.num_classes)
        counts = y.bincount(minlength=self.num_classes).to(grams.dtype)
        self.grams = grams if self.grams is None else self.grams + grams
        self.counts = counts if self.counts is None else self.counts + counts

    def merge(self, other: InterplayMetrics) -> None:
        """Add ``other``'s states (another process or shard) to this one's."""
        if other.moments is None:
            return
        self.moments = other.moments if self.moments is None else self.moments + other.moments
        if other.grams is not None:
            self.grams = other.grams if self.grams is None else self.grams + other.grams
            self.counts = other.counts if self.counts is None else self.counts + other.counts
        self.features += other.features
        self.predictions += other.predictions

    def compute(self, head: Tensor) -> dict:
        """The values over every sample seen, for classifier weights ``head`` [C, d]."""
        if self.moments is None:
            raise InputError("no samples: call update() before compute()")
        values: dict = {}
        if self.interplay:
            if self.counts is None or self.counts.sum() == 0:
                raise InputError("every sample had a zero feature row: nothing to measure")
            result = info.interplay_from_grams(
                self.grams, self.counts, head, max_exact_dim=self.max_exact_dim
            )
            values.update(
                {
                    k: getattr(result, k)
                    for k in (
                        "h_z",
                        "h_w",
                        "h_zw",
                        "mi",
                        "mir",
                        "hdr",
                        "n_samples",
                        "n_classes",
                        "note",
                    )
                }
            )
        agreement = None
        if self.features:
            present, means = collapse.class_means(self.moments)
            agreement = collapse.ncc_agreement(
                torch.cat(self.features),
                means,
                present.nonzero().flatten(),
                torch.cat(self.predictions),
            )
        found = collapse.neural_collapse_of(self.moments, head, agreement)
        values.update({k: v for k, v in found.as_dict().items() if k != "n_classes"})
        return values
