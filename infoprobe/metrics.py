"""Streaming MIR, HDR, the entropies and NC1-NC4 as a ``torchmetrics.Metric``.

:class:`InterplayMetrics` accumulates sufficient statistics batch by batch (``update`` only
adds, ``compute`` only derives), synchronises them across processes through torchmetrics'
``add_state(..., dist_reduce_fx=...)`` reductions, and returns the values of an ``infoprobe
analyze`` row over every sample seen. The math is that of the one-shot functions
(:func:`infoprobe.info.interplay`, :func:`infoprobe.info.interplay_from_grams` and
:mod:`infoprobe.collapse`), so the values equal them on the same samples up to round-off.

States (float64 unless said) for C classes and d-dimensional features ``z_i`` with unit rows
``zh_i = z_i / |z_i|``:

* ``counts`` [C], ``sums`` [C, d] (``sum_{y_i = c} z_i``) and ``scatter`` [d, d]
  (``sum_i z_i z_i^T``): NC1-NC3 need only the class means and the within-class scatter
  ``sum_i z_i z_i^T - sum_c s_c s_c^T / n_c``. The sums are taken about the origin, because
  a shift would not survive the plain sums of a distributed reduction; the cancellation
  costs about ``eps * |mean|^2 / sigma_W^2`` of the within-class scatter (float64 eps).
* The joint entropy ``H(K_Z o K_W)``: while ``n d <= C d^2`` (``n <= C d``) the metric keeps
  the feature rows themselves (``features`` [n, d], ``labels`` [n] int64) and computes as the
  one-shot :func:`~infoprobe.info.interplay` does on them (``estimate`` as there). Once
  ``n > C d`` it folds them into the per-class Grams ``class_grams`` [C, d, d] =
  ``sum_{y_i = c} zh_i zh_i^T`` (``gram_counts`` [C] samples) and adds every later sample to
  those; their sum is ``Zh^T Zh``, which gives H(K_Z), and with the head they give H(K_W) and
  the exact joint entropy (:func:`~infoprobe.info.interplay_from_grams`; past
  ``max_exact_dim`` the joint values are NaN with a note, as no estimator works on Grams).
  ``estimate="batch"`` and ``"slq"`` need the rows, so they never fold.
* ``head`` [C, d]: the classifier weights given to the last ``update``.
* With logits: ``predictions`` [n] int64 (argmax; -1 for a batch without logits) beside the
  kept rows, and the sums ``correct``, ``cross_entropy`` and ``scored`` for the accuracy
  and the mean cross-entropy (in float64; the one-shot pass averages float32 logits, so
  ``loss`` agrees with it to float32 round-off).

Memory: O(min(C d^2, n d) + d^2 + C d) float64 numbers: 8 n d bytes for the rows while
``n <= C d``, then 8 C d^2 for the Grams plus the first C d rows (at most as much again).

NC4 (the agreement of the nearest-class-mean classifier with the model) needs each sample
again once the class means are final. It is measured on a fixed probe set: the samples whose
rows the metric keeps, against the final means of all samples. That is every sample while
``n <= C d`` (the one-shot value: the whole probe set of
:class:`~infoprobe.integrations.lightning.InterplayCallback` fits), else the first ``C d``
samples of each process, and ``note`` says so. The other choice, the means of the previous
``compute``, would measure the current model against an older one's means.

Distributed: each process updates with its own samples; ``compute`` sums the states of all
processes (torchmetrics' sync), so every process gets the values of all samples. The sums
are exact; the kept rows are gathered (``cat``). Processes first agree on d and on whether
the rows were folded, so a process that saw few samples (or none, when ``num_features`` is
given) takes part. ``head`` is reduced to the last process's (DDP keeps them equal).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from infoprobe import checks, collapse, info, routes
from infoprobe.errors import InputError
from infoprobe.schema import NC_COLUMNS

__all__ = ["InterplayMetrics"]

_F64 = torch.float64
#: ``estimate`` values whose joint entropy needs the feature rows (so they never fold).
_ROW_ESTIMATES = ("batch", "slq")
#: Sum states, and the kept-row states (reduced by concatenation).
_SUMS = (
    "counts",
    "sums",
    "scatter",
    "gram_counts",
    "class_grams",
    "correct",
    "cross_entropy",
    "scored",
)
_ROWS = ("features", "labels", "predictions")


def _last_head(stacked: Tensor) -> Tensor:
    """Reduction of the ``head`` state: the last of the stacked heads that was given (a
    process without samples holds NaN). The processes of one DDP run hold the same head."""
    given = ~torch.isnan(stacked.flatten(1)).any(1)
    return stacked[given][-1] if bool(given.any()) else stacked[-1]


def _cat(state: list[Tensor] | Tensor, empty: Tensor) -> Tensor:
    """A row state as one tensor (a list until synchronised, a tensor after)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else empty


