"""infoprobe.slq against explicit n x n matrices and the exact entropy."""

from __future__ import annotations

import math

import pytest
import torch

from infoprobe import info, slq
from infoprobe.errors import InputError


def clustered(n, d, c, noise=0.8, seed=0, skew=False):
    """Class means plus noise, ReLU'd like penultimate features; a head near the means."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    if skew:  # one class holds half the samples: several groups per class
        y = torch.where(torch.rand(n, generator=g) < 0.5, 0, torch.randint(0, c, (n,), generator=g))
    else:
        y = torch.randint(0, c, (n,), generator=g)
    z = torch.relu(means[y] + noise * torch.randn(n, d, generator=g, dtype=torch.float64))
    return z, y, means + 0.3 * torch.randn(c, d, generator=g, dtype=torch.float64)


def explicit(zh, y, wh):
    """(K_Z o K_W) / n, literally."""
    return (zh @ zh.T) * (wh[y] @ wh[y].T) / zh.shape[0]


def exact_entropy(a):
    lam = torch.linalg.eigvalsh(a).clamp_min(0)
    return float(-(torch.special.xlogy(lam, lam)).sum())


@pytest.fixture(scope="module")
def case():
    z, y, w = clustered(1200, 128, 15, seed=3)
    zh, y, wh = info.prepare(z, y, w)
    a = explicit(zh, y, wh)
    return zh, y, wh, a, exact_entropy(a)


# ---- the implicit product -------------------------------------------------------------------


@pytest.mark.parametrize("skew", [False, True])
def test_product_equals_the_explicit_matrix(skew):
    z, y, w = clustered(300, 20, 7, seed=1, skew=skew)
    y[y == 5] = 6  # a class the head knows but no sample has
    zh, y, wh = info.prepare(z, y, w)
    op = slq.JointOperator(zh, y, wh)
    v = torch.randn(300, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = explicit(zh, y, wh) @ v
    got = op @ v  # 37 columns: three blocks of _BLOCK
    assert got.dtype == torch.float64 and got.shape == (300, 37)
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())
    assert float((op @ v[:, 0] - want[:, 0]).abs().max()) <= 1e-6 * float(want.abs().max())
    if skew:
        assert op.groups > 6  # the large class is cut into several groups


def test_indicator_product_equals_the_explicit_matrix():
    z, y, w = clustered(250, 16, 6, seed=2, skew=True)
    zh, y, wh = info.prepare(z, y, w)
    p, ap = slq.JointOperator(zh, y, wh).indicators()
    onehot = torch.nn.functional.one_hot(y, 6).double()
    want_p = onehot / onehot.sum(0).sqrt()
    assert torch.equal(p, want_p)
    want = explicit(zh, y, wh) @ want_p
    assert float((ap - want).abs().max()) <= 1e-6 * float(want.abs().max())


# ---- quadrature -----------------------------------------------------------------------------


def test_gauss_and_radau_bracket_each_probe(case):
    """Gauss >= x^T f(B) x >= Gauss-Radau for every probe and every number of steps."""
    zh, y, wh, a, _ = case
    op = slq.JointOperator(zh, y, wh)
    found = slq.deflate(op)
    q = found.vectors
    pi = torch.eye(a.shape[0], dtype=torch.float64) - q @ q.T
    lam, vec = torch.linalg.eigh(pi @ a @ pi)
    f_b = (vec * slq.entropy_terms(lam)) @ vec.T
    g = slq.rademacher(a.shape[0], 6, 0, zh.device)
    x = g - q @ (q.T @ g)
    want = (x * (f_b @ x)).sum(0)
    trace = 1 - float(found.values.sum())
    widths = []
    for steps in (2, 4, 8, 24):
        quad = slq.probe_quadrature(op, q, x, trace, max_steps=steps, tol=0.0)
        assert quad.steps == steps or steps > 8  # past 8 it may stop early (narrow)
        assert bool((quad.gauss >= want - 1e-6).all()) and bool((quad.radau <= want + 1e-6).all())
        widths.append(float((quad.gauss - quad.radau).max()))
    assert widths == sorted(widths, reverse=True) and widths[-1] < 1e-3  # the bracket closes
    assert torch.allclose(quad.quadratic, (x * ((pi @ a @ pi) @ x)).sum(0), atol=1e-6)


def test_control_variate_mean_is_the_least_squares_intercept():
    g = torch.Generator().manual_seed(0)
    controls = torch.randn(40, 2, generator=g, dtype=torch.float64)
    values = 3.0 + controls @ torch.tensor([2.0, -1.0], dtype=torch.float64)
    values += 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
    mean, se, dof = slq.control_variate_mean(values, controls)
    design = torch.cat([torch.ones(40, 1, dtype=torch.float64), controls], 1)
    ref = torch.linalg.lstsq(design, values.unsqueeze(1)).solution.squeeze(1)
    assert mean == pytest.approx(float(ref[0]), abs=1e-12) and dof == 37
    rss = float(((values - design @ ref) ** 2).sum())
    inverse = torch.linalg.inv(design.T @ design)
    assert se == pytest.approx(math.sqrt(rss / 37 * float(inverse[0, 0])))


# ---- the estimate against the exact value -------------------------------------------------


def test_two_sigma_bars_cover_the_exact_value(case):
    """At least 95% of 40 seeded estimates lie within +-2 err of the exact entropy."""
    zh, y, wh, _, exact = case
    runs = [slq.joint_entropy(zh, y, wh, probes=8, seed=s) for s in range(40)]
    covered = [abs(r.value - exact) <= 2 * r.err for r in runs]
    assert sum(covered) >= 38, [(r.value - exact) / r.err for r in runs]
    assert all(r.err < 0.01 for r in runs)  # and the bars are narrow enough to mean something


def test_bars_shrink_as_probes_are_added(case):
    zh, y, wh, _, exact = case
    errs = {
        p: [slq.joint_entropy(zh, y, wh, probes=p, seed=s).err for s in range(4)]
        for p in (6, 24, 96)
    }
    mean = {p: sum(e) / len(e) for p, e in errs.items()}
    assert mean[96] < mean[24] < mean[6]
    assert mean[96] < 0.6 * mean[6]


@pytest.mark.parametrize("noise", [0.2, 0.8, 3.0])
def test_certified_bound_bounds_the_exact_entropy(noise):
    z, y, w = clustered(600, 24, 12, noise=noise, seed=4)
    zh, y, wh = info.prepare(z, y, w)
    exact = exact_entropy(explicit(zh, y, wh))
    got = slq.joint_entropy(zh, y, wh, probes=6)
    assert exact <= got.upper <= math.log(600)
    assert abs(got.value - exact) <= 3 * got.err


def test_bound_holds_for_any_orthonormal_basis():
    """Ky Fan + Schur-concavity: the Ritz values of any subspace give an upper bound."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(80, 30, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 30)
    a = x @ x.T
    a /= torch.trace(a)
    exact = exact_entropy(a)
    for k in (1, 5, 20, 40):
        basis, _ = torch.linalg.qr(torch.randn(80, k, generator=g, dtype=torch.float64))
        theta = torch.linalg.eigvalsh(basis.T @ a @ basis)
        assert slq.certified_upper_bound(theta, 80) >= exact - 1e-12
    lam = torch.linalg.eigvalsh(a)  # all 30 nonzero eigenvalues: the bound is the value
    assert slq.certified_upper_bound(lam[-30:], 80) == pytest.approx(exact, abs=1e-9)
    assert slq.certified_upper_bound(lam[-25:], 80) > exact + 1e-3  # five left out: looser


