"""``A = (K_Z o K_W) / n`` as an implicit float64 product, and the entropy error its
round-off can cause.

``(A v)_i = zh_i . sum_c M[y_i, c] s_c / n`` with ``s_c = sum_{j: y_j = c} v_j zh_j`` the
per-class sums and ``M = Wh Wh^T`` the C x C head Gram: ``O(n d + C^2 d)`` per vector, never
an n x n matrix. The product runs in float64: in float32 no bound on its effect on the
entropy is below ~0.3 nats at n = 4,000 (:meth:`JointOperator.roundoff` with ``u = 2^-24``),
while a float64 product costs about 1.3x a float32 one and its bound is ~1e-9 nats at
n = 4,000 and ~4e-8 at n = 50,000.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Columns per blocked product: bounds the [groups, d, columns] intermediates.
_BLOCK = 16
#: Unit round-off of the float64 product.
_U64 = 2.0**-53


class JointOperator:
    """``A = (K_Z o K_W) / n`` for unit rows ``zh`` [n, d], ``wh`` [C, d] and ``labels`` [n]
    (as from :func:`infoprobe.checks.prepare`).

    Samples are sorted by class and cut into groups of at most ``g = ceil(n / C')`` samples
    of one class (C' classes present), stored zero-padded as ``zg`` [G, g, d] float64 with
    ``G <= 2 C'`` (padding at most doubles n x d). For a block ``V`` [n, b]: ``S = zg^T V``
    per group, summed per class ([C', d, b]), ``T = M S`` with ``M`` the head Gram of the
    present classes, and ``(A V)_i = zh_i . T[y_i] / n`` per group again.
    """

    def __init__(self, zh: Tensor, labels: Tensor, wh: Tensor) -> None:
        n, d = zh.shape
        self.n, self.d, self.device = n, d, zh.device
        zh = zh.to(torch.float64)
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
        zg = torch.zeros(self.groups * g, d, dtype=torch.float64, device=zh.device)
        zg[self.slot] = zh
        self.zg = zg.view(self.groups, g, d)
        w = wh[classes].to(torch.float64)
        self.gram = w @ w.mT
        self.class_sums = torch.zeros(c, d, dtype=torch.float64, device=zh.device)
        self.class_sums.index_add_(0, inverse, zh)

    @property
    def rank_bound(self) -> int:
        """``rank(A) <= rank(K_Z) rank(K_W) <= min(n, d * min(C', d))``, certain (no
        numerical rank is decided)."""
        return min(self.n, self.d * min(self.gram.shape[0], self.d))

    def __matmul__(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` [n] or [n, b], float64."""
        flat = v.ndim == 1
        v = v.reshape(self.n, -1)
        out = torch.empty(v.shape, dtype=torch.float64, device=v.device)
        for lo in range(0, v.shape[1], _BLOCK):
            out[:, lo : lo + _BLOCK] = self._block(v[:, lo : lo + _BLOCK])
        return out.reshape(-1) if flat else out

    def _block(self, v: Tensor) -> Tensor:
        b = v.shape[1]
        d = self.zg.shape[2]
        vg = torch.zeros(self.groups * self.group_size, b, dtype=torch.float64, device=v.device)
        vg[self.slot] = v.to(torch.float64)
        vg = vg.view(self.groups, self.group_size, b)
        per_group = torch.bmm(self.zg.mT, vg)  # [G, d, b]
        sums = torch.zeros(self.gram.shape[0], d, b, dtype=torch.float64, device=v.device)
        sums.index_add_(0, self.group_class, per_group)
        mixed = (self.gram @ sums.view(sums.shape[0], -1)).view_as(sums)  # [C', d, b]
        out = torch.bmm(self.zg, mixed[self.group_class])  # [G, g, b]
        return out.view(-1, b)[self.slot] / self.n

    def indicators(self) -> tuple[Tensor, Tensor]:
        """``(P, A P)``: the normalised class indicators [n, C'] and their product.

        ``(A P)_{i,c} = M[y_i, c] (zh_i . s_c) / (n sqrt(n_c))`` with ``s_c`` the class sums:
        one n x d x C' product instead of C' implicit products.
        """
        root = self.counts.to(torch.float64).sqrt()
        p = torch.zeros(self.n, root.numel(), dtype=torch.float64, device=self.device)
        p[torch.arange(self.n, device=self.device), self.inverse] = 1.0 / root[self.inverse]
        cos = (self.zg.view(-1, self.zg.shape[2]) @ self.class_sums.mT)[self.slot]  # [n, C']
        return p, cos * self.gram[self.inverse] / (self.n * root)

    def roundoff(self, unit: float = _U64) -> float:
        """A bound on ``|H(A + E) - H(A)|`` for the product's round-off ``E`` (nats).

        Every product term ``zh_ia M[y_i, y_j] zh_ja v_j / n`` passes through at most
        ``g + max n_c + C' + 2d + 4`` roundings (the group, class and head sums, the two
        length-d dot products, the division); the length-n inner products of Lanczos and of
        the Rayleigh-Ritz steps add n more, ``K = g + max n_c + C' + 2d + n + 4``. The
        computed values are then those of ``A + E`` with ``|E_ij| <= gamma_K |zh_i| |zh_j| /
        n = gamma_K / n``, ``gamma_K = K u / (1 - K u)`` (the componentwise backward error of a
        matrix product: Higham, 2002, sec. 3.5; taken as one E for every vector, the usual
        model of finite-precision Lanczos, on bases kept orthonormal). Hoffman-
        Wielandt gives ``sum_k |dlam_k| <= sqrt(n) ||E||_F <= sqrt(n) gamma_K =: T``; with
        Fannes' lemma ``|f(a) - f(b)| <= f(|a - b|)`` for ``|a - b| <= 1/2`` and Jensen,
        ``|dH| <= sum_k f(|dlam_k|) <= n f(T / n) = T log(n / T)``.
        """
        chain = self.group_size + int(self.counts.max()) + self.gram.shape[0] + 2 * self.d
        terms = chain + self.n + 4
        gamma = terms * unit / (1 - terms * unit)
        spread = math.sqrt(self.n) * gamma
        return spread * math.log(self.n / spread) if spread < self.n / math.e else math.inf