class InterplayMetrics(Metric):
    """MIR, HDR, the entropies, NC1-NC4, accuracy and loss of features seen batch by batch.

    >>> metric = InterplayMetrics(num_classes=10)
    >>> for x, y in loader:                                      # doctest: +SKIP
    ...     z = model.forward_head(model.forward_features(x), pre_logits=True)
    ...     metric.update(z, y, model.get_classifier().weight, model.get_classifier()(z))
    >>> row = metric.compute()                                   # doctest: +SKIP

    ``update(features [b, d], labels [b], head [C, d], logits [b, C] = None)``: the head is
    given with every batch (``compute`` takes no arguments, as torchmetrics and
    ``MetricCollection`` call it) and the last one given is used. ``compute()`` returns a
    dict with the keys of an analyze row that apply: ``n_samples, n_classes,
    classes_present, accuracy, loss, h_z, h_w, h_zw, mi, mir, hdr, mir_nc, hdr_nc, nc1,
    nc2_equinorm, nc2_equiangular, nc3, nc4, h_zw_err, mi_err, mir_err, mir_lower, estimate,
    n_used, n_batches, note``; accuracy, loss and nc4 need the logits (NaN with a note
    without). ``forward`` returns the same for one batch and adds it to the states; ``reset``
    forgets every sample. The states, the memory (O(min(C d^2, n d) + d^2 + C d)), the NC4
    probe set and the synchronisation are described in the module docstring.

    Args:
        num_classes: C, the rows of the head.
        num_features: d; allocates the states at once (else at the first ``update``). Give
            it under DDP when a process may see no sample.
        estimate, batch_size, seed, max_exact_dim: as for :func:`infoprobe.info.interplay`.
        drop_zero_rows: leave samples with an all-zero feature row out of the entropies
            (their direction is undefined; by default ``update`` raises). NC1-NC4 use them.
        kwargs: torchmetrics' options (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = None
    # forward updates twice: a batch's states can have another layout than the total's
    full_state_update = True

    def __init__(
        self,
        num_classes: int,
        num_features: int | None = None,
        *,
        estimate: info.Estimate = "auto",
        batch_size: int = info.DEFAULT_BATCH_SIZE,
        seed: int = 0,
        drop_zero_rows: bool = False,
        max_exact_dim: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_classes", num_classes), ("num_features", num_features)):
            if value is not None and (type(value) is not int or value < 1):
                raise InputError(f"{name} must be a positive int, got {value!r}")
        routes.check_estimate(estimate)
        self.num_classes = num_classes
        self.estimate, self.batch_size, self.seed = estimate, batch_size, seed
        self.drop_zero_rows, self.max_exact_dim = drop_zero_rows, max_exact_dim
        c, d = num_classes, num_features
        for name, shape in (("counts", (c,)), ("gram_counts", (c,)), ("class_grams", (0,))):
            self.add_state(name, torch.zeros(shape, dtype=_F64), dist_reduce_fx="sum")
        for name, shape in (("sums", (c, d)), ("scatter", (d, d))):
            self.add_state(name, torch.zeros(shape if d else (0,), dtype=_F64), "sum")
        for name in ("correct", "cross_entropy", "scored"):
            self.add_state(name, torch.zeros((), dtype=_F64), dist_reduce_fx="sum")
        self.add_state("head", torch.zeros(0, dtype=_F64), dist_reduce_fx=_last_head)
        for name in _ROWS:
            self.add_state(name, [], dist_reduce_fx="cat")
        # The options that decide what update stores, as a state: MetricCollection shares
        # the states of metrics whose states are equal, which must then store alike.
        stores = [self.estimate not in _ROW_ESTIMATES, drop_zero_rows]
        self.add_state("stores", torch.tensor(stores, dtype=_F64), dist_reduce_fx="max")

    # ------------------------------------------------------------------------- update

    def update(
        self, features: Tensor, labels: Tensor, head: Tensor, logits: Tensor | None = None
    ) -> None:
        """Add a batch: ``features`` [b, d], ``labels`` [b] in [0, C), the classifier
        weights ``head`` [C, d] (bias excluded) and the model's ``logits`` [b, C]."""
        z = checks.as_float64(_detached(features), "features", 2)
        n, d = z.shape
        y = checks.check_labels(_detached(labels), n, self.num_classes).to(z.device)
        w = self._checked_head(head, d).to(z.device)
        scores = self._checked_logits(logits, n, z.device)
        if self.scatter.numel() and d != self.scatter.shape[0]:
            raise InputError(f"features have d = {d}, earlier batches had d = {self.dim}")
        keep = torch.linalg.vector_norm(z, dim=1) > 0
        if not self.drop_zero_rows and not bool(keep.all()):
            checks.normalise_rows(z, "features")  # raises, naming the rows
        # every check passed: now change the states
        self._allocate(d, z.device)
        self.counts += torch.bincount(y, minlength=self.num_classes).to(_F64)
        self.sums.index_add_(0, y, z)
        self.scatter += z.mT @ z
        predictions = torch.full((n,), -1, dtype=torch.int64, device=z.device)
        if scores is not None:
            predictions = scores.argmax(1)
            self.correct += (predictions == y).sum()
            self.cross_entropy += F.cross_entropy(scores, y, reduction="sum")
            self.scored += n
        if self.folded:
            self._add_grams(z[keep], y[keep])
        else:
            self.features.append(z)
            self.labels.append(y)
            self.predictions.append(predictions)
            self._fold_if_due()
        self.head = w

    def _checked_head(self, head: Tensor, d: int) -> Tensor:
        if not isinstance(head, Tensor) or tuple(head.shape) != (self.num_classes, d):
            shape = tuple(head.shape) if isinstance(head, Tensor) else type(head).__name__
            raise InputError(
                f"head must be the classifier weights [{self.num_classes}, {d}] for these "
                f"features, got {shape}: update(features, labels, head, logits=None)"
            )
        return checks.as_float64(head.detach(), "head", 2)

    def _checked_logits(self, logits: Tensor | None, n: int, device) -> Tensor | None:
        if logits is None:
            return None
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (n, self.num_classes):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise InputError(f"logits must be [{n}, {self.num_classes}], got {shape}")
        return checks.as_float64(logits.detach(), "logits", 2).to(device)

    def _allocate(self, d: int, device) -> None:
        """The d-sized sum states, zero, at the first batch (unless ``num_features`` was)."""
        if not self.scatter.numel():
            self.sums = torch.zeros(self.num_classes, d, dtype=_F64, device=device)
            self.scatter = torch.zeros(d, d, dtype=_F64, device=device)

    @property
    def dim(self) -> int | None:
        """d, once known."""
        return int(self.scatter.shape[0]) if self.scatter.numel() else None

    @property
    def folded(self) -> bool:
        """Whether the rows were folded into per-class Grams (module doc)."""
        return bool(self.class_grams.numel())

    def _kept(self) -> int:
        return sum(len(t) for t in self.labels) if isinstance(self.labels, list) else 0

    def _add_grams(self, z: Tensor, y: Tensor) -> None:
        zh = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
        self.class_grams += info.class_grams(zh, y, self.num_classes)
        self.gram_counts += torch.bincount(y, minlength=self.num_classes).to(_F64)

    def _fold_if_due(self) -> None:
        """Fold once the kept rows outgrow the Grams (``n > C d``), unless the estimate
        needs the rows."""
        if self.folded or self.estimate in _ROW_ESTIMATES:
            return
        if self._kept() > self.num_classes * self.dim:
            self._fold()

    def _fold(self) -> None:
        """Move the kept rows into per-class Grams; keep the first C d rows for NC4."""
        z, y, p = self._rows()
        d = self.dim
        self.class_grams = torch.zeros(self.num_classes, d, d, dtype=_F64, device=z.device)
        keep = torch.linalg.vector_norm(z, dim=1) > 0
        self._add_grams(z[keep], y[keep])
        m = self.num_classes * d
        self.features, self.labels, self.predictions = [z[:m]], [y[:m]], [p[:m]]

    def _rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """The kept ``(features [m, d], labels [m], predictions [m])``."""
        dev = self.counts.device
        index = torch.zeros(0, dtype=torch.int64, device=dev)
        return (
            _cat(self.features, torch.zeros(0, self.dim or 0, dtype=_F64, device=dev)),
            _cat(self.labels, index),
            _cat(self.predictions, index),
        )

    # ------------------------------------------------------------------------- processes

    def _align(self, d: int, folded: bool) -> None:
        """Give the states the layout agreed with other processes or metrics: d-sized sums,
        a (NaN) head, Grams when any side folded, typed row lists for the gather."""
        self._allocate(d, self.counts.device)
        if not self.head.numel():
            self.head = torch.full((self.num_classes, d), math.nan, dtype=_F64)
            self.head = self.head.to(self.counts.device)
        if folded and not self.folded:
            self._fold()
        if isinstance(self.labels, list) and not self.labels:
            z, y, p = self._rows()
            self.features, self.labels, self.predictions = [z], [y], [p]

    def _sync_dist(self, dist_sync_fn=gather_all_tensors, process_group=None) -> None:
        """Agree on the layout (d, folded) with the other processes, then torchmetrics'
        gather and reductions."""
        group = process_group or self.process_group
        d = self.dim or 0
        layout = [d, -(d or 2**62), int(self.folded)]
        agreed = torch.tensor(layout, dtype=torch.int64, device=self.counts.device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=group)
        high, low, folded = agreed.tolist()
        if high:
            if -low != high:
                raise InputError(f"processes saw features of different sizes: d = {-low}, {high}")
            self._align(high, bool(folded))
        super()._sync_dist(dist_sync_fn, process_group)

    def merge_state(self, incoming: InterplayMetrics) -> None:  # type: ignore[override]
        """Add another metric's samples (another shard of the data) to this one's; rows are
        kept in the order self, then ``incoming`` (left unchanged)."""
        if not isinstance(incoming, InterplayMetrics) or incoming.num_classes != self.num_classes:
            raise InputError(f"merge_state takes an InterplayMetrics({self.num_classes})")
        other = copy.deepcopy(incoming)
        dims = {m.dim for m in (self, other) if m.dim is not None}
        if len(dims) > 1:
            raise InputError(f"the metrics saw features of different sizes d = {sorted(dims)}")
        if not dims:
            return
        d, folded = dims.pop(), self.folded or other.folded
        for m in (self, other):
            m._align(d, folded)
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in _ROWS:
            setattr(self, name, [*getattr(self, name), *getattr(other, name)])
        self.head = _last_head(torch.stack([other.head, self.head]))
        self._fold_if_due()
        self._update_count += incoming.update_count
        self._computed = None

    # ------------------------------------------------------------------------- compute

    def compute(self) -> dict:
        """The analyze-row values over every sample seen (class doc)."""
        total = int(self.counts.sum())
        if total == 0:
            raise InputError("no samples: call update() before compute()")
        result = self._interplay()
        moments = collapse.ClassMoments(
            self.counts, self.sums, self.scatter, torch.zeros_like(self.scatter[0])
        )
        agreement, notes = self._agreement(moments, total)
        found = collapse.neural_collapse_of(moments, self.head, agreement)
        scored = int(self.scored) == total
        optimum = info.nc_optimum(self.num_classes) if self.num_classes >= 2 else None
        return {
            "n_samples": result.n_samples,
            "n_classes": self.num_classes,
            "classes_present": int((self.counts > 0).sum()),
            "accuracy": float(self.correct) / total if scored else math.nan,
            "loss": float(self.cross_entropy) / total if scored else math.nan,
            **{k: getattr(result, k) for k in ("h_z", "h_w", "h_zw", "mi", "mir", "hdr")},
            "mir_nc": optimum.mir if optimum else math.nan,
            "hdr_nc": optimum.hdr if optimum else math.nan,
            **{k: getattr(found, k) for k in NC_COLUMNS},
            **{k: _nan(getattr(result, k)) for k in ("h_zw_err", "mi_err", "mir_err")},
            "mir_lower": _nan(result.mir_lower),
            "estimate": result.label,
            "n_used": result.n_used,
            "n_batches": result.n_batches,
            "note": "; ".join(filter(None, [result.note, *notes])),
        }

    def _interplay(self) -> info.Interplay:
        if self.folded:
            if not int(self.gram_counts.sum()):
                raise InputError("every sample had a zero feature row: nothing to measure")
            return info.interplay_from_grams(
                self.class_grams, self.gram_counts, self.head, max_exact_dim=self.max_exact_dim
            )
        z, y, _ = self._rows()
        return info.interplay(
            z,
            y,
            self.head,
            estimate=self.estimate,
            batch_size=self.batch_size,
            seed=self.seed,
            drop_zero_rows=self.drop_zero_rows,
            max_exact_dim=self.max_exact_dim,
        )

    def _agreement(
        self, moments: collapse.ClassMoments, total: int
    ) -> tuple[tuple[int, int] | None, list[str]]:
        """NC4's ``(agreeing, n)`` on the kept rows, and the notes on what it covers."""
        z, _, predictions = self._rows()
        if int(self.scored) < total:
            return None, ["nc4, accuracy and loss need the model's logits for every sample"]
        present, means = collapse.class_means(moments)
        found = collapse.ncc_agreement(z, means, present.nonzero().flatten(), predictions)
        if len(z) == total:
            return found, []
        return found, [
            f"nc4 on the first {len(z)} of {total} samples (the rows kept beside the "
            "per-class Grams)"
        ]


def _detached(x):
    return x.detach() if isinstance(x, Tensor) else x


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