def test_too_few_probes_is_an_input_error(case):
    zh, y, wh, _, _ = case
    with pytest.raises(InputError, match="at least 4 probes"):
        slq.joint_entropy(zh, y, wh, probes=3)


# ---- the routes in interplay --------------------------------------------------------------


def test_auto_takes_exact_when_it_fits_and_slq_past_the_limit(case):
    zh, y, wh, _, exact = case
    fits = info.interplay(zh, y, wh)
    assert (fits.estimate, fits.label, fits.mir_err) == ("exact", "exact", None)
    assert fits.h_zw == pytest.approx(exact, abs=1e-9)
    est = info.interplay(zh, y, wh, max_exact_dim=1000, probes=8, seed=2)
    assert est.estimate == "slq" and est.label.startswith("slq(probes=8,steps=")
    assert est.label.endswith(",seed=2)")
    assert (est.h_z, est.h_w, est.hdr) == (fits.h_z, fits.h_w, fits.hdr)  # exact anyway
    assert abs(est.mir - fits.mir) <= 2 * est.mir_err
    assert est.mir_err == pytest.approx(est.h_zw_err / min(est.h_z, est.h_w))
    assert est.mi_err == est.h_zw_err and est.mir_lower <= fits.mir
    assert info.interplay(zh, y, wh, estimate="slq", probes=8, seed=2) == est
