"""The slq estimate on every kind of spectrum, against a plain numpy n x n reference.

Each case is built here with numpy (not with the estimator's helpers); the reference is
``np.linalg.eigvalsh`` of the explicit ``(K_Z o K_W) / n`` at n = 2,000, or a closed form
where the spectrum is known exactly (neural collapse). The estimate must lie within 3 of its
error bars (a calibrated bar misses that with probability < 0.5%; the seeded coverage test
in test_slq.py checks the calibration itself), never above its certified bound, which must
hold the reference.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from infoprobe import info, slq

N = 2000


def reference(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """H(K_Z o K_W) by the definition: unit rows, the n x n Hadamard product, eigvalsh."""
    zh = z / np.linalg.norm(z, axis=1, keepdims=True)
    wh = w / np.linalg.norm(w, axis=1, keepdims=True)
    a = (zh @ zh.T) * (wh[y] @ wh[y].T) / len(y)
    with threadpool_limits(1):  # one BLAS thread: far faster on a loaded machine
        lam = np.linalg.eigvalsh(a)
    lam = lam[lam > 0]
    return float(-(lam * np.log(lam)).sum())


def orthonormal_rows(rng: np.random.Generator, c: int, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, c)))
    return q.T


def estimate(z, y, w, seed=0) -> slq.JointEstimate:
    zh, yy, wh = info.prepare(torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(w))
    return slq.joint_entropy(zh, yy, wh, seed=seed)


def isotropic(rng):
    """A randomly initialised model: isotropic features, a random head (nothing deflates)."""
    d, c = 256, 10
    return rng.standard_normal((N, d)), rng.integers(0, c, N), rng.standard_normal((c, d))


def near_collapse(rng):
    """Orthonormal class means plus noise at 1e-6 (C = 10): the tail is ~1e-12 per value."""
    c, d = 10, 64
    means = orthonormal_rows(rng, c, d)
    y = rng.integers(0, c, N)
    z = means[y] + 1e-6 * rng.standard_normal((N, d))
    return z, y, means + 0.3 * rng.standard_normal((c, d))


def two_classes(rng):
    c, d = 2, 64
    means = rng.standard_normal((c, d))
    y = rng.integers(0, c, N)
    z = np.maximum(means[y] + 0.8 * rng.standard_normal((N, d)), 0)
    return z, y, means + 0.3 * rng.standard_normal((c, d))


def rank_deficient(rng):
    """d = 8 < C = 20: A has rank <= 64."""
    c, d = 20, 8
    means = rng.standard_normal((c, d))
    y = rng.integers(0, c, N)
    return (
        means[y] + 0.5 * rng.standard_normal((N, d)),
        y,
        means + 0.3 * rng.standard_normal((c, d)),
    )


def duplicated(rng):
    """Every sample twice: half the eigenvalues are exactly 0."""
    c, d = 10, 64
    means = rng.standard_normal((c, d))
    y = rng.integers(0, c, N // 2)
    z = means[y] + 0.8 * rng.standard_normal((N // 2, d))
    return np.concatenate([z, z]), np.concatenate([y, y]), means + 0.3 * rng.standard_normal((c, d))


def weak_signal(rng):
    """Centred features with a weak class signal, C = 100, a random head."""
    c, d = 100, 128
    y = rng.integers(0, c, N)
    z = 0.05 * rng.standard_normal((c, d))[y] + rng.standard_normal((N, d))
    return z - z.mean(0), y, rng.standard_normal((c, d))


def two_per_class(rng):
    c, d = 1000, 64
    means = rng.standard_normal((c, d))
    y = np.repeat(np.arange(c), N // c)
    return (
        means[y] + 0.8 * rng.standard_normal((N, d)),
        y,
        means + 0.3 * rng.standard_normal((c, d)),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [isotropic, near_collapse, two_classes, rank_deficient, duplicated, weak_signal, two_per_class],
)
def test_estimate_is_within_its_bar_of_the_reference(make):
    rng = np.random.default_rng(zlib.crc32(make.__name__.encode()))
    z, y, w = make(rng)
    exact = reference(z, y, w)
    got = estimate(z, y, w)
    assert abs(got.value - exact) <= 3 * got.err, (got, exact)
    assert got.value <= got.upper and exact <= got.upper + 1e-12
    assert got.err < 0.05  # a bar that says something


@pytest.mark.slow
@pytest.mark.parametrize("c", [3, 10, 100])
def test_exact_neural_collapse_gives_the_exact_value(c):
    """Every feature is its (orthonormal) class mean: A is block-constant with blocks of ones,
    so H = -sum_c (n_c / n) log(n_c / n) whatever the head; the deflation holds the whole
    range and the tail is empty, so no probe runs and the value is exact to round-off."""
    rng = np.random.default_rng(c)
    d = max(2 * c, 16)
    y = rng.choice(c, N, p=rng.dirichlet(np.ones(c)))  # imbalanced, every class present
    y[:c] = np.arange(c)
    z = 2.5 * orthonormal_rows(rng, c, d)[y]
    counts = np.bincount(y, minlength=c) / N
    exact = float(-(counts * np.log(counts)).sum())
    got = estimate(z, y, rng.standard_normal((c, d)))
    assert got.steps == 0 and got.err < 1e-8
    assert got.value == pytest.approx(exact, abs=1e-10) and got.value <= got.upper
    assert exact <= got.upper <= exact + 1e-8


@pytest.mark.slow
def test_interplay_past_the_limit_on_weak_centred_features():
    """The failing file of the audit, scaled down: weak-signal centred features, C = 100,
    under estimate='auto' past max_exact_dim: an estimate with bars, not an error."""
    z, y, w = weak_signal(np.random.default_rng(7))
    got = info.interplay(
        torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(w), max_exact_dim=1000
    )
    assert got.estimate == "slq" and math.isfinite(got.mir) and got.mir_err > 0
    exact = reference(z, y, w)
    assert abs(got.h_zw - exact) <= 3 * got.h_zw_err
