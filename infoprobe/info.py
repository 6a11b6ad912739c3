"""Matrix information quantities of Song et al. (ICML 2024), computed exactly and fast.

Notation (the README's "What it measures"): ``n`` samples, features ``z_i`` in R^d, labels
``y_i`` in {0..C-1}, head rows ``w_c`` in R^d (bias excluded). Rows are normalised to unit
length, ``zh_i = z_i/|z_i|`` and ``wh_c = w_c/|w_c|``, and

* ``K_Z = [zh_i . zh_j]`` and ``K_W = [wh_{y_i} . wh_{y_j}]`` are n x n, PSD, unit diagonal;
* ``H(K) = -sum_k lam_k log lam_k`` over the eigenvalues of ``K / n`` (nats, ``0 log 0 = 0``);
* ``I(K_Z; K_W) = H(K_Z) + H(K_W) - H(K_Z o K_W)`` with ``o`` the Hadamard product;
* ``MIR = I / min(H_Z, H_W)`` and ``HDR = |H_Z - H_W| / max(H_Z, H_W)``.

This module is the public interface; the math lives in its neighbours:
:mod:`infoprobe.entropy` (the entropy of a PSD matrix and the noise floor of an entropy),
:mod:`infoprobe.exact` (exact routes that never form an n x n matrix when a smaller one exists),
:mod:`infoprobe.slq` (the estimator past them), :mod:`infoprobe.routes` (the route names and
``max_exact_dim``), :mod:`infoprobe.batch` (the mini-batch estimate, taken to be the paper's:
assumed) and :mod:`infoprobe.result` (MI, the ratios and the degenerate-value rule: a ratio whose
denominator is at or below its float32 noise floor is NaN with a note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from infoprobe.batch import batch_indices, batch_joint, batch_label, batch_mean
from infoprobe.checks import (
    as_float64,
    normalise_rows,
    prepare,
    unit_head,
    zero_head_classes,
)
from infoprobe.defaults import DEFAULT_BATCH_SIZE
from infoprobe.entropy import entropy_noise_floor, matrix_entropy, spectral_entropy, zero_threshold
from infoprobe.errors import InputError
from infoprobe.exact import (
    between_entropies,
    between_joint,
    class_grams,
    entropies,
    feature_matrix,
    head_matrix,
    head_matrix_of_counts,
    joint_size,
    kronecker_sum,
    rank_factor,
)
from infoprobe.result import Interplay, Side, build
from infoprobe.routes import (
    DEFAULT_MAX_EXACT_DIM,
    ESTIMATES,
    Estimate,
    Joint,
    check_estimate,
    check_size,
    default_max_exact_dim,
    exact_limit,
    joint_entropy,
    refused,
)

# The names the rest of the package imports from here.
__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_EXACT_DIM",
    "ESTIMATES",
    "Estimate",
    "Interplay",
    "NCOptimum",
    "batch_indices",
    "class_grams",
    "default_max_exact_dim",
    "entropies",
    "entropy_noise_floor",
    "feature_entropy",
    "interplay",
    "interplay_between",
    "interplay_from_grams",
    "matrix_entropy",
    "nc_optimum",
    "prepare",
    "spectral_entropy",
]


@dataclass(frozen=True)
class NCOptimum:
    """MIR and HDR at neural collapse for ``num_classes`` balanced classes (Thm 4.2)."""

    num_classes: int
    mir: float
    hdr: float
    note: str = ""


def nc_optimum(num_classes: int) -> NCOptimum:
    """Closed-form MIR and HDR at neural collapse (Song et al., Thm 4.2 / Cor 4.3).

    For C >= 3 balanced classes whose features collapse onto a simplex-ETF head,
    ``HDR = 0`` and ``MIR = 1/(C-1) + (C-2)/(C-1) * log(C-2)/log(C-1)``
    (C = 3: 0.5; C = 10: 0.95235...; C = 100: 0.99781...). For C = 2 both entropies are
    zero at collapse, so both ratios are 0/0: NaN with a note.
    """
    c = int(num_classes)
    if c != num_classes or c < 2:
        raise InputError(f"nc_optimum needs an integer number of classes >= 2, got {num_classes!r}")
    if c == 2:
        note = "C = 2: both entropies are 0 at neural collapse, so MIR and HDR are undefined"
        return NCOptimum(2, math.nan, math.nan, note)
    mir = 1.0 / (c - 1) + (c - 2) / (c - 1) * math.log(c - 2) / math.log(c - 1)
    return NCOptimum(c, mir, 0.0)


# --------------------------------------------------------------------------------------
# Features and head
# --------------------------------------------------------------------------------------


def _sides(n: int, d: int, classes: int) -> tuple[Side, Side]:
    """The noise floors of H(K_Z) (rank <= min(n, d)) and H(K_W) (rank <= min(C', n, d))."""
    return (
        Side("h_z", entropy_noise_floor(min(n, d), d)),
        Side("h_w", entropy_noise_floor(min(classes, n, d), d)),
    )


def _batch_interplay(
    zh: Tensor, y: Tensor, wh: Tensor, batch_size: int, seed: int, limit: int | None
) -> Interplay:
    """The batch estimate (taken to be the paper's: assumed): mean entropies over
    :func:`batch_indices` of prepared rows."""
    n, d = zh.shape
    num_classes = wh.shape[0]
    gram = wh @ wh.mT  # one head Gram and rank factor for every batch
    factor = rank_factor(gram)

    def entropies_of(idx):
        idx = idx.to(zh.device)
        return entropies(zh[idx], y[idx], wh, gram=gram, factor=factor)

    def check(m):
        check_size(joint_size(m, d, num_classes), limit, "batch estimate")

    means, batches, used = batch_mean(entropies_of, n, batch_size, seed, check)
    size = min(batch_size, n)
    sides = _sides(size, d, int(y.unique().numel()))
    joint = batch_joint(means, batch_size, seed)
    extra = {"batch_size": batch_size, "n_batches": batches}
    return build(means[0], means[1], joint, sides, n, num_classes, used, **extra)


def interplay(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    *,
    estimate: str | Estimate = Estimate.auto,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    drop_zero_rows: bool = False,
    max_exact_dim: int | None = None,
    device: str | torch.device | None = None,
    probes: int | None = None,
) -> Interplay:
    """Entropies, MI, MIR and HDR between penultimate features and classification head.

    Args:
        features: [n, d] penultimate features (any float dtype; solved in float64).
        labels: [n] integer class indices in ``[0, C)``.
        head: [C, d] classifier weights, bias excluded.
        estimate: how the joint entropy ``H(K_Z o K_W)`` (and so MI and MIR) is found, an
            :class:`Estimate` or its name. ``"auto"`` (default): exact when its eigen-solve
            fits ``max_exact_dim``, else ``"slq"``, the stochastic Lanczos estimate of the
            same full-set value with error bars and a certified bound (:mod:`infoprobe.slq`).
            ``"exact"``: past the limit h_zw, mi and mir are NaN with a note. ``"batch"``:
            the mean of mini-batch entropies (taken to be the paper's: assumed) over
            :func:`batch_indices` ``(n, batch_size, seed)``, a different quantity (MI, MIR and HDR
            are derived from the mean entropies). H(K_Z), H(K_W) and HDR are exact on every route
            but batch.
        drop_zero_rows: exclude samples whose feature row, or whose class's head row, is
            zero (their direction is undefined); by default they raise :class:`InputError`.
            ``n_samples`` counts the samples kept.
        max_exact_dim: largest exact eigen-solve: None follows the device
            (:func:`default_max_exact_dim`, from its free memory on CUDA), 0 means no limit,
            k > 0 limits it to k.
        device: where the solves run (default: the device of ``features``), in float64.
        probes: probe vectors of the slq estimate (default :data:`infoprobe.slq.PROBES`).

    Returns an :class:`Interplay`. An entropy at or below its float32 noise floor
    (:func:`infoprobe.entropy.entropy_noise_floor`) makes MIR (and, when both are, HDR)
    NaN with a note giving the value and the floor; one sample or one class present gives
    an entropy of exactly 0. It never raises for that.
    """
    estimate = check_estimate(estimate)
    zero_head = zero_head_classes(labels, head, features.shape[0])
    if zero_head and (not drop_zero_rows or set(zero_head) >= set(labels.tolist())):
        return _headless(
            features, labels, head, zero_head, estimate, batch_size, seed, drop_zero_rows
        )
    with torch.no_grad():
        zh, y, wh = prepare(features, labels, head, drop_zero_rows=drop_zero_rows, device=device)
        limit = exact_limit(max_exact_dim, zh.device)
        if estimate == Estimate.batch:
            return _batch_interplay(zh, y, wh, batch_size, seed, limit)
        h_z = float(spectral_entropy(feature_matrix(zh)))
        h_w = float(spectral_entropy(head_matrix(wh, y)))
        options = {"seed": seed} if probes is None else {"seed": seed, "probes": probes}
        joint = joint_entropy(zh, y, wh, estimate, limit, options)
    (n, d), present = zh.shape, int(y.unique().numel())
    return build(h_z, h_w, joint, _sides(n, d, present), n, wh.shape[0], n)


def _headless(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    zero: list[int],
    estimate: Estimate,
    batch_size: int,
    seed: int,
    drop_zero_rows: bool,
) -> Interplay:
    """The interplay when head rows that labels use are zero (an untrained zero-initialised
    head): K_W has no definition, so only H(K_Z) is a number; the rest is NaN with a note."""
    z = as_float64(features, "features", 2)
    if drop_zero_rows:
        z = z[torch.linalg.vector_norm(z, dim=1) > 0]
    if estimate == Estimate.batch:
        parts = batch_indices(z.shape[0], batch_size, seed)
        h_z = sum(feature_entropy(z[idx]) for idx in parts) / len(parts)
        extra = {
            "batch_size": batch_size,
            "n_batches": len(parts),
            "label": batch_label(batch_size, seed),
            "n_used": sum(len(idx) for idx in parts),
        }
    else:
        h_z, extra = feature_entropy(z), {"n_used": int(z.shape[0])}
    classes = ", ".join(str(c) for c in zero[:5]) + (", ..." if len(zero) > 5 else "")
    note = (
        f"head rows of classes {classes} are zero (an untrained head?): K_W is undefined, "
        "so h_w, h_zw, mi, mir and hdr are NaN"
    )
    if len(zero) < labels.unique().numel():
        note += "; --drop-zero-rows measures the other classes"
    nan = math.nan
    n, c = int(z.shape[0]), int(head.shape[0])
    return Interplay(h_z, nan, nan, nan, nan, nan, n, c, estimate.value, note=note, **extra)


def interplay_from_grams(
    grams: Tensor,
    counts: Tensor,
    head: Tensor,
    *,
    max_exact_dim: int | None = None,
) -> Interplay:
    """The exact :func:`interplay` of samples known only through per-class Grams.

    Args:
        grams: [C, d, d] ``sum_{i: y_i = c} zh_i zh_i^T`` of the unit feature rows of each
            class (float64; :func:`class_grams` of the normalised features).
        counts: [C] samples per class.
        head: [C, d] classifier weights, bias excluded.
        max_exact_dim: as for :func:`interplay`; past it h_zw, mi and mir are NaN with a note.

    ``K_Z`` has the nonzero eigenvalues of ``sum_c G_c / n`` (d x d), ``K_W`` those of
    ``D^1/2 M D^1/2 / n`` and ``K_Z o K_W`` those of ``sum_c G_c' (x) l_c l_c^T / n`` with
    ``G_c'`` the Grams rotated onto the numerical row space of the features (k dims) and
    ``L L^T = M`` the rank-r factor of the head Gram, as in :func:`interplay`'s Khatri-Rao
    route. The values equal :func:`interplay` (``estimate="exact"``) on the same samples up
    to round-off, noise floors included; this is what lets
    :class:`infoprobe.metrics.InterplayMetrics` stream.
    """
    with torch.no_grad():
        g = as_float64(grams, "grams", 3)
        w = as_float64(head, "head", 2).to(g.device)
        counts = counts.to(device=g.device, dtype=torch.float64)
        num_classes, d = w.shape
        if g.shape != (num_classes, d, d) or counts.shape != (num_classes,):
            raise InputError(
                f"grams {tuple(g.shape)} and counts {tuple(counts.shape)} do not "
                f"fit a head of shape {tuple(w.shape)}: expected [C, d, d] and [C]"
            )
        n = int(counts.sum())
        if n == 0:
            raise InputError("no samples: at least one is needed")
        wh = unit_head(w, counts > 0)
        total = g.sum(0)
        h_z = float(spectral_entropy(total / n))
        h_w = float(spectral_entropy(head_matrix_of_counts(wh, counts)))
        joint = _joint_from_grams(g, total, wh, n, exact_limit(max_exact_dim, g.device))
    sides = _sides(n, d, int((counts > 0).sum()))
    return build(h_z, h_w, joint, sides, n, num_classes, n)


def _joint_from_grams(g: Tensor, total: Tensor, wh: Tensor, n: int, limit: int | None) -> Joint:
    """H(K_Z o K_W) from per-class Grams ``g`` [C, d, d] rotated onto the row space of the
    features (the eigenvectors of their sum ``total`` above round-off)."""
    lam, vec = torch.linalg.eigh(total)
    rows = vec[:, lam > zero_threshold(lam, max(n, total.shape[0]))]
    factor = rank_factor(wh @ wh.mT)
    size = rows.shape[1] * factor.shape[1]
    if limit is not None and size > limit:
        return refused(size, limit)
    rotated = rows.mT @ g @ rows
    return Joint(float(spectral_entropy(kronecker_sum(rotated, factor, n))))


def feature_entropy(features: Tensor, *, drop_zero_rows: bool = False) -> float:
    """``H(K_Z)`` of features alone: [n, d] -> nats in ``[0, log min(n, d)]``.

    Solved on the smaller of the d x d and n x n sides. ``drop_zero_rows`` leaves out rows
    without a direction (else they raise :class:`InputError`); no rows left gives NaN.
    """
    with torch.no_grad():
        z = as_float64(features, "features", 2)
        if drop_zero_rows:
            z = z[torch.linalg.vector_norm(z, dim=1) > 0]
        if z.shape[0] == 0:
            return math.nan
        return float(spectral_entropy(feature_matrix(normalise_rows(z, "features"))))


# --------------------------------------------------------------------------------------
# Two views of the same samples
# --------------------------------------------------------------------------------------


def _between_sides(n: int, a: Tensor, b: Tensor) -> tuple[Side, Side]:
    """Noise floors of H(K_A) and H(K_B), each with rank <= min(n, its width)."""
    return (
        Side("H(features_a)", entropy_noise_floor(min(n, a.shape[1]), a.shape[1])),
        Side("H(features_b)", entropy_noise_floor(min(n, b.shape[1]), b.shape[1])),
    )


def _between_rows(
    features_a: Tensor, features_b: Tensor, drop_zero_rows: bool, device
) -> tuple[Tensor, Tensor]:
    """Validated unit rows of both views, zero rows dropped in either when asked."""
    a = as_float64(features_a, "features_a", 2)
    if device is not None:
        a = a.to(device)
    b = as_float64(features_b, "features_b", 2).to(a.device)
    if a.shape[0] != b.shape[0]:
        raise InputError(
            f"features_a has {a.shape[0]} rows but features_b has {b.shape[0]}: both must "
            "hold the same samples in the same order"
        )
    if drop_zero_rows:
        keep = (torch.linalg.vector_norm(a, dim=1) > 0) & (torch.linalg.vector_norm(b, dim=1) > 0)
        a, b = a[keep], b[keep]
    if a.shape[0] == 0:
        raise InputError("features are empty (n = 0): at least one sample is needed")
    return normalise_rows(a, "features_a"), normalise_rows(b, "features_b")


def interplay_between(
    features_a: Tensor,
    features_b: Tensor,
    *,
    estimate: str | Estimate = Estimate.auto,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    drop_zero_rows: bool = False,
    max_exact_dim: int | None = None,
    device: str | torch.device | None = None,
) -> Interplay:
    """Interplay between two views of the same n samples (e.g. dense vs pruned features).

    ``features_a`` [n, d1] and ``features_b`` [n, d2] give ``K_A`` and ``K_B`` (rows
    normalised); ``h_z = H(K_A)``, ``h_w = H(K_B)``, ``h_zw = H(K_A o K_B)``. The joint
    entropy uses the d1'*d2' Khatri-Rao route (``Phi_i = a_i (x) b_i``) after rank
    compression when it is smaller than n. ``batch_size``, ``seed``, ``max_exact_dim`` and
    ``device`` are as for :func:`interplay`; ``estimate="batch"`` is the batch mean, and
    every other value computes the joint entropy exactly when it fits ``max_exact_dim`` and
    otherwise leaves it NaN with a note (there is no estimator for two feature sets; the
    entropies and HDR stay exact). ``drop_zero_rows`` drops samples with a zero row in either
    view. ``n_classes`` is None. The degenerate-value rule of :func:`interplay` applies,
    with each view's noise floor (notes name them ``H(features_a)``, ``H(features_b)``).
    """
    estimate = check_estimate(estimate)
    with torch.no_grad():
        ah, bh = _between_rows(features_a, features_b, drop_zero_rows, device)
        n = ah.shape[0]
        limit = exact_limit(max_exact_dim, ah.device)
        widest = max(ah.shape[1], bh.shape[1])
        if estimate == Estimate.batch:
            return _between_batch(ah, bh, batch_size, seed, limit)
        h_a = float(spectral_entropy(feature_matrix(ah)))
        h_b = float(spectral_entropy(feature_matrix(bh)))
        size = min(n, widest * widest)
        if limit is not None and size > limit:
            joint = refused(size, limit)
        else:
            joint = Joint(float(between_joint(ah, bh)))
    return build(h_a, h_b, joint, _between_sides(n, ah, bh), n, None, n)


def _between_batch(
    ah: Tensor, bh: Tensor, batch_size: int, seed: int, limit: int | None
) -> Interplay:
    """The batch mean of :func:`interplay_between` over :func:`batch_indices`."""
    n = ah.shape[0]
    widest = max(ah.shape[1], bh.shape[1])

    def entropies_of(idx):
        idx = idx.to(ah.device)
        return between_entropies(ah[idx], bh[idx])

    def check(m):
        check_size(min(m, widest * widest), limit, "batch estimate")

    means, batches, used = batch_mean(entropies_of, n, batch_size, seed, check)
    sides = _between_sides(min(batch_size, n), ah, bh)
    joint = batch_joint(means, batch_size, seed)
    extra = {"batch_size": batch_size, "n_batches": batches}
    return build(means[0], means[1], joint, sides, n, None, used, **extra)
