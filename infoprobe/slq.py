"""The joint entropy H(K_Z o K_W) estimated without an n x n matrix, with honest error bars.

For n past the exact eigen-solve (ImageNet-val: n = 50,000, d = 2048, C = 1000), this module
estimates ``H = tr f(A)`` with ``A = (K_Z o K_W) / n`` and ``f(x) = -x log x`` by stochastic
Lanczos quadrature (SLQ), with the top of the spectrum deflated and every number carrying an
error bar. Nothing of size n x n is formed.

* **Product.** ``A v`` is implicit and float64 (:class:`JointOperator`); its round-off moves
  the entropy by at most ``roundoff`` (:meth:`JointOperator.roundoff`, 1e-9 to 4e-8 nats).
  A float32 product was off by 1.7e-6 nats near collapse, far outside a 1e-8 bar.
* **Deflation.** About C large eigenvalues (one per class cluster) dominate the variance of
  plain SLQ. A block Krylov basis ``V = [P, A P, ...]`` started from the normalised class
  indicators ``P`` catches them; Ritz pairs ``(theta_k, u_k)`` with a small residual
  ``|A u_k - theta_k u_k|`` are kept (none may be: isotropic features, a weak class signal).
* **Tail.** With ``Q`` the kept Ritz vectors and ``Pi = I - Q Q^T``,
  ``tr f(A) ~ sum_k f(theta_k) + tr f(Pi A Pi)``. The right side is the entropy of the
  pinching ``Q Q^T A Q Q^T + Pi A Pi``, which is never below ``H(A)`` (pinching is a
  unital channel); the gap is second order in the residuals of the kept pairs (the
  deflation error: ``benchmarks/bench_scale.py`` measures it exactly, at most 0.5% of the
  bar over its ten kinds of spectrum, so it is left out of the bar). The tail
  term is ``E[x^T f(B) x]`` (``B = Pi A Pi``) for Rademacher probes ``x = Pi g``
  (Hutchinson), each quadratic form by Lanczos from ``x`` in float64 with full
  reorthogonalisation against its own basis and ``Q``.
* **Bracket.** For ``f = -x log x`` every even derivative is negative and every odd one
  positive on ``(0, inf)``, so the m-node Gauss rule overestimates each quadratic form and the
  (m+1)-node Gauss-Radau rule with a node at 0 underestimates it (Golub & Meurant,
  *Matrices, Moments and Quadrature*, 2010, ch. 6). Lanczos steps are added until the mean
  bracket is narrow next to the statistical error; the midpoint is used.
* **Control variates.** ``x^T B x`` (mean ``tr B = 1 - sum theta``) and ``x^T x`` (mean
  ``n - k``) come free from Lanczos. The tail term is the intercept of a rank-revealing
  least-squares fit of the probe values on them (:func:`control_variate_mean`); a variate
  that is constant across probes (``x^T x = n`` when nothing is deflated) is dropped.
* **Exact tail.** The eigenvalues of ``B`` are nonnegative, at most ``min(n - k, R)`` of
  them nonzero (``R = min(n, d min(C', d))`` bounds the rank of ``A``), and sum to
  ``t = tr B``; so ``-t log t <= tr f(B) <= t log(min(n - k, R) / t)``
  (:func:`tail_bracket`). When that bracket is narrower than the probes' bar (neural
  collapse: the deflation holds the whole range and ``t`` is round-off) its midpoint is the
  tail, with no probes; the probe value is clipped into it otherwise.
* **Error bar.** ``err`` is the least-squares standard error of the intercept scaled by
  ``t_{dof, 0.975} / 1.96`` (Student-t, dof = p - 1 - variates kept), plus half the
  bracket width, plus ``roundoff``; or the tail bracket's half width plus ``roundoff``.
  It is wide where nothing deflates well and ``f`` is far from linear over the tail (a
  power-law spectrum: many mid-sized eigenvalues, ~100x a clustered one's bar), and shrinks
  as ``1/sqrt(probes)``.
* **Certified bound.** For any orthonormal ``U`` of j columns with ``U^T A U`` diagonal
  (the top j Ritz vectors of ``V``), the pinching by ``(U U^T, I - U U^T)`` has eigenvalues
  ``theta_1..theta_j`` and those of the compression of ``A`` to the rest, which sum to
  ``t_j = 1 - sum theta`` over at most ``min(n - j, R)`` nonzero values. Pinching does not
  lower entropy and the flat vector has the most, so ``H(A) <= sum_{i<=j} f(theta_i) +
  t_j log(min(n - j, R) / t_j)`` for every j, with no condition on the order of ``theta_j``
  and ``t_j / (n - j)``. Two bases are used: the deflation's, and ``Q`` with every
  probe's Lanczos vectors (:func:`union_ritz_values`, hundreds of directions at no new
  product). The smallest value, plus ``roundoff``, is ``upper``: it bounds H from above
  (and MIR from below) whatever the probes; the estimate is clipped to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from infoprobe.defaults import PROBES
from infoprobe.errors import InputError
from infoprobe.joint_operator import JointOperator

__all__ = ["JointEstimate", "JointOperator", "certified_upper_bound", "joint_entropy"]

#: Default largest number of Lanczos steps per probe.
MAX_STEPS = 120


def entropy_terms(lam: Tensor) -> Tensor:
    """``f(lam) = -lam log lam`` elementwise, with ``f(0) = 0`` and round-off negatives as 0."""
    lam = lam.clamp_min(0)
    return -torch.special.xlogy(lam, lam)


# ----------------------------------------------------------------------------- deflation


def _orthonormal(x: Tensor, against: Tensor | None) -> Tensor:
    """An orthonormal basis of ``x``'s columns after removing ``against`` (twice, for
    float64 orthogonality); columns that vanish are dropped."""
    for _ in range(2):
        if against is not None:
            x = x - against @ (against.mT @ x)
    q, r = torch.linalg.qr(x)
    keep = r.diagonal().abs() > 1e-10 * max(1.0, float(r.diagonal().abs().max()))
    return q[:, keep]


@dataclass(frozen=True)
class Deflation:
    """Ritz pairs of ``A`` on a block Krylov basis started from the class indicators.

    ``values`` [k] descending and ``vectors`` [n, k] orthonormal, ``products`` [n, k] their
    products with ``A``; ``residuals`` [k] are ``|A u - theta u|``. ``all_values`` are every
    Ritz value of the basis (for the bound).
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    all_values: Tensor
    products: Tensor


