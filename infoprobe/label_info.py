"""The label information of a layer's features, and the head's K_W for features of any width.

Notation as in :mod:`infoprobe.info`: ``n`` samples with features ``z_i`` in R^d (rows
normalised, ``zh_i = z_i / |z_i|``), labels ``y_i`` in {0..C-1}, ``n_c`` samples of class c
and the class proportions ``p_c = n_c / n``.

* The label-equality kernel ``K_Y = [y_i == y_j]`` (n x n, PSD, unit diagonal) is block
  diagonal by class with all-ones blocks, so the eigenvalues of ``K_Y / n`` are the
  proportions ``p_c``: ``H(K_Y) = -sum_c p_c log p_c``, the entropy of the labels.
* ``I(K_Z; K_Y) = H(K_Z) + H(K_Y) - H(K_Z o K_Y)``. The Hadamard product ``K_Z o K_Y`` keeps
  the blocks ``Zh_c Zh_c^T`` of each class and zeroes the rest, so the eigenvalues of
  ``(K_Z o K_Y) / n`` are the union over classes of ``p_c`` times the eigenvalues of
  ``K_{Z_c} / n_c`` (which sum to 1 each). By the grouping property of the entropy,
  ``H(K_Z o K_Y) = H(K_Y) + sum_c p_c H(K_{Z_c})``, hence

      ``I(K_Z; K_Y) = H(K_Z) - sum_c p_c H(K_{Z_c})``,

  the matrix-entropy form of ``I(Z; Y) = H(Z) - H(Z | Y)``: 0 when every class spans the
  whole feature spectrum, ``H(K_Z)`` when each class collapses onto one direction. Each
  ``H(K_{Z_c})`` is solved exactly on the smaller of its d x d and n_c x n_c Grams (the
  feature entropy of :mod:`infoprobe.info`), so the cost is ``O(n d^2 + C min(n_c, d)^3)``
  and never more than the ``O(C d^3)`` of the per-class d x d Grams.

``I(K_Z; K_W)`` against a classifier head W [C, d_head] needs only ``K_W = [wh_{y_i} .
wh_{y_j}]``, which depends on the head's Gram ``W W^T`` and not on its width: features of
any width d can be measured against it. :func:`matched_widths` gives features and a head of
one width with both kernels unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from infoprobe.errors import InputError
from infoprobe.info import batch_indices, feature_entropy


@dataclass(frozen=True)
class LabelInformation:
    """``h_y = H(K_Y)``, ``mi_y = I(K_Z; K_Y)`` and the ``h_z = H(K_Z)`` it used (nats), on
    ``n_used`` samples; ``n_batches`` > 1 for the batch estimate (means over batches)."""

    h_y: float
    mi_y: float
    h_z: float
    n_used: int
    n_batches: int = 1


def label_entropy(labels: Tensor) -> float:
    """``H(K_Y) = -sum_c p_c log p_c`` (nats) of integer labels [n], n >= 1."""
    counts = torch.bincount(labels.long()).to(torch.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _exact(z: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """``(H(K_Y), I(K_Z; K_Y), H(K_Z))`` of rows ``z`` [n, d] without zero rows."""
    h_z = feature_entropy(z)
    n = len(labels)
    conditional = 0.0
    for c in labels.unique().tolist():
        rows = labels == c
        conditional += int(rows.sum()) / n * feature_entropy(z[rows])
    return label_entropy(labels), h_z - conditional, h_z


def label_information(
    features: Tensor,
    labels: Tensor,
    *,
    drop_zero_rows: bool = False,
    batch_size: int | None = None,
    seed: int = 0,
) -> LabelInformation:
    """``H(K_Y)`` and ``I(K_Z; K_Y)`` (module doc) of ``features`` [n, d] with ``labels`` [n].

    Exact, in float64. ``drop_zero_rows`` leaves out samples whose feature row is zero (no
    direction); otherwise such a row raises :class:`InputError`, as for
    :func:`infoprobe.info.interplay`. ``batch_size``: the mini-batch estimate instead (taken to be
    the paper's: assumed), the mean of both values over :func:`infoprobe.info.batch_indices` ``(n,
    batch_size, seed)``, the batches that estimate uses for ``H(K_Z)``.
    """
    if features.ndim != 2 or labels.ndim != 1 or len(labels) != len(features):
        raise InputError(
            f"features [n, d] and labels [n] must hold the same samples, got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    z, y = features.detach(), labels.detach().long().to(features.device)
    if drop_zero_rows:
        keep = torch.linalg.vector_norm(z.double(), dim=1) > 0
        z, y = z[keep], y[keep]
    if len(y) == 0:
        raise InputError("no samples with a feature direction: nothing to measure")
    if batch_size is None:
        return LabelInformation(*_exact(z, y), n_used=len(y))
    parts = batch_indices(len(y), batch_size, seed)
    sums = torch.zeros(3, dtype=torch.float64)
    for idx in parts:
        idx = idx.to(y.device)
        sums += torch.tensor(_exact(z[idx], y[idx]), dtype=torch.float64)
    h_y, mi_y, h_z = (float(s) / len(parts) for s in sums)
    return LabelInformation(h_y, mi_y, h_z, sum(len(i) for i in parts), len(parts))


def matched_widths(features: Tensor, head: Tensor) -> tuple[Tensor, Tensor]:
    """Features [n, d'] and a head [C, d'] of one width with ``K_Z`` and ``K_W`` unchanged.

    ``features`` [n, d], ``head`` [C, d_head]. Equal widths: both as given. ``d > d_head``:
    the head with ``d - d_head`` zero columns (dot products and norms unchanged).
    ``d < d_head``: the head rotated onto the span of its rows, ``W Q`` [C, k] with ``Q``
    [d_head, k] the orthonormal factor of ``W^T = Q R`` (k = min(C, d_head)), whose Gram
    ``W Q Q^T W^T`` is ``W W^T``; then the narrower of the two gets zero columns. The
    rotated head is float64 (its Gram equals ``W W^T`` to float64 round-off).
    """
    d, d_head = features.shape[1], head.shape[1]
    if d == d_head:
        return features, head
    if d > d_head:
        return features, _padded(head, d)
    w = head.detach().to(torch.float64)
    q, _ = torch.linalg.qr(w.mT, mode="reduced")
    rotated = w @ q
    k = rotated.shape[1]
    if d >= k:
        return features, _padded(rotated, d)
    return _padded(features, k), rotated


def _padded(x: Tensor, width: int) -> Tensor:
    """``x`` [m, w] with ``width - w`` zero columns appended."""
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], 1)
