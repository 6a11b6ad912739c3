"""Exact routes: small PSD matrices whose nonzero eigenvalues are those of ``K / n``.

No n x n matrix is formed when a smaller exact one exists:

* ``K_Z``: ``Zh^T Zh / n`` (d x d) when d < n;
* ``K_W = P M P^T`` with ``M = Wh Wh^T`` and ``P`` the one-hot labels: ``D^1/2 M D^1/2 / n``
  (C x C, ``D`` the class counts), since ``P D^-1/2`` has orthonormal columns;
* ``K_Z o K_W = Phi Phi^T`` with ``Phi_i = zh_i (x) l_{y_i}`` and ``M = L L^T``:
  ``Phi^T Phi / n = sum_c (Zh_c^T Zh_c) (x) (l_c l_c^T) / n`` of size k*r, after ``Zh`` is
  rotated onto its k-dimensional row space and ``L`` is the rank-r factor of ``M``.

The route with the smallest matrix is chosen; every function takes the unit rows of
:func:`infoprobe.checks.prepare` (float64) and returns float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infoprobe.entropy import spectral_entropy, zero_threshold


def row_space_coordinates(x: Tensor) -> Tensor:
    """``x`` [n, p] rotated onto its numerical row space: [n, k] with ``x x^T`` unchanged.

    ``x = (x V_k) V_k^T`` up to directions with ``sigma^2 <= sigma_max^2 * p * eps``, whose
    contribution to ``x x^T`` is round-off.
    """
    lam, vec = torch.linalg.eigh(x.mT @ x)
    keep = lam > zero_threshold(lam, max(x.shape))
    return x @ vec[:, keep]


def rank_factor(m: Tensor) -> Tensor:
    """``L`` [C, r] with ``L L^T = m`` for symmetric PSD ``m``, r its numerical rank."""
    lam, vec = torch.linalg.eigh((m + m.mT) / 2)
    keep = lam > zero_threshold(lam, m.shape[0])
    return vec[:, keep] * lam[keep].sqrt()


def feature_matrix(zh: Tensor) -> Tensor:
    """K_Z / n through the smaller of ``Zh^T Zh`` (d x d) and ``Zh Zh^T`` (n x n)."""
    n, d = zh.shape
    return (zh.mT @ zh if d < n else zh @ zh.mT) / n


def head_matrix(wh: Tensor, labels: Tensor) -> Tensor:
    """K_W / n as ``D^1/2 M D^1/2 / n`` over the classes present (C' x C')."""
    return head_matrix_of_counts(wh, torch.bincount(labels, minlength=wh.shape[0]))


def head_matrix_of_counts(wh: Tensor, counts: Tensor) -> Tensor:
    """K_W / n from the class counts ``D`` [C] alone."""
    counts = counts.to(wh.dtype)
    present = counts > 0
    scaled = wh[present] * counts[present].sqrt().unsqueeze(1)
    return scaled @ scaled.mT / counts.sum()


def class_grams(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[C, k, k]``: the Gram ``Z_c^T Z_c`` of each class's rows of ``z`` [n, k] (zero when
    the class has none), in ``z``'s dtype."""
    # One k x k Gram per class; a loop keeps memory at O(C k^2) rather than O(n C k).
    return torch.stack([z[labels == c].mT @ z[labels == c] for c in range(num_classes)])


def kronecker_sum(grams: Tensor, factor: Tensor, n: int) -> Tensor:
    """``sum_c G_c (x) (l_c l_c^T) / n`` for per-class Grams ``grams`` [C, k, k] and the
    rank factor ``factor`` [C, r]: [k*r, k*r], row ``a*r + p``."""
    k, r = grams.shape[1], factor.shape[1]
    outer = factor.unsqueeze(2) * factor.unsqueeze(1)
    joint = torch.einsum("cab,cpq->apbq", grams, outer)
    return joint.reshape(k * r, k * r) / n


def _khatri_rao_matrix(z: Tensor, labels: Tensor, factor: Tensor) -> Tensor:
    """``sum_c (Z_c^T Z_c) (x) (l_c l_c^T) / n`` for ``K_Z o K_W = Phi Phi^T``.

    ``z`` [n, k] row factor of K_Z, ``factor`` [C, r] with ``L L^T = M``. Returns [k*r, k*r],
    indexed like ``Phi_i = z_i (x) l_{y_i}`` (row ``a*r + p``). Costs ``O(n k^2 + C k^2 r^2)``.
    """
    return kronecker_sum(class_grams(z, labels, factor.shape[0]), factor, z.shape[0])


