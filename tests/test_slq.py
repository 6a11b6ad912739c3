"""infoprobe.slq against explicit n x n matrices and the exact entropy."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from infoprobe import info, slq
from infoprobe.errors import InputError
from infoprobe.result import Side, build
from infoprobe.routes import Joint


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
def small():
    z, y, w = clustered(600, 48, 8, seed=4)
    zh, y, wh = info.prepare(z, y, w)
    return zh, y, wh, exact_entropy(explicit(zh, y, wh))


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
    assert float((got - want).abs().max()) <= 1e-13 * float(want.abs().max())
    assert float((op @ v[:, 0] - want[:, 0]).abs().max()) <= 1e-13 * float(want.abs().max())
    if skew:
        assert op.groups > 6  # the large class is cut into several groups


def test_product_round_off_is_within_its_componentwise_bound():
    """|fl(A v) - A v|_i <= gamma_K |v|_1 / n, against A v in extended precision."""
    z, y, w = clustered(200, 24, 5, seed=6, skew=True)
    zh, y, wh = info.prepare(z, y, w)
    op = slq.JointOperator(zh, y, wh)
    v = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zl, wl = zh.numpy().astype(np.longdouble), wh.numpy().astype(np.longdouble)
    yl = y.numpy()
    a = (zl @ zl.T) * (wl[yl] @ wl[yl].T) / 200
    err = np.abs((op @ v).numpy().astype(np.longdouble) - a @ v.numpy().astype(np.longdouble))
    terms = op.group_size + int(op.counts.max()) + 5 + 2 * 24 + 4
    gamma = terms * 2.0**-53 / (1 - terms * 2.0**-53)
    assert (err <= gamma * np.abs(v.numpy()).sum(0) / 200).all()
    assert 0 < op.roundoff() < 1e-10


def test_indicator_product_equals_the_explicit_matrix():
    z, y, w = clustered(250, 16, 6, seed=2, skew=True)
    zh, y, wh = info.prepare(z, y, w)
    p, ap = slq.JointOperator(zh, y, wh).indicators()
    onehot = torch.nn.functional.one_hot(y, 6).double()
    want_p = onehot / onehot.sum(0).sqrt()
    assert torch.equal(p, want_p)
    want = explicit(zh, y, wh) @ want_p
    assert float((ap - want).abs().max()) <= 1e-13 * float(want.abs().max())


# ---- quadrature -----------------------------------------------------------------------------


def quadratic_forms(a, q, x):
    """x^T f(Pi A Pi) x per column of x, explicitly."""
    pi = torch.eye(a.shape[0], dtype=torch.float64) - q @ q.T
    lam, vec = torch.linalg.eigh(pi @ a @ pi)
    f_b = (vec * slq.entropy_terms(lam)) @ vec.T
    return (x * (f_b @ x)).sum(0)


def test_gauss_and_radau_bracket_each_probe(small):
    """Gauss >= x^T f(B) x >= Gauss-Radau for every probe and every number of steps."""
    zh, y, wh, _ = small
    a = explicit(zh, y, wh)
    op = slq.JointOperator(zh, y, wh)
    found = slq.deflate(op)
    q = found.vectors
    g = slq.rademacher(a.shape[0], 6, 0, zh.device)
    x = g - q @ (q.T @ g)
    want = quadratic_forms(a, q, x)
    trace = 1 - float(found.values.sum())
    widths = []
    for steps in (2, 4, 8, 24):
        quad = slq.probe_quadrature(op, q, x, trace, max_steps=steps, tol=0.0)
        assert quad.steps == steps or steps > 8  # past 8 it may stop early (narrow)
        assert bool((quad.gauss >= want - 1e-9).all()) and bool((quad.radau <= want + 1e-9).all())
        widths.append(float((quad.gauss - quad.radau).max()))
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02 * widths[0]  # closes
    pi = torch.eye(a.shape[0], dtype=torch.float64) - q @ q.T
    assert torch.allclose(quad.quadratic, (x * ((pi @ a @ pi) @ x)).sum(0), atol=1e-9)


def test_lanczos_stays_off_a_subspace_that_is_not_invariant(small):
    """With Q the class indicators (far from invariant), A x leaves Q^perp at once: the
    quadrature must still be that of Pi A Pi, which needs the projection at every step."""
    zh, y, wh, _ = small
    a = explicit(zh, y, wh)
    op = slq.JointOperator(zh, y, wh)
    q, _ = op.indicators()
    g = slq.rademacher(a.shape[0], 4, 1, zh.device)
    x = g - q @ (q.T @ g)
    want = quadratic_forms(a, q, x)
    quad = slq.probe_quadrature(op, q, x, 0.0, max_steps=40, tol=0.0)
    assert bool((quad.gauss >= want - 1e-9).all()) and bool((quad.radau <= want + 1e-9).all())
    assert float((quad.gauss - quad.radau).max()) < 1e-2 * float(want.min())


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


def test_control_variate_mean_drops_constant_and_repeated_controls():
    """x^T x = n for every probe when nothing is deflated: that column, and a copy of the
    other, carry no information; the fit is the one on the remaining control."""
    g = torch.Generator().manual_seed(1)
    control = torch.randn(12, 1, generator=g, dtype=torch.float64)
    values = 1.5 + 0.7 * control[:, 0] + 0.01 * torch.randn(12, generator=g, dtype=torch.float64)
    alone = slq.control_variate_mean(values, control)
    constant = torch.zeros(12, 1, dtype=torch.float64)  # x^T x - (n - k) = 0 for every probe
    assert slq.control_variate_mean(values, torch.cat([control, constant], 1)) == pytest.approx(
        alone, rel=1e-9
    )
    assert slq.control_variate_mean(values, torch.cat([control, 3 * control], 1)) == pytest.approx(
        alone, rel=1e-9
    )
    plain = slq.control_variate_mean(values, torch.zeros(12, 2, dtype=torch.float64))
    assert plain[0] == pytest.approx(float(values.mean())) and plain[2] == 11
    assert plain[1] == pytest.approx(float(values.std() / math.sqrt(12)))


def test_t_quantile_matches_the_table():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 10: 2.2281, 21: 2.0796}
    for dof, want in table.items():
        assert slq._t_quantile(dof) == pytest.approx(want, abs=1e-4)
    assert slq._t_quantile(60) == pytest.approx(2.0003, abs=1e-4)


# ---- the certified bound --------------------------------------------------------------------


def test_bound_holds_for_any_orthonormal_basis_and_every_j():
    """Pinching + Schur-concavity: every prefix j of the Ritz values gives an upper bound,
    including the j with t_j / (n - j) > theta_j that an order condition would exclude."""
    g = torch.Generator().manual_seed(5)
    skipped = 0
    for _ in range(25):
        rank = int(torch.randint(3, 40, (1,), generator=g))
        x = torch.randn(80, rank, generator=g, dtype=torch.float64)
        x *= torch.rand(rank, generator=g, dtype=torch.float64) ** 3 + 0.01
        a = x @ x.T / float(torch.trace(x @ x.T))
        exact = exact_entropy(a)
        k = int(torch.randint(1, 40, (1,), generator=g))
        basis, _ = torch.linalg.qr(torch.randn(80, k, generator=g, dtype=torch.float64))
        theta = torch.linalg.eigvalsh(basis.T @ a @ basis).flip(0)
        for j in range(k + 1):
            bound = slq.certified_upper_bound(theta[:j], 80)
            assert bound >= exact - 1e-12
            assert slq.certified_upper_bound(theta[:j], 80, rank) >= exact - 1e-12
            tail = 1 - float(theta[:j].sum())
            skipped += j > 0 and tail / (80 - j) > float(theta[j - 1])
    assert skipped > 50  # the bound is used where the old filter refused it


def test_bound_is_exact_with_every_eigenvalue_and_tighter_with_the_rank():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(80, 30, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 30)
    a = x @ x.T / float(torch.trace(x @ x.T))
    exact = exact_entropy(a)
    lam = torch.linalg.eigvalsh(a)
    assert slq.certified_upper_bound(lam[-30:], 80) == pytest.approx(exact, abs=1e-9)
    loose = slq.certified_upper_bound(lam[-25:], 80)
    ranked = slq.certified_upper_bound(lam[-25:], 80, rank=30)
    assert exact <= ranked < loose  # five left out: the rank bound spreads them over 5, not 55


def test_union_of_probe_krylov_spaces_gives_ritz_values_and_a_tighter_bound():
    """Ritz values of a subspace interlace the spectrum (theta_i <= lam_i): a basis that
    were not orthonormal would break that. Two classes: the deflation basis has 4 vectors,
    the probes' Krylov spaces dozens, so the bound tightens."""
    z, y, w = clustered(500, 40, 2, seed=5)
    zh, y, wh = info.prepare(z, y, w)
    a = explicit(zh, y, wh)
    lam = torch.linalg.eigvalsh(a).flip(0)
    op = slq.JointOperator(zh, y, wh)
    found = slq.deflate(op)
    q = found.vectors
    g = slq.rademacher(500, 8, 3, zh.device)
    quad = slq.probe_quadrature(op, q, g - q @ (q.T @ g), 0.5, max_steps=20, tol=0.0)
    theta = slq.union_ritz_values(found, quad)
    assert theta.numel() > 50 and bool((theta <= lam[: theta.numel()] + 1e-12).all())
    exact = exact_entropy(a)
    tight = slq.certified_upper_bound(theta, 500, op.rank_bound)
    loose = slq.certified_upper_bound(found.all_values, 500, op.rank_bound)
    assert exact <= tight < loose - 0.05


