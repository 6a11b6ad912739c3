"""InterplayLoss: value, gradients (gradcheck) and finiteness at neural collapse."""

from __future__ import annotations

import pytest
import torch

from infoprobe.info import interplay
from infoprobe.losses import InterplayLoss


def leaf(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def test_value_matches_interplay():
    z, w = leaf(16, 5, seed=0), leaf(3, 5, seed=1)
    y = torch.arange(3).repeat(6)[:16]
    ref = interplay(z.detach(), y, w.detach())
    terms = InterplayLoss(0.7, 0.3).terms(z, y, w)
    assert float(terms.mi.detach()) == pytest.approx(ref.mi, abs=1e-12)
    want = -0.7 * ref.mi + 0.3 * abs(ref.h_z - ref.h_w)
    assert float(terms.loss.detach()) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n,d", [(12, 5), (30, 3)])  # n x n joint route, then Khatri-Rao (d*d < n)
def test_gradcheck(n, d):
    z, w = leaf(n, d, seed=n), leaf(4, d, seed=d)
    y = torch.arange(4).repeat(n)[:n]
    loss = InterplayLoss(0.5, 2.0)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, y, b), (z, w))


def test_gradients_reach_features_and_head():
    z, w = leaf(20, 6, seed=2), leaf(5, 6, seed=3)
    y = torch.arange(5).repeat(4)
    InterplayLoss(1.0, 1.0)(z, y, w).backward()
    assert z.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


@pytest.mark.parametrize("c", [3, 10])
def test_finite_gradients_with_repeated_eigenvalues(c):
    """At neural collapse eigenvalues repeat and some are 0: gradients must stay finite."""
    etf = torch.eye(c, dtype=torch.float64) - 1.0 / c
    y = torch.arange(c).repeat(3)
    z = (2 * etf[y]).requires_grad_()
    w = etf.clone().requires_grad_()
    InterplayLoss(1.0, 1.0)(z, y, w).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()
    assert z.grad.abs().sum() > 0


def test_float32_training_step_lowers_the_loss():
    torch.manual_seed(0)
    feats = torch.randn(32, 8, requires_grad=True)
    head = torch.randn(4, 8, requires_grad=True)
    y = torch.arange(4).repeat(8)
    criterion = InterplayLoss(1.0, 0.0)
    opt = torch.optim.SGD([feats, head], lr=0.5)
    first = float(criterion(feats, y, head).detach())
    for _ in range(20):
        opt.zero_grad()
        criterion(feats, y, head).backward()
        opt.step()
    assert float(criterion(feats, y, head).detach()) < first