def hadamard_matrix(za: Tensor, zb: Tensor) -> Tensor:
    """``(K_A o K_B) / n`` for row factors ``za`` [n, p] and ``zb`` [n, q].

    ``Phi_i = za_i (x) zb_i`` gives ``Phi^T Phi`` of size p*q; the n x n product is used
    when that is not smaller.
    """
    n, p = za.shape
    q = zb.shape[1]
    if p * q < n:
        phi = (za.unsqueeze(2) * zb.unsqueeze(1)).reshape(n, p * q)
        return phi.mT @ phi / n
    return (za @ za.mT) * (zb @ zb.mT) / n


def _dense_joint(zh: Tensor, labels: Tensor, gram: Tensor) -> Tensor:
    """``(K_Z o K_W) / n`` as one n x n matrix, multiplied in place by row blocks.

    The peak is the n x n matrix plus one block of rows, not three n x n matrices: at
    n = 50,000 each is 20 GB in float64.
    """
    n = zh.shape[0]
    k = zh @ zh.mT
    step = max(1, (1 << 24) // n)
    for start in range(0, n, step):
        k[start : start + step].mul_(gram[labels[start : start + step]][:, labels])
    return k.div_(n)


def joint_matrix(
    zh: Tensor,
    labels: Tensor,
    wh: Tensor,
    gram: Tensor | None = None,
    factor: Tensor | None = None,
) -> Tensor:
    """(K_Z o K_W) / n through the smaller of the n x n and Khatri-Rao routes.

    ``gram`` (``M = Wh Wh^T``, [C, C]) and ``factor`` (its rank factor ``L``) may be passed
    in when many sample sets share one head (the batch estimate).
    """
    n, d = zh.shape
    differentiable = zh.requires_grad or wh.requires_grad
    if gram is None:
        gram = wh @ wh.mT
    if factor is None:
        # Rank compression is not differentiable; Wh itself is a factor of M (r = d).
        factor = wh if differentiable else rank_factor(gram)
    if d * factor.shape[1] >= n:
        if differentiable:
            return (zh @ zh.mT) * gram[labels][:, labels] / n
        return _dense_joint(zh, labels, gram)
    z = zh if zh.requires_grad else row_space_coordinates(zh)
    return _khatri_rao_matrix(z, labels, factor)


def joint_size(n: int, d: int, num_classes: int) -> int:
    """Upper bound of the joint route's matrix side (before rank compression)."""
    return min(n, d * min(num_classes, d))


def entropies(
    zh: Tensor,
    labels: Tensor,
    wh: Tensor,
    *,
    gram: Tensor | None = None,
    factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``(H(K_Z), H(K_W), H(K_Z o K_W))`` as 0-dim float64 tensors.

    Inputs as returned by :func:`infoprobe.checks.prepare`. Differentiable in ``zh`` and
    ``wh``; the route for each entropy is the smallest exact one (module doc).
    ``gram``/``factor``: see :func:`joint_matrix`.
    """
    h_z = spectral_entropy(feature_matrix(zh))
    h_w = spectral_entropy(head_matrix(wh, labels))
    h_zw = spectral_entropy(joint_matrix(zh, labels, wh, gram, factor))
    return h_z, h_w, h_zw


def between_joint(ah: Tensor, bh: Tensor) -> Tensor:
    """Exact ``H(K_A o K_B)`` for unit rows ``ah`` [n, p] and ``bh`` [n, q]."""
    n = ah.shape[0]
    ca = row_space_coordinates(ah) if ah.shape[1] < n else ah
    cb = row_space_coordinates(bh) if bh.shape[1] < n else bh
    return spectral_entropy(hadamard_matrix(ca, cb))


def between_entropies(ah: Tensor, bh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``(H(K_A), H(K_B), H(K_A o K_B))`` for unit rows ``ah`` [n, p], ``bh`` [n, q]."""
    h_a, h_b = spectral_entropy(feature_matrix(ah)), spectral_entropy(feature_matrix(bh))
    return h_a, h_b, between_joint(ah, bh)