def test_tail_bracket_holds_the_tail_entropy():
    g = torch.Generator().manual_seed(8)
    for _ in range(50):
        m = int(torch.randint(1, 60, (1,), generator=g))
        nu = torch.rand(m, generator=g, dtype=torch.float64) ** 4
        nu *= float(torch.rand(1, generator=g)) / float(nu.sum())
        low, high = slq.tail_bracket(float(nu.sum()), m)
        assert low - 1e-15 <= float(slq.entropy_terms(nu).sum()) <= high + 1e-15
    assert slq.tail_bracket(0.0, 10) == (0.0, 0.0)


# ---- the estimate against the exact value -------------------------------------------------


def binomial_floor(runs: int, p: float, alpha: float) -> int:
    """The largest c with P(Binomial(runs, p) < c) <= alpha (exact tail sum)."""

    def below(c):
        return sum(math.comb(runs, i) * p**i * (1 - p) ** (runs - i) for i in range(c))

    return max(c for c in range(runs + 1) if below(c) <= alpha)


@pytest.mark.slow
def test_two_sigma_bars_cover_the_exact_value(small):
    """value +- 2 err covers the exact entropy at least as often as a calibrated bar would
    allow with probability 0.999, over seeds drawn from a generator seeded by this test's
    name (not chosen): a calibrated bar covers >= 95% (t with 5 dof at 2.62 se)."""
    zh, y, wh, exact = small
    g = torch.Generator().manual_seed(zlib.crc32(b"test_two_sigma_bars_cover_the_exact_value"))
    seeds = torch.randint(0, 2**31 - 1, (40,), generator=g).tolist()
    runs = [slq.joint_entropy(zh, y, wh, probes=8, seed=s) for s in seeds]
    assert len({r.value for r in runs}) == len(runs)  # each seed is its own estimate
    covered = sum(abs(r.value - exact) <= 2 * r.err for r in runs)
    assert covered >= binomial_floor(40, 0.95, 1e-3), [(r.value - exact) / r.err for r in runs]
    assert all(r.value <= r.upper for r in runs), [(r.value, r.upper) for r in runs]
    assert all(r.err < 0.02 for r in runs), [r.err for r in runs]  # bars that mean something


