"""The label information of features and the head's K_W at any width, against brute force.

Every reference here builds the n x n matrices explicitly in numpy (K_Z from the normalised
rows, K_Y = [y_i == y_j], K_W = [wh_{y_i} . wh_{y_j}], their Hadamard products) and takes
``H(K) = -sum lam log lam`` over ``numpy.linalg.eigvalsh(K / n)``: nothing of infoprobe's
routes (per-class Grams, grouping, rank factors) is used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infoprobe.errors import InputError
from infoprobe.info import batch_indices, interplay
from infoprobe.label_info import label_entropy, label_information, matched_widths


def _entropy(k: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(k / k.shape[0])
    lam = lam[lam > 1e-15]
    return float(-(lam * np.log(lam)).sum())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_label_information(z, y) -> tuple[float, float, float]:
    """(H(K_Y), I(K_Z; K_Y), H(K_Z)) from explicit n x n matrices."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    zh = _unit(z)
    k_z = zh @ zh.T
    k_y = (y[:, None] == y[None, :]).astype(np.float64)
    h_z, h_y = _entropy(k_z), _entropy(k_y)
    return h_y, h_z + h_y - _entropy(k_z * k_y), h_z


def _brute_mi_head(z, y, w) -> tuple[float, float, float]:
    """(H(K_Z), H(K_W), I(K_Z; K_W)) from explicit n x n matrices."""
    zh, wy = _unit(np.asarray(z, np.float64)), _unit(np.asarray(w, np.float64)[y])
    k_z = zh @ zh.T
    k_w = wy @ wy.T
    h_z, h_w = _entropy(k_z), _entropy(k_w)
    return h_z, h_w, h_z + h_w - _entropy(k_z * k_w)


def _features(n: int, d: int, c: int, seed: int, spread: float = 1.0):
    """Features with class structure (class means plus noise) and unbalanced labels."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    y[:c] = torch.arange(c)  # every class present
    means = torch.randn(c, d, generator=gen) * 2
    z = means[y] + spread * torch.randn(n, d, generator=gen)
    return z, y


@pytest.mark.parametrize(
    ("n", "d", "c", "seed"),
    [(40, 5, 4, 0), (30, 50, 3, 1), (64, 12, 10, 2), (25, 3, 6, 3)],
    ids=["d<n", "d>n", "d~n_c", "d<C"],
)
def test_label_information_equals_the_n_by_n_definition(n, d, c, seed):
    z, y = _features(n, d, c, seed)
    got = label_information(z, y)
    h_y, mi_y, h_z = _brute_label_information(z.numpy(), y.numpy())
    assert got.h_y == pytest.approx(h_y, abs=1e-10)
    assert got.mi_y == pytest.approx(mi_y, abs=1e-10)
    assert got.h_z == pytest.approx(h_z, abs=1e-10)
    assert got.n_used == n and got.n_batches == 1
    assert 0 <= got.mi_y <= min(got.h_z, got.h_y) + 1e-12


def test_a_class_with_one_sample_and_float32_inputs():
    z, y = _features(20, 6, 4, 5)
    y[-1] = 4  # class 4 has one sample
    got = label_information(z.float(), y)
    h_y, mi_y, _ = _brute_label_information(z.float().double().numpy(), y.numpy())
    assert (got.h_y, got.mi_y) == pytest.approx((h_y, mi_y), abs=1e-10)


def test_h_y_is_the_entropy_of_the_class_proportions():
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    want = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert label_entropy(y) == pytest.approx(want, abs=1e-15)
    assert label_entropy(torch.zeros(7, dtype=torch.long)) == 0.0


def test_collapsed_classes_carry_all_label_information():
    # each of C balanced classes on its own orthogonal direction: K_Z = K_Y, so
    # I = H(K_Z) = H(K_Y) = log C; and with one direction for every sample, I = 0
    c, per = 4, 6
    y = torch.arange(c).repeat_interleave(per)
    z = torch.eye(c)[y] * 3.0
    got = label_information(z, y)
    assert got.mi_y == pytest.approx(math.log(c), abs=1e-12)
    assert got.h_y == pytest.approx(math.log(c), abs=1e-12)
    same = label_information(torch.ones(c * per, 5), y)
    assert same.mi_y == pytest.approx(0.0, abs=1e-12) and same.h_z == pytest.approx(0, abs=1e-12)


def test_batch_estimate_is_the_mean_over_the_documented_batches():
    z, y = _features(50, 4, 3, 7)
    got = label_information(z, y, batch_size=16, seed=3)
    parts = batch_indices(50, 16, 3)
    brute = np.mean([_brute_label_information(z[i].numpy(), y[i].numpy()) for i in parts], 0)
    assert (got.h_y, got.mi_y, got.h_z) == pytest.approx(tuple(brute), abs=1e-10)
    assert got.n_batches == 3 and got.n_used == 48


def test_zero_rows_are_refused_or_dropped():
    z, y = _features(12, 3, 3, 8)
    z[4] = 0
    with pytest.raises(InputError, match="zero-norm"):
        label_information(z, y)
    keep = torch.arange(12) != 4
    got = label_information(z, y, drop_zero_rows=True)
    h_y, mi_y, _ = _brute_label_information(z[keep].numpy(), y[keep].numpy())
    assert (got.h_y, got.mi_y, got.n_used) == (pytest.approx(h_y), pytest.approx(mi_y), 11)


def test_mismatched_samples_are_refused():
    with pytest.raises(InputError, match="same samples"):
        label_information(torch.ones(5, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("d", "d_head", "c"),
    [(9, 5, 4), (3, 7, 4), (2, 7, 5), (6, 6, 3), (4, 3, 6)],
    ids=["wider", "narrower-than-head", "narrower-than-rank", "equal", "head-rank-d_head"],
)
def test_matched_widths_keep_both_kernels(d, d_head, c):
    z, y = _features(30, d, c, 11)
    w = torch.randn(c, d_head, generator=torch.Generator().manual_seed(4))
    zm, wm = matched_widths(z, w)
    assert zm.shape[1] == wm.shape[1]
    zh, wh = _unit(z.double().numpy()), _unit(w.double().numpy())
    zmh, wmh = _unit(zm.double().numpy()), _unit(wm.double().numpy())
    np.testing.assert_allclose(zmh @ zmh.T, zh @ zh.T, atol=1e-12)
    np.testing.assert_allclose(wmh @ wmh.T, wh @ wh.T, atol=1e-12)


@pytest.mark.parametrize("d", [3, 20], ids=["narrow", "wide"])
def test_mutual_information_with_a_head_of_another_width(d):
    z, y = _features(36, d, 5, 12)
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(6))
    w[2] = 0  # a class without samples may have a zero head row
    y[y == 2] = 0
    zm, wm = matched_widths(z, w)
    got = interplay(zm, y, wm, estimate="exact")
    h_z, h_w, mi = _brute_mi_head(z.numpy(), y.numpy(), w.numpy())
    assert (got.h_z, got.h_w, got.mi) == pytest.approx((h_z, h_w, mi), abs=1e-10)
