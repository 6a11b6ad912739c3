"""The entropy of a PSD matrix, with a finite backward, and the noise floor of an entropy.

``H(K) = -sum_k lam_k log lam_k`` over the eigenvalues of ``K / n`` (natural log, nats,
``0 log 0 = 0``) for a Gram matrix ``K`` of unit rows. Eigen-solves run in float64 on
symmetrised matrices; round-off negatives and zeros are dropped. The backward uses
``dH/dA = U diag(f'(lam)) U^T`` with ``f(lam) = -lam log lam``, which has no
``1/(lam_i - lam_j)`` terms and so stays finite when eigenvalues repeat (neural collapse).

**The noise floor** (:func:`entropy_noise_floor`). Features come out of a network as
float32 numbers, so every entry ``K_ij = zh_i . zh_j`` is known only to the
accuracy of a float32 dot product of two unit vectors of length d:
``|dK_ij| <= gamma_d = d u / (1 - d u)`` with ``u = 2^-24`` (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2002, sec. 3.1). Suppose the true features point one
way, so the true ``K / n`` has the single eigenvalue 1 and ``H = 0``. The perturbation has
``||dK / n||_2 <= ||dK||_F / n <= gamma_d =: delta``, so by Weyl's inequality the top
eigenvalue of the perturbed ``K / n`` is at least ``1 - delta``. Its trace is exactly 1
(unit diagonal), so the other eigenvalues, at most ``r - 1`` of them nonzero with
``r <= min(n, d)`` its rank, sum to ``t <= delta``. The largest entropy of such a spectrum
spreads ``t`` evenly, ``-(1 - t) log(1 - t) + t log((r - 1) / t)``, which increases with
``t`` for ``t <= (r - 1) / r``. Hence float32 round-off alone can give an exactly collapsed
set of features an entropy up to

    H_floor(r, d) = -(1 - delta) log(1 - delta) + delta log((r - 1) / delta)
                  ~ delta (1 + log((r - 1) / delta)),      delta = gamma_d,

and a measured entropy at or below it cannot be told from 0: a ratio that divides by it is
0/0. For r = d = 64, 512, 2048 the floor is 6.7e-5, 5.4e-4 and 2.2e-3 nats. The float64
solve adds ``~ m 2^-53`` per eigenvalue, far below this: the floor is the data's. (Features
made in float16 or bfloat16 carry more noise than this floor accounts for.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from infoprobe.checks import check_finite
from infoprobe.errors import InputError

#: Unit round-off of float32, the precision the features are taken to carry.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def zero_threshold(eigenvalues: Tensor, size: int) -> float:
    """Eigenvalues below this are round-off of a true zero: ``lam_max * size * eps``."""
    top = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return top * max(size, 1) * torch.finfo(eigenvalues.dtype).eps


def _entropy_of_eigenvalues(lam: Tensor) -> Tensor:
    """``-sum lam log lam`` over eigenvalues that sum to 1 in exact arithmetic.

    Round-off is removed before the sum: eigenvalues under :func:`zero_threshold` are true
    zeros (``0 log 0 = 0``), and the rest are divided by their sum, which is 1 up to
    round-off, so that a rank-one matrix has exactly ``H = 0`` rather than ``~1e-16``.
    """
    lam = torch.where(lam > zero_threshold(lam, lam.shape[0]), lam, torch.zeros_like(lam))
    lam = lam / lam.sum()
    return 0.0 - torch.special.xlogy(lam, lam).sum()  # 0.0 - : no -0.0 for a rank-one matrix


class _SpectralEntropy(torch.autograd.Function):
    """``H(A) = -sum p_k log p_k`` with ``p = lam / s`` and ``s`` the sum of the positive
    eigenvalues of symmetric PSD ``A`` (the value :func:`_entropy_of_eigenvalues` returns).

    Backward: ``dH/dlam_k = -(log p_k + H) / s``, so ``dH/dA = U diag(-(log p + H) / s) U^T``;
    the ``+H`` and ``1/s`` come from the renormalisation: for unit trace they are the
    difference ``(1 - H) I`` to ``-(log lam + 1)``. Eigenvalues at round-off zero get
    derivative 0 rather than ``+inf``: every ``A`` here is ``X^T X`` or ``X X^T``, and such
    directions lie in the null space of ``X`` so they contribute nothing to the gradient
    with respect to ``X`` (``d(e log e)/de -> 0``).
    """

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        lam, vec = torch.linalg.eigh(a)
        h = _entropy_of_eigenvalues(lam)
        ctx.save_for_backward(lam, vec, h)
        return h

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        lam, vec, h = ctx.saved_tensors
        positive = lam > zero_threshold(lam, lam.shape[0])
        total = lam[positive].sum()
        p = torch.where(positive, lam, torch.ones_like(lam)) / total
        slope = torch.where(positive, -(torch.log(p) + h) / total, torch.zeros_like(lam))
        return grad_out * (vec * slope) @ vec.mT


def spectral_entropy(a: Tensor) -> Tensor:
    """Entropy ``-sum p log p`` of the eigenvalues ``lam`` of a symmetric PSD matrix, with
    ``p = lam / sum(lam)`` (round-off negatives and zeros dropped).

    ``a``: [m, m], any float dtype, solved in float64 on its device. Returns a 0-dim
    float64 tensor. For unit trace (the matrices of this package) ``p = lam``; otherwise the
    value is the entropy of the renormalised spectrum, and the backward is the true
    gradient of that value. Without grad only the lower triangle is read (as ``eigvalsh``
    does), so no symmetrised copy of a large matrix is made.
    """
    a = a.to(torch.float64)
    if a.shape[0] == 0:
        return a.new_zeros(())
    if a.requires_grad:
        return _SpectralEntropy.apply((a + a.mT) / 2)
    return _entropy_of_eigenvalues(torch.linalg.eigvalsh(a))


def matrix_entropy(gram: Tensor) -> Tensor:
    """Matrix entropy ``H(K) = -sum lam log lam`` over the eigenvalues of ``K / n``.

    ``gram``: [n, n] symmetric PSD with unit diagonal (a normalised Gram matrix), any float
    dtype. Returns a 0-dim float64 tensor in ``[0, log n]`` (natural log, nats).
    Raises :class:`InputError` for a non-square, non-finite, asymmetric or non-unit-diagonal
    matrix, for which the eigenvalues of ``K / n`` would not be a distribution.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InputError(f"gram must be a square [n, n] matrix, got shape {tuple(gram.shape)}")
    check_finite(gram, "gram")
    k = gram.to(torch.float64)
    n = k.shape[0]
    if n == 0:
        raise InputError("gram is empty (n = 0): the entropy needs at least one sample")
    tol = 1e-6 * max(1.0, float(k.abs().max()))
    if float((k - k.mT).abs().max()) > tol:
        raise InputError("gram is not symmetric: pass a Gram matrix K = X X^T")
    if float((torch.diagonal(k) - 1).abs().max()) > 1e-6:
        raise InputError(
            "gram must have a unit diagonal (rows normalised to length 1): "
            "normalise the rows of X before forming K = X X^T"
        )
    return spectral_entropy(k / n)


def entropy_noise_floor(rank: int, dim: int) -> float:
    """``H_floor``: the largest entropy that float32 round-off of the kernel's entries can
    give a kernel whose true entropy is 0 (module doc for the derivation).

    ``rank``: a bound on the kernel's rank (``min(n, d)`` for features, ``min(C', n, d)``
    for the head); ``dim``: the length d of the rows. Returns nats: 0 for ``rank <= 1`` (a
    rank-one kernel has ``H = 0`` exactly), ``log(rank)`` if the round-off bound reached 1.
    """
    if rank <= 1:
        return 0.0
    terms = max(int(dim), 1) * FLOAT32_UNIT_ROUNDOFF
    if terms >= 1:
        return math.log(rank)
    delta = terms / (1 - terms)
    if delta >= (rank - 1) / rank:
        return math.log(rank)
    return -(1 - delta) * math.log1p(-delta) + delta * math.log((rank - 1) / delta)