def deflate(op: JointOperator, steps: int = 1, keep_tol: float = 1e-2) -> Deflation:
    """Block Lanczos from the class indicators, ``steps`` blocks beyond them.

    Ritz pairs are kept for deflation when their residual is below ``keep_tol * theta``
    (relative), so the dropped coupling to the rest of the spectrum is second order.
    """
    basis, products = op.indicators()
    basis_list, product_list = [basis], [products]
    block = products
    for _ in range(steps):
        block = _orthonormal(block, torch.cat(basis_list, 1))
        if block.shape[1] == 0 or sum(b.shape[1] for b in basis_list) + block.shape[1] > op.n // 2:
            break
        basis_list.append(block)
        block = op @ block
        product_list.append(block)
    v = torch.cat(basis_list, 1)
    av = torch.cat(product_list, 1)
    del basis_list, product_list
    t = v.mT @ av
    theta, y = torch.linalg.eigh((t + t.mT) / 2)
    theta, y = theta.flip(0), y.flip(1)
    # |A u - theta u|^2 = y^T (AV)^T (AV) y - theta^2 for u = V y (V orthonormal): no n x k
    # temporaries beyond the kept vectors.
    gram = av.mT @ av
    residuals = ((y * (gram @ y)).sum(0) - theta**2).clamp_min(0).sqrt()
    keep = residuals <= keep_tol * theta.clamp_min(0)
    return Deflation(theta[keep], v @ y[:, keep], residuals[keep], theta, av @ y[:, keep])