def test_different_seeds_give_different_probes_and_estimates():
    z, y, w = clustered(300, 16, 5, seed=9)
    zh, y, wh = info.prepare(z, y, w)
    first, second = (slq.joint_entropy(zh, y, wh, probes=6, seed=s) for s in (11, 12))
    assert first.value != second.value and first.seed == 11
    assert slq.joint_entropy(zh, y, wh, probes=6, seed=11) == first  # and one seed, one value


def test_short_lanczos_runs_are_covered_by_the_half_bracket(small):
    """Two Lanczos steps: the midpoint of a wide quadrature bracket is off by more than the
    probes' error alone, and half the bracket in the bar covers it."""
    zh, y, wh, exact = small
    runs = [slq.joint_entropy(zh, y, wh, probes=8, seed=s, max_steps=2, tol=0) for s in range(6)]
    assert all(r.bracket > 5 * r.se for r in runs)
    assert all(abs(r.value - exact) <= 2 * r.err for r in runs)


@pytest.mark.slow
def test_bars_shrink_as_probes_are_added(small):
    zh, y, wh, _ = small
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
    assert abs(got.value - exact) <= 3 * got.err and got.value <= got.upper


def test_estimate_is_clipped_to_its_certified_bound(small, monkeypatch):
    zh, y, wh, _ = small
    high = slq._Tail(value=50.0, err=1e-9, bracket=0.0, ritz=torch.zeros(0, dtype=torch.float64))
    monkeypatch.setattr(slq, "_probed_tail", lambda *args: high)
    monkeypatch.setattr(slq, "tail_bracket", lambda trace, rank: (0.0, 100.0))
    got = slq.joint_entropy(zh, y, wh, probes=6)
    assert got.value == got.upper


