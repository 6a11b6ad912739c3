"""Neural collapse NC1-NC4 (Papyan, Han & Donoho, PNAS 2020), from streamable class moments.

Notation: features ``z_i`` in R^d with labels ``y_i``; over the C' classes present, class
means ``mu_c``, their mean ``mu_G = mean_c mu_c`` (the paper's global mean, as its code takes
it), centred means ``m_c = mu_c - mu_G`` (the rows of ``M`` [C', d]) and head rows ``w_c``
(the rows of ``W`` [C', d], those of the present classes). With N samples:

* ``Sigma_W = (1/N) sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T`` and
  ``Sigma_B = (1/C') sum_c m_c m_c^T = M^T M / C'``;
* **NC1** ``= tr(Sigma_W Sigma_B^+) / C'`` (0 at collapse; ``+`` the pseudo-inverse);
* **NC2 equinorm** ``= std_c |m_c| / mean_c |m_c|`` (coefficient of variation, ``std`` with
  the C'-1 denominator as ``torch.std``), and the same for ``|w_c|`` (``_head``); 0 at collapse;
* **NC2 equiangular** ``= mean_{c != c'} |cos(m_c, m_c') + 1/(C'-1)|``, the mean absolute
  deviation of the pairwise cosines from the simplex ETF's ``-1/(C'-1)``, and the same for
  the head rows (``_head``); 0 at collapse;
* **NC3** ``= || W/||W||_F - M/||M||_F ||_F^2`` (self-duality; 0 at collapse);
* **NC4** ``= (1/N) #{i : argmin_c |z_i - mu_c| = argmax_c logit_ic}``, the fraction of
  samples on which the nearest-class-centre classifier agrees with the model (1 at
  collapse; Papyan et al. plot the mismatch, 1 - NC4).

Everything NC1-NC3 needs is a sum over samples (:class:`ClassMoments`: per-class counts and
sums, one d x d scatter), so it accumulates batch by batch. NC4 needs the final class
means, so it is a second look at the samples (:func:`ncc_agreement`). The trace of NC1 is
taken in C' dimensions: ``Sigma_B^+ = C' M^T (G^+)^2 M`` with ``G = M M^T``, so
``NC1 = tr((G^+)^2 M Sigma_W M^T)``, with no d x d pseudo-inverse. All in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

#: The columns NC1-NC4 fill in a row (:data:`infoprobe.rows.COLUMNS`).


@dataclass(frozen=True)
class NeuralCollapse:
    """NC1-NC4 (module doc). NaN where undefined: fewer than two classes present, a centred
    mean or head row of norm 0, no head (NC2 ``_head``, NC3) or no logits (NC4)."""

    nc1: float
    nc2_equinorm: float
    nc2_equiangular: float
    nc3: float
    nc4: float
    nc2_equinorm_head: float
    nc2_equiangular_head: float
    n_classes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClassMoments:
    """Sufficient statistics of NC1-NC3, all float64.

    ``counts`` [C] samples per class; ``sums`` [C, d] per-class sums of ``z - shift``;
    ``scatter`` [d, d] ``sum_i (z_i - shift)(z_i - shift)^T``. ``shift`` [d] is any fixed
    vector (the first batch's mean): shifting keeps the scatter's cancellation small when
    the features have a large common mean, and changes no result.
    """

    counts: Tensor
    sums: Tensor
    scatter: Tensor
    shift: Tensor

    def about(self, shift: Tensor) -> ClassMoments:
        """The same statistics about another ``shift``: with ``a = z - self.shift`` and
        ``delta = self.shift - shift``, ``sum (a + delta)(a + delta)^T = scatter +
        (sum a) delta^T + delta (sum a)^T + N delta delta^T``."""
        delta = self.shift - shift
        total = self.sums.sum(0)
        scatter = (
            self.scatter
            + total.unsqueeze(1) * delta
            + delta.unsqueeze(1) * total
            + self.counts.sum() * delta.unsqueeze(1) * delta
        )
        sums = self.sums + self.counts.unsqueeze(1) * delta
        return ClassMoments(self.counts, sums, scatter, shift)

    def __add__(self, other: ClassMoments) -> ClassMoments:
        """The statistics of both sample sets (``other`` re-expressed about this shift)."""
        if not torch.equal(self.shift, other.shift):
            other = other.about(self.shift)
        return ClassMoments(
            self.counts + other.counts,
            self.sums + other.sums,
            self.scatter + other.scatter,
            self.shift,
        )


def class_moments(
    features: Tensor, labels: Tensor, num_classes: int, shift: Tensor | None = None
) -> ClassMoments:
    """:class:`ClassMoments` of ``features`` [n, d] with ``labels`` [n] in [0, num_classes).

    ``shift`` defaults to the features' mean.
    """
    z = features.detach().to(torch.float64)
    y = labels.detach().to(device=z.device, dtype=torch.int64)
    if shift is None:
        shift = z.mean(0) if len(z) else torch.zeros(z.shape[1], dtype=torch.float64)
    centred = z - shift.to(z.device)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device)
    sums.index_add_(0, y, centred)
    return ClassMoments(counts, sums, centred.mT @ centred, shift.to(z.device))


def class_means(moments: ClassMoments) -> tuple[Tensor, Tensor]:
    """``(present [C] bool, means [C', d])``: the mean of each class that has samples."""
    present = moments.counts > 0
    means = moments.sums[present] / moments.counts[present].unsqueeze(1) + moments.shift
    return present, means


def _pinv_psd(g: Tensor) -> Tensor:
    """Pseudo-inverse of symmetric PSD ``g``; eigenvalues under ``lam_max * size * eps`` are
    round-off of a true zero (``G = M M^T`` is singular: its rows sum to 0)."""
    lam, vec = torch.linalg.eigh((g + g.mT) / 2)
    tol = float(lam.abs().max()) * g.shape[0] * torch.finfo(g.dtype).eps if lam.numel() else 0
    inv = torch.where(lam > tol, 1.0 / lam, torch.zeros_like(lam))
    return (vec * inv) @ vec.mT


def nc1(moments: ClassMoments) -> float:
    """``tr(Sigma_W Sigma_B^+) / C'`` (module doc); NaN with fewer than two classes."""
    present, means = class_means(moments)
    if len(means) < 2:
        return math.nan
    n = moments.counts.sum()
    s = moments.sums[present]
    # N Sigma_W = sum_i (z_i - shift)(...)^T - sum_c s_c s_c^T / n_c  (s_c: shifted sums)
    within = (moments.scatter - (s.mT / moments.counts[present]) @ s) / n
    centred = means - means.mean(0)
    pinv = _pinv_psd(centred @ centred.mT)
    return float(torch.trace(pinv @ pinv @ centred @ within @ centred.mT))


def equinorm(rows: Tensor) -> float:
    """Coefficient of variation of the row norms, ``std/mean`` (``std`` over C'-1)."""
    if len(rows) < 2:
        return math.nan
    norms = torch.linalg.vector_norm(rows, dim=1)
    return float(norms.std() / norms.mean())


def equiangularity(rows: Tensor) -> float:
    """Mean over pairs ``c != c'`` of ``|cos(r_c, r_c') + 1/(C'-1)|``; NaN for a zero row."""
    c = len(rows)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    if c < 2 or bool((norms == 0).any()):
        return math.nan
    unit = rows / norms
    cos = unit @ unit.mT + 1.0 / (c - 1)
    off = ~torch.eye(c, dtype=torch.bool, device=rows.device)
    return float(cos[off].abs().mean())


def self_duality(head: Tensor, centred: Tensor) -> float:
    """``|| W/||W||_F - M/||M||_F ||_F^2`` for rows ``head`` and ``centred`` [C', d]."""
    w_norm, m_norm = torch.linalg.matrix_norm(head), torch.linalg.matrix_norm(centred)
    if len(head) < 2 or w_norm == 0 or m_norm == 0:
        return math.nan
    return float(((head / w_norm - centred / m_norm) ** 2).sum())


def ncc_agreement(
    features: Tensor, means: Tensor, classes: Tensor, predictions: Tensor
) -> tuple[int, int]:
    """``(agreeing, n)``: on how many samples the nearest class mean is the prediction.

    ``means`` [C', d] belong to class indices ``classes`` [C']; ``predictions`` [n] are the
    model's argmax classes. Nearest by Euclidean distance (ties: the lowest class index).
    """
    z = features.detach().to(device=means.device, dtype=torch.float64)
    nearest = classes[torch.cdist(z, means).argmin(1)]
    return int((nearest == predictions.to(nearest.device)).sum()), len(z)


def neural_collapse_of(
    moments: ClassMoments, head: Tensor | None = None, agreement: tuple[int, int] | None = None
) -> NeuralCollapse:
    """NC1-NC4 from class moments, the head [C, d] and the NCC ``agreement`` counts."""
    present, means = class_means(moments)
    centred = means - means.mean(0) if len(means) else means
    nan = math.nan
    rows = None
    if head is not None:
        rows = head.detach().to(device=centred.device, dtype=torch.float64)[present]
    agree, total = agreement if agreement is not None else (0, 0)
    return NeuralCollapse(
        nc1=nc1(moments),
        nc2_equinorm=equinorm(centred),
        nc2_equiangular=equiangularity(centred),
        nc3=self_duality(rows, centred) if rows is not None else nan,
        nc4=agree / total if total else nan,
        nc2_equinorm_head=equinorm(rows) if rows is not None else nan,
        nc2_equiangular_head=equiangularity(rows) if rows is not None else nan,
        n_classes=int(present.sum()),
    )


def neural_collapse(
    features: Tensor, labels: Tensor, head: Tensor | None = None, logits: Tensor | None = None
) -> NeuralCollapse:
    """NC1-NC4 of ``features`` [n, d] with ``labels`` [n], ``head`` [C, d] and the model's
    ``logits`` [n, C] (NC4; NaN without them). One-shot form of
    :class:`infoprobe.metrics.InterplayMetrics`."""
    num_classes = head.shape[0] if head is not None else int(labels.max()) + 1
    moments = class_moments(features, labels, num_classes)
    agreement = None
    if logits is not None:
        present, means = class_means(moments)
        classes = present.nonzero().flatten()
        agreement = ncc_agreement(features, means, classes, logits.argmax(1))
    return neural_collapse_of(moments, head, agreement)