def certified_upper_bound(theta: Tensor, n: int, rank: int | None = None) -> float:
    """``min_j sum_{i<=j} f(theta_i) + t_j log(min(n - j, rank) / t_j)`` over j = 0..k
    (module doc), ``t_j = 1 - sum_{i<=j} theta_i``.

    ``theta`` [k]: Ritz values of ``A`` (trace 1) on any orthonormal basis; ``rank``: a
    bound on the rank of ``A`` (default n).
    """
    rank = n if rank is None else min(rank, n)
    theta = theta.clamp_min(0).sort(descending=True).values
    j = torch.arange(0, theta.numel() + 1, device=theta.device, dtype=torch.float64)
    zero = theta.new_zeros(1)
    head = torch.cat([zero, torch.cumsum(entropy_terms(theta), 0)])
    tail = (1 - torch.cat([zero, torch.cumsum(theta, 0)])).clamp_min(0)
    room = torch.minimum(n - j, torch.full_like(j, rank))
    spread = torch.where(
        tail > 0, tail * torch.log(room.clamp_min(1) / tail.clamp_min(1e-300)), zero
    )
    return float((head + spread)[room > 0].min())


def tail_bracket(trace: float, rank: int) -> tuple[float, float]:
    """``[-t log t, t log(rank / t)]``: the entropy ``sum f(nu)`` of nonnegative ``nu`` that
    sum to ``t = trace <= 1`` with at most ``rank`` of them nonzero (each ``nu <= t`` gives
    the lower end, the flat vector the upper)."""
    if trace <= 0 or rank < 1:
        return 0.0, 0.0
    return -trace * math.log(trace), trace * math.log(rank / trace)