def test_too_few_probes_is_an_input_error(small):
    zh, y, wh, _ = small
    with pytest.raises(InputError, match="at least 4 probes"):
        slq.joint_entropy(zh, y, wh, probes=3)


# ---- the routes in interplay --------------------------------------------------------------


def test_auto_takes_exact_when_it_fits_and_slq_past_the_limit(small):
    zh, y, wh, exact = small
    fits = info.interplay(zh, y, wh)
    assert (fits.estimate, fits.label, fits.mir_err) == ("exact", "exact", None)
    assert fits.h_zw == pytest.approx(exact, abs=1e-9)
    est = info.interplay(zh, y, wh, max_exact_dim=300, probes=8, seed=2)
    assert est.estimate == "slq" and est.label.startswith("slq(probes=8,steps=")
    assert est.label.endswith(",seed=2)")
    assert (est.h_z, est.h_w, est.hdr) == (fits.h_z, fits.h_w, fits.hdr)  # exact anyway
    assert abs(est.mir - fits.mir) <= 2 * est.mir_err
    assert est.mir_err == pytest.approx(est.h_zw_err / min(est.h_z, est.h_w))
    assert est.mi_err == est.h_zw_err and est.mir_lower <= est.mir and est.mir_lower <= fits.mir
    assert info.interplay(zh, y, wh, estimate="slq", probes=8, seed=2) == est


def test_a_negative_mir_lower_is_left_empty_with_a_note():
    sides = (Side("h_z"), Side("h_w"))
    useless = build(1.0, 0.5, Joint(1.2, "slq", "slq(..)", 0.01, 1.6), sides, 10, 3, 10)
    assert math.isnan(useless.mir_lower) and "mir_lower left empty" in useless.note
    useful = build(1.0, 0.5, Joint(1.2, "slq", "slq(..)", 0.01, 1.3), sides, 10, 3, 10)
    assert useful.mir_lower == pytest.approx(0.4) and useful.note == ""
