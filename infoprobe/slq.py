"""The joint entropy H(K_Z o K_W) estimated without an n x n matrix.

For n past the exact eigen-solve (ImageNet-val: n = 50,000, d = 2048, C = 1000), this module
estimates ``H = tr f(A)`` with ``A = (K_Z o K_W) / n`` and ``f(x) = -x log x`` by stochastic
Lanczos quadrature (SLQ), with the top of the spectrum deflated exactly and every number
carrying an error bar. Nothing of size n x n is formed.

* **Implicit product.** ``(K v)_i = zh_i . sum_c M[y_i, c] s_c`` with ``s_c = sum_{j: y_j=c}
  v_j zh_j`` the per-class sums and ``M = Wh Wh^T`` the C x C head Gram: ``O(n d + C^2 d)``
  per vector, in float32, blocked over many vectors as batched matrix products
  (:class:`JointOperator`).
* **Deflation.** About C large eigenvalues (one per class cluster) dominate the variance of
  plain SLQ. A block Krylov basis ``V = [P, A P, ...]`` started from the normalised class
  indicators ``P`` (whose product with ``A`` is one n x C matrix product) catches them; its
  Ritz pairs ``(theta_k, u_k)`` are exact to the residual ``|A u_k - theta_k u_k|``.
* **Tail.** With ``Q`` the basis of the deflated Ritz vectors and ``Pi = I - Q Q^T``,
  ``tr f(A) ~ sum_k f(theta_k) + tr f(Pi A Pi)``; the second term is ``E[x^T f(Pi A Pi) x]``
  for Rademacher probes ``x = Pi g`` (Hutchinson), each quadratic form computed by Lanczos
  from ``x`` in float64 with full reorthogonalisation.
* **Bracket.** For ``f = -x log x`` every even derivative is negative and every odd one
  positive on ``(0, inf)``, so the m-node Gauss rule overestimates each quadratic form and the
  (m+1)-node Gauss-Radau rule with a node at 0 underestimates it (Golub & Meurant,
  *Matrices, Moments and Quadrature*, 2010, ch. 6). Lanczos steps are added until the mean
  bracket is narrow next to the statistical error; the midpoint is used.
* **Control variates.** ``x^T B x`` (``B = Pi A Pi``) has the known mean ``tr B = 1 -
  sum theta_k`` and ``x^T x`` the known mean ``n - k``; both come free from Lanczos. The
  tail term is the intercept of a least-squares fit of the probe values on them
  (:func:`control_variate_mean`), which removes most of the probe variance because ``f`` is
  nearly linear across the deflated spectrum.
* **Error bar.** ``err`` is the least-squares standard error of that intercept, scaled by
  ``t_{dof, 0.975} / 1.96`` (Student-t, dof = p - 3), plus half the bracket width. The
  deflation error (second order in the Ritz residuals) is not in it; the tests and
  ``benchmarks/bench_scale.py`` measure the coverage of ``value +- 2 err`` against the exact
  value.
* **Certified bound.** For any orthonormal ``V``, the top-j Ritz values ``theta`` of
  ``V^T A V`` satisfy ``sum_{i<=j} theta_i <= sum_{i<=j} lam_i`` (Ky Fan), so the spectrum of
  ``A`` majorises ``(theta_1..theta_j, t/(N-j), ..., t/(N-j))`` with ``t = 1 - sum theta``
  whenever ``t/(N-j) <= theta_j`` (N = n); entropy is Schur-concave, hence
  ``H <= sum_{i<=j} f(theta_i) + t log((N-j)/t)`` for every such j. The smallest of these is
  ``upper``: it bounds H from above (and MIR from below) whatever the probes, up to float32
  round-off of the product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from infoprobe.errors import InputError

#: Default number of probe vectors.
PROBES = 24
#: Default largest number of Lanczos steps per probe.
MAX_STEPS = 120
#: Columns per blocked product: bounds the [groups, d, columns] intermediates.
_BLOCK = 16


def entropy_terms(lam: Tensor) -> Tensor:
    """``f(lam) = -lam log lam`` elementwise, with ``f(0) = 0`` and round-off negatives as 0."""
    lam = lam.clamp_min(0)
    return -torch.special.xlogy(lam, lam)


# ----------------------------------------------------------------------------- the product


class JointOperator:
    """``A = (K_Z o K_W) / n`` as an implicit product, never an n x n matrix.

    ``zh`` [n, d] and ``wh`` [C, d] unit rows, ``labels`` [n] (as from
    :func:`infoprobe.info.prepare`). Samples are sorted by class and cut into groups of at
    most ``g = ceil(n / C')`` samples of one class (C' classes present), stored zero-padded
    as ``zg`` [G, g, d] float32 with ``G <= 2 C'`` (padding at most doubles n x d). Then for
    a block ``V`` [n, b]: ``S = zg^T V`` per group, summed per class ([C', d, b]),
    ``T = M S`` with ``M`` the head Gram of the present classes, and ``(A V)_i = zh_i .
    T[y_i] / n`` per group again.
    """

    def __init__(self, zh: Tensor, labels: Tensor, wh: Tensor) -> None:
        n, d = zh.shape
        self.n, self.device = n, zh.device
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self.counts = counts
        self.inverse = inverse  # class index among the present classes, per sample
        c = classes.numel()
        g = max(1, math.ceil(n / c))
        groups_per_class = (counts + g - 1) // g
        first_group = torch.cumsum(groups_per_class, 0) - groups_per_class
        order = torch.argsort(inverse, stable=True)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n, device=zh.device) - start[inverse[order]]
        group = first_group[inverse[order]] + rank // g
        self.slot = torch.empty(n, dtype=torch.long, device=zh.device)
        self.slot[order] = group * g + rank % g  # where each sample sits in [G * g]
        self.groups = int(groups_per_class.sum())
        self.group_size = g
        self.group_class = torch.repeat_interleave(
            torch.arange(c, device=zh.device), groups_per_class
        )
        zg = torch.zeros(self.groups * g, d, dtype=torch.float32, device=zh.device)
        zg[self.slot] = zh.to(torch.float32)
        self.zg = zg.view(self.groups, g, d)
        w = wh[classes]
        self.gram = (w @ w.mT).to(torch.float32)
        self.class_sums = torch.zeros(c, d, dtype=torch.float32, device=zh.device)
        self.class_sums.index_add_(0, inverse, zh.to(torch.float32))

    def __matmul__(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` [n] or [n, b]; float64 in and out, float32 inside."""
        flat = v.ndim == 1
        v = v.reshape(self.n, -1)
        out = torch.empty(v.shape, dtype=torch.float64, device=v.device)
        for lo in range(0, v.shape[1], _BLOCK):
            out[:, lo : lo + _BLOCK] = self._block(v[:, lo : lo + _BLOCK])
        return out.reshape(-1) if flat else out

    def _block(self, v: Tensor) -> Tensor:
        b = v.shape[1]
        d = self.zg.shape[2]
        vg = torch.zeros(self.groups * self.group_size, b, dtype=torch.float32, device=v.device)
        vg[self.slot] = v.to(torch.float32)
        vg = vg.view(self.groups, self.group_size, b)
        per_group = torch.bmm(self.zg.mT, vg)  # [G, d, b]
        sums = torch.zeros(self.gram.shape[0], d, b, dtype=torch.float32, device=v.device)
        sums.index_add_(0, self.group_class, per_group)
        mixed = (self.gram @ sums.view(sums.shape[0], -1)).view_as(sums)  # [C', d, b]
        out = torch.bmm(self.zg, mixed[self.group_class])  # [G, g, b]
        return out.view(-1, b)[self.slot].to(torch.float64) / self.n

    def indicators(self) -> tuple[Tensor, Tensor]:
        """``(P, A P)``: the normalised class indicators [n, C'] and their product.

        ``(A P)_{i,c} = M[y_i, c] (zh_i . s_c) / (n sqrt(n_c))`` with ``s_c`` the class sums:
        one n x d x C' product instead of C' implicit products.
        """
        root = self.counts.to(torch.float64).sqrt()
        p = torch.zeros(self.n, root.numel(), dtype=torch.float64, device=self.device)
        p[torch.arange(self.n, device=self.device), self.inverse] = 1.0 / root[self.inverse]
        cos = (self.zg.view(-1, self.zg.shape[2]) @ self.class_sums.mT)[self.slot]  # [n, C']
        ap = cos.to(torch.float64) * self.gram.to(torch.float64)[self.inverse] / (self.n * root)
        return p, ap


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

    ``values`` [k] descending and ``vectors`` [n, k] orthonormal; ``residuals`` [k] are
    ``|A u - theta u|``. ``all_values`` are every Ritz value of the basis (for the bound).
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    all_values: Tensor


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
    del av
    residuals = ((y * (gram @ y)).sum(0) - theta**2).clamp_min(0).sqrt()
    keep = residuals <= keep_tol * theta.clamp_min(0)
    vectors = v @ y[:, keep]
    return Deflation(theta[keep], vectors, residuals[keep], theta)


def certified_upper_bound(theta: Tensor, n: int) -> float:
    """``min_j sum_{i<=j} f(theta_i) + t_j log((n-j)/t_j)`` over the valid j (module doc).

    ``theta``: Ritz values of ``A`` on any orthonormal basis (trace of ``A`` is 1).
    """
    theta = theta.clamp_min(0).sort(descending=True).values
    j = torch.arange(1, theta.numel() + 1, device=theta.device, dtype=torch.float64)
    head = torch.cumsum(entropy_terms(theta), 0)
    tail = (1 - torch.cumsum(theta, 0)).clamp_min(0)
    rest = n - j
    bound = head + torch.where(
        tail > 0, tail * torch.log(rest / tail.clamp_min(1e-300)), torch.zeros_like(tail)
    )
    valid = (tail / rest <= theta) & (rest > 0)
    candidates = torch.cat([bound[valid], bound.new_tensor([math.log(n)])])
    return float(candidates.min())


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
    """

    gauss: Tensor
    radau: Tensor
    quadratic: Tensor
    squared_norm: Tensor
    steps: int

    def mean_and_se(self, trace: float, size: int) -> tuple[float, float, int]:
        """:func:`control_variate_mean` of the bracket midpoints."""
        controls = torch.stack([self.quadratic - trace, self.squared_norm - size], 1)
        return control_variate_mean((self.gauss + self.radau) / 2, controls)


def control_variate_mean(values: Tensor, controls: Tensor) -> tuple[float, float, int]:
    """``E[values]`` by least squares on ``controls`` [p, c] of known mean 0.

    Fits ``values ~ b0 + controls @ b``; ``b0`` is the estimate and its ordinary least-squares
    standard error ``sqrt(s^2 [(X^T X)^-1]_00)`` with ``s^2 = RSS / (p - c - 1)``. Returns
    ``(b0, se, degrees of freedom)``. Here ``f(x) = -x log x`` is close to linear over the
    deflated spectrum, so ``x^T B x`` (whose mean ``tr B = 1 - sum theta`` is known) takes out
    most of the probe variance: about 20x less error than the plain mean in our tests.
    """
    p = values.numel()
    design = torch.cat([torch.ones(p, 1, dtype=values.dtype), controls], 1)
    dof = p - design.shape[1]
    if dof < 1:
        return float(values.mean()), float(values.std() / math.sqrt(p)), p - 1
    gram_inv = torch.linalg.inv(design.mT @ design)
    coef = gram_inv @ (design.mT @ values)
    rss = float(((values - design @ coef) ** 2).sum())
    return float(coef[0]), math.sqrt(rss / dof * float(gram_inv[0, 0])), dof


def _narrow(quad: ProbeValues, tol: float, trace: float, size: int) -> bool:
    """The mean bracket is below ``tol`` or below a tenth of the standard error."""
    width = float((quad.gauss - quad.radau).mean())
    return width <= max(tol, 0.1 * quad.mean_and_se(trace, size)[1])


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
    and ``q`` (twice: Parlett's "twice is enough")."""
    n, p = probes.shape
    norms = torch.linalg.vector_norm(probes, dim=0)
    x = probes / norms
    basis = torch.empty(p, n, max_steps, dtype=torch.float64, device=probes.device)
    alpha = torch.zeros(p, max_steps, dtype=torch.float64)
    beta = torch.zeros(p, max_steps, dtype=torch.float64)
    broke = torch.zeros(p, dtype=torch.bool)
    scale = (norms**2).cpu()
    for m in range(max_steps):
        basis[:, :, m] = x.mT
        w = op @ x
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
                return quad
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class JointEstimate:
    """``H(K_Z o K_W)`` estimated: ``value``, 1-sigma ``err``, certified ``upper`` bound.

    ``probes`` probe vectors, ``steps`` Lanczos steps, ``deflated`` Ritz pairs taken out
    exactly, ``bracket`` the mean Gauss minus Gauss-Radau width of the tail term, ``se``
    the raw standard error of the probe mean.
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

    @property
    def label(self) -> str:
        return f"slq(probes={self.probes},steps={self.steps},seed={self.seed})"


def _t_quantile(dof: int) -> float:
    """Student-t 0.975 quantile (Cornish-Fisher expansion; < 1e-3 off for dof >= 3)."""
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def rademacher(n: int, p: int, seed: int, device: torch.device) -> Tensor:
    """[n, p] float64 entries +-1 from ``torch.Generator().manual_seed(seed)`` (on cpu)."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, p), generator=g, dtype=torch.int8)
    return (signs.to(torch.float64) * 2 - 1).to(device)


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
    q = found.vectors
    trace = 1.0 - float(found.values.sum())  # tr(Pi A Pi): A has unit trace
    g = rademacher(op.n, probes, seed, zh.device)
    quad = probe_quadrature(op, q, g - q @ (q.mT @ g), trace, max_steps=max_steps, tol=tol)
    mean, se, dof = quad.mean_and_se(trace, op.n - q.shape[1])
    bracket = float((quad.gauss - quad.radau).mean())
    value = float(entropy_terms(found.values).sum()) + mean
    err = se * _t_quantile(dof) / 1.959963984540054 + bracket / 2
    upper = certified_upper_bound(found.all_values, op.n)
    return JointEstimate(
        value, err, upper, probes, quad.steps, seed, int(found.values.numel()), bracket, se
    )