def union_ritz_values(
    found: Deflation, quad: ProbeValues, cutoff: float = 1e-3, width: int = 1024
) -> Tensor:
    """Ritz values of ``A`` on ``span(Q, the probes' Lanczos vectors)`` (descending); the
    first probes whose vectors fit ``width`` columns (at least one) are used.

    The probes' Krylov spaces are each orthonormal and orthogonal to ``Q`` but overlap one
    another; their Gram ``G = V^T V`` is diagonalised and the directions with eigenvalue
    below ``cutoff`` of the largest (nearly inside the others) dropped, so ``U = V E L^-1/2``
    is an orthonormal, well-conditioned basis of the rest. ``U^T A U`` needs only ``V^T (A V)``
    and ``(A Q)^T V``, from products Lanczos already made: two n x K^2 products and no
    new product with ``A``. These values give a far tighter bound than the deflation
    basis alone when the spectrum has no class structure (C = 2, power-law, real features).
    """
    used = max(1, width // quad.steps) * quad.steps
    v, av = quad.vectors[:, :used], quad.products[:, :used]
    lam, vec = torch.linalg.eigh(v.mT @ v)
    keep = lam > cutoff * float(lam.max())
    w = vec[:, keep] / lam[keep].sqrt()
    inner = w.mT @ (v.mT @ av) @ w
    cross = found.products.mT @ v @ w
    k = found.values.numel()
    t = torch.zeros(k + w.shape[1], k + w.shape[1], dtype=torch.float64, device=v.device)
    t[:k, :k] = torch.diag(found.values)
    t[:k, k:], t[k:, :k], t[k:, k:] = cross, cross.mT, (inner + inner.mT) / 2
    return torch.linalg.eigvalsh(t).flip(0)


# ----------------------------------------------------------------------------- quadrature


def _gauss_and_radau(alpha: Tensor, beta: Tensor, m: int, broke: Tensor) -> tuple[Tensor, Tensor]:
    """``e1^T f(T) e1`` by the m-node Gauss rule and the (m+1)-node Gauss-Radau rule with a
    node at 0, for p tridiagonals (``alpha``, ``beta`` [p, M] on cpu; first m used).

    Radau extends ``T`` by the diagonal entry ``beta_m^2 e_m^T T^-1 e_m`` that puts an
    eigenvalue at 0 (Golub & Meurant, 2010, sec. 6.2). A probe whose Lanczos broke down
    (``broke``) has an exact Gauss value, used for both.
    """
    a, b = alpha[:, :m], beta[:, :m]
    t = torch.diag_embed(a) + torch.diag_embed(b[:, :-1], 1) + torch.diag_embed(b[:, :-1], -1)
    lam, vec = torch.linalg.eigh(t)
    gauss = (vec[:, 0, :] ** 2 * entropy_terms(lam)).sum(1)
    inverse_last = (vec[:, -1, :] ** 2 / lam.clamp_min(1e-300)).sum(1)
    ext = torch.zeros(a.shape[0], m + 1, m + 1, dtype=a.dtype)
    ext[:, :m, :m] = t
    ext[:, m, m - 1] = ext[:, m - 1, m] = b[:, -1]
    ext[:, m, m] = b[:, -1] ** 2 * inverse_last
    lam_r, vec_r = torch.linalg.eigh(ext)
    radau = (vec_r[:, 0, :] ** 2 * entropy_terms(lam_r)).sum(1)
    return gauss, torch.where(broke, gauss, radau)


@dataclass(frozen=True)
class ProbeValues:
    """Per probe: Gauss (upper) and Gauss-Radau (lower) values of ``x^T f(B) x`` with
    ``B = Pi A Pi``, and the control variates ``x^T B x`` and ``x^T x`` (exact from Lanczos).
    ``vectors`` [n, p * steps] are the Lanczos vectors of every probe and ``products`` their
    products with ``A`` (zero columns where a probe broke down early).
    """

    gauss: Tensor
    radau: Tensor
    quadratic: Tensor
    squared_norm: Tensor
    steps: int
    vectors: Tensor | None = None
    products: Tensor | None = None

    def mean_and_se(self, trace: float, size: int) -> tuple[float, float, int]:
        """:func:`control_variate_mean` of the bracket midpoints."""
        controls = torch.stack([self.quadratic - trace, self.squared_norm - size], 1)
        return control_variate_mean((self.gauss + self.radau) / 2, controls)


def control_variate_mean(values: Tensor, controls: Tensor) -> tuple[float, float, int]:
    """``E[values]`` by rank-revealing least squares on ``controls`` [p, c] of known mean 0.

    The fit ``values ~ b0 + controls @ b`` is solved on the centred controls, each scaled to
    unit size, by an SVD that keeps singular values above ``max(p, c) eps s_max``; a control
    constant across probes (centred size below round-off) is dropped first. ``b0 = mean(values)
    - mean(controls) @ b`` and its ordinary least-squares standard error
    ``s sqrt(1/p + xbar^T (X^T X)^+ xbar)``, ``s^2 = RSS / (p - 1 - rank)``. With no degree of
    freedom left the controls are dropped (the plain mean). Returns
    ``(b0, se, degrees of freedom)``. Here ``f(x) = -x log x`` is close to linear over the
    deflated spectrum, so ``x^T B x`` takes out most of the probe variance.
    """
    p = values.numel()
    eps = torch.finfo(torch.float64).eps
    values, controls = values.to(torch.float64).cpu(), controls.to(torch.float64).cpu()
    means = controls.mean(0)
    centred = controls - means
    spread = centred.abs().amax(0)
    varying = spread > 16 * p * eps * controls.abs().amax(0)
    x = centred[:, varying] / spread[varying]
    xbar = means[varying] / spread[varying]
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    kept = s > max(p, x.shape[1]) * eps * float(s.max()) if s.numel() else s > 0
    if p - 1 - int(kept.sum()) < 1:
        kept = torch.zeros_like(kept)
    u, s, vh = u[:, kept], s[kept], vh[kept]
    centred_values = values - values.mean()
    coef = vh.mT @ ((u.mT @ centred_values) / s)
    dof = p - 1 - s.numel()
    rss = float(((centred_values - x @ coef) ** 2).sum())
    leverage = float((((vh @ xbar) / s) ** 2).sum())
    mean = float(values.mean() - xbar @ coef)
    return mean, math.sqrt(rss / dof * (1.0 / p + leverage)), dof


def _narrow(quad: ProbeValues, tol: float, trace: float, size: int) -> bool:
    """The mean bracket is below ``tol`` or below a tenth of the standard error."""
    width = float((quad.gauss - quad.radau).mean())
    return width <= max(tol, 0.1 * quad.mean_and_se(trace, size)[1])


def _grown(buffer: Tensor, needed: int, limit: int) -> Tensor:
    """``buffer`` [p, n, cap] with room for ``needed`` steps (capacity doubled, <= limit)."""
    if buffer.shape[2] >= needed:
        return buffer
    bigger = buffer.new_zeros(*buffer.shape[:2], min(limit, 2 * buffer.shape[2]))
    bigger[:, :, : buffer.shape[2]] = buffer
    return bigger


def probe_quadrature(
    op: JointOperator,
    q: Tensor,
    probes: Tensor,
    trace: float,
    *,
    max_steps: int,
    tol: float,
    min_steps: int = 8,
) -> ProbeValues:
    """Independent Lanczos runs on ``Pi A Pi`` from each column of ``probes`` [n, p]
    (orthogonal to ``q``), blocked into one product per step, adding steps until
    :func:`_narrow`. Lanczos is float64 with full reorthogonalisation against its own basis
    and ``q`` (twice: Parlett's "twice is enough"). The Lanczos vectors and their products
    with ``A`` are kept for the certified bound (:func:`union_ritz_values`)."""
    n, p = probes.shape
    norms = torch.linalg.vector_norm(probes, dim=0)
    x = probes / norms
    basis = torch.zeros(p, n, min(16, max_steps), dtype=torch.float64, device=probes.device)
    products = torch.zeros_like(basis)
    alpha = torch.zeros(p, max_steps, dtype=torch.float64)
    beta = torch.zeros(p, max_steps, dtype=torch.float64)
    broke = torch.zeros(p, dtype=torch.bool)
    scale = (norms**2).cpu()
    for m in range(max_steps):
        basis, products = (_grown(b, m + 1, max_steps) for b in (basis, products))
        basis[:, :, m] = x.mT
        w = op @ x
        products[:, :, m] = w.mT
        alpha[:, m] = (x * w).sum(0).cpu()
        for _ in range(2):
            w = w - q @ (q.mT @ w)
            v = basis[:, :, : m + 1]
            w = w - torch.bmm(v, torch.bmm(v.mT, w.mT.unsqueeze(2))).squeeze(2).mT
        size = torch.linalg.vector_norm(w, dim=0).cpu()
        broke |= size <= 1e-10 * alpha[:, : m + 1].abs().amax(1).clamp_min(1e-300)
        beta[:, m] = torch.where(broke, torch.zeros_like(size), size)
        x = w / torch.where(broke, torch.ones_like(size), size).to(w.device)
        x[:, broke.to(w.device)] = 0
        if m + 1 >= min_steps or m + 1 == max_steps or bool(broke.all()):
            gauss, radau = _gauss_and_radau(alpha, beta, m + 1, broke)
            quad = ProbeValues(gauss * scale, radau * scale, alpha[:, 0] * scale, scale, m + 1)
            size = n - q.shape[1]
            if m + 1 == max_steps or bool(broke.all()) or _narrow(quad, tol, trace, size):
                flat = [b[:, :, : m + 1].permute(1, 0, 2).reshape(n, -1) for b in (basis, products)]
                return replace(quad, vectors=flat[0], products=flat[1])
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class JointEstimate:
    """``H(K_Z o K_W)`` estimated: ``value``, 1-sigma ``err``, certified ``upper`` bound.

    ``probes`` probe vectors, ``steps`` Lanczos steps (0 when the tail bracket gave the
    tail), ``deflated`` Ritz pairs taken out, ``bracket`` the width of the tail's bracket
    (mean Gauss minus Gauss-Radau, or of :func:`tail_bracket`), ``se`` the raw standard error
    of the probe mean, ``roundoff`` the bound on the float64 product's effect (in ``err`` and
    ``upper``).
    """

    value: float
    err: float
    upper: float
    probes: int
    steps: int
    seed: int
    deflated: int
    bracket: float
    se: float
    roundoff: float

    @property
    def label(self) -> str:
        return f"slq(probes={self.probes},steps={self.steps},seed={self.seed})"


def _t_central(t: float, dof: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``dof`` (Abramowitz & Stegun 26.7.3-4):
    with ``c = cos(atan(t / sqrt(dof)))`` and ``s`` its sine, a finite series in ``c^2``."""
    theta = math.atan(t / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    term, total = 1.0, 1.0
    if dof % 2 == 0:
        for k in range(1, dof // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if dof == 1:
        return 2 * theta / math.pi
    for k in range(1, (dof - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.sqrt(c2) * total)


def _t_quantile(dof: int) -> float:
    """Student-t 0.975 quantile for integer ``dof``: bisection on :func:`_t_central`."""
    low, high = 1.959963984540054, 13.0
    while _t_central(high, dof) < 0.95:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central(mid, dof) < 0.95 else (low, mid)
    return (low + high) / 2


def rademacher(n: int, p: int, seed: int, device: torch.device) -> Tensor:
    """[n, p] float64 entries +-1 from ``torch.Generator().manual_seed(seed)`` (on cpu)."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, p), generator=g, dtype=torch.int8)
    return (signs.to(torch.float64) * 2 - 1).to(device)


@dataclass(frozen=True)
class _Tail:
    """``tr f(Pi A Pi)``: value, 1-sigma error, bracket width, raw probe error, steps, and
    the Ritz values of the probes' Krylov spaces (for the bound)."""

    value: float
    err: float
    bracket: float
    se: float = 0.0
    steps: int = 0
    ritz: Tensor | None = None


def _probed_tail(
    op: JointOperator,
    found: Deflation,
    trace: float,
    probes: int,
    seed: int,
    max_steps: int,
    tol: float,
) -> _Tail:
    """The tail by Hutchinson over ``probes`` Rademacher vectors projected off ``Q``."""
    q = found.vectors
    g = rademacher(op.n, probes, seed, q.device)
    quad = probe_quadrature(op, q, g - q @ (q.mT @ g), trace, max_steps=max_steps, tol=tol)
    mean, se, dof = quad.mean_and_se(trace, op.n - q.shape[1])
    bracket = float((quad.gauss - quad.radau).mean())
    err = se * _t_quantile(dof) / 1.959963984540054 + bracket / 2
    return _Tail(mean, err, bracket, se, quad.steps, union_ritz_values(found, quad))


def joint_entropy(
    zh: Tensor,
    labels: Tensor,
    wh: Tensor,
    *,
    probes: int = PROBES,
    seed: int = 0,
    max_steps: int = MAX_STEPS,
    deflation_steps: int = 1,
    tol: float = 1e-4,
) -> JointEstimate:
    """Estimate ``H(K_Z o K_W)`` for unit rows ``zh`` [n, d], ``wh`` [C, d] (module doc).

    ``tol``: Lanczos stops once the mean bracket width (nats) is below ``tol`` or below a
    tenth of the probe standard error, whichever is larger.
    Memory: ``O(n d)`` for the grouped features, ``O(n k)`` for k deflated vectors and
    ``O(n p max_steps)`` for the Lanczos bases, all far below n^2.
    """
    if probes < 4:
        raise InputError(f"the slq estimate needs at least 4 probes for an error bar, got {probes}")
    op = JointOperator(zh, labels, wh)
    found = deflate(op, deflation_steps)
    trace = max(0.0, 1.0 - float(found.values.sum()))  # tr(Pi A Pi): A has unit trace
    low, high = tail_bracket(trace, min(op.n - found.values.numel(), op.rank_bound))
    roundoff = op.roundoff()
    tail = _Tail((low + high) / 2, (high - low) / 2, high - low)
    upper = certified_upper_bound(found.all_values, op.n, op.rank_bound)
    if tail.err > roundoff:  # the probes can do better than the bracket
        probed = _probed_tail(op, found, trace, probes, seed, max_steps, tol)
        upper = min(upper, certified_upper_bound(probed.ritz, op.n, op.rank_bound))
        if probed.err < tail.err:
            tail = replace(probed, value=min(max(probed.value, low), high))
    upper += roundoff
    value = min(float(entropy_terms(found.values).sum()) + tail.value, upper)
    return JointEstimate(
        value,
        tail.err + roundoff,
        upper,
        probes,
        tail.steps,
        seed,
        int(found.values.numel()),
        tail.bracket,
        tail.se,
        roundoff,
    )
