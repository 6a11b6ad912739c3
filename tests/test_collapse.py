"""NC1-NC4: closed forms on a simplex ETF, and a brute-force reference on random data.

The reference below is written from the definitions with explicit per-sample loops, d x d
covariances and ``torch.linalg.pinv``; it shares no code with :mod:`infoprobe.collapse`.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from infoprobe import collapse


def brute_force(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, logits: torch.Tensor):
    z, w = z.double(), w.double()
    classes = sorted(set(y.tolist()))
    c = len(classes)
    means = torch.stack([z[y == k].mean(0) for k in classes])
    mu_g = means.mean(0)
    centred = means - mu_g
    sw = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
    for i in range(len(z)):
        r = z[i] - means[classes.index(int(y[i]))]
        sw += torch.outer(r, r)
    sw /= len(z)
    sb = sum(torch.outer(m, m) for m in centred) / c
    nc1 = float(torch.trace(sw @ torch.linalg.pinv(sb, hermitian=True))) / c

    def cov(rows):
        norms = [math.sqrt(sum(v * v for v in r.tolist())) for r in rows]
        mean = sum(norms) / len(norms)
        return math.sqrt(sum((x - mean) ** 2 for x in norms) / (len(norms) - 1)) / mean

    def angles(rows):
        devs = []
        for a, b in itertools.permutations(range(len(rows)), 2):
            cos = float(rows[a] @ rows[b] / (rows[a].norm() * rows[b].norm()))
            devs.append(abs(cos + 1 / (len(rows) - 1)))
        return sum(devs) / len(devs)

    rows = w[classes]
    nc3 = float(((rows / rows.norm() - centred / centred.norm()) ** 2).sum())
    agree = 0
    for i in range(len(z)):
        distances = [float((z[i] - m).norm()) for m in means]
        agree += classes[distances.index(min(distances))] == int(logits[i].argmax())
    return dict(
        nc1=nc1,
        nc2_equinorm=cov(centred),
        nc2_equiangular=angles(centred),
        nc3=nc3,
        nc4=agree / len(z),
        nc2_equinorm_head=cov(rows),
        nc2_equiangular_head=angles(rows),
    )


def simplex_etf(c: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(M [c, d] the centred simplex ETF, an offset orthogonal to its span)."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, c + 1, generator=gen, dtype=torch.float64))
    etf = math.sqrt(c / (c - 1)) * (torch.eye(c) - 1 / c).double()
    return 3.0 * etf @ basis[:, :c].T, 5.0 * basis[:, c]


@pytest.mark.parametrize("c,d", [(3, 5), (10, 16)])
def test_simplex_etf_with_collapsed_features_gives_each_limit(c, d):
    etf, offset = simplex_etf(c, d)
    y = torch.arange(c).repeat_interleave(7)
    z = etf[y] + offset  # every sample sits on its class mean
    head = 0.4 * etf  # self-dual head
    logits = z @ head.T + 0.1
    got = collapse.neural_collapse(z, y, head, logits)
    limits = dict(
        nc1=0.0,
        nc2_equinorm=0.0,
        nc2_equiangular=0.0,
        nc3=0.0,
        nc2_equinorm_head=0.0,
        nc2_equiangular_head=0.0,
    )
    for name, limit in limits.items():
        assert getattr(got, name) == pytest.approx(limit, abs=1e-12), name
    assert got.nc4 == 1.0 and got.n_classes == c


def test_away_from_collapse_every_measure_moves_off_its_limit():
    etf, offset = simplex_etf(4, 6)
    y = torch.arange(4).repeat_interleave(5)
    gen = torch.Generator().manual_seed(1)
    z = etf[y] + offset + 0.8 * torch.randn(len(y), 6, generator=gen, dtype=torch.float64)
    head = etf * torch.tensor([[1.0], [2.0], [1.0], [1.0]], dtype=torch.float64)
    head[0] += 0.5 * etf[1]
    logits = -torch.cdist(z, etf + offset)  # nearest ETF vertex...
    logits[:3] = -logits[:3]  # ...except on three samples
    got = collapse.neural_collapse(z, y, head, logits)
    assert got.nc1 > 0.01 and got.nc2_equinorm > 0.01 and got.nc2_equiangular > 0.01
    assert got.nc3 > 0.01 and got.nc2_equinorm_head > 0.1 and got.nc2_equiangular_head > 0.01
    assert got.nc4 < 1.0


@pytest.mark.parametrize("n,d,c,absent", [(60, 12, 5, None), (45, 4, 7, 2), (80, 30, 6, 0)])
def test_random_data_matches_the_brute_force_definitions(n, d, c, absent):
    gen = torch.Generator().manual_seed(n + d)
    y = torch.randint(0, c, (n,), generator=gen)
    if absent is not None:
        y[y == absent] = (absent + 1) % c  # one class has no sample: C' = c - 1
    z = torch.randn(n, d, generator=gen) + 0.3 * torch.randn(c, d, generator=gen)[y] + 4.0
    head = torch.randn(c, d, generator=gen)
    logits = torch.randn(n, c, generator=gen)
    logits[: n // 2] = -torch.cdist(
        z,
        torch.stack(
            [z[y == k].mean(0) if (y == k).any() else torch.full((d,), 1e6) for k in range(c)]
        ),
    )[: n // 2]  # half the predictions agree with the NCC
    got = collapse.neural_collapse(z, y, head, logits).as_dict()
    want = brute_force(z, y, head, logits)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert got["n_classes"] == len(set(y.tolist()))
    assert 0.4 < got["nc4"] < 1.0


def test_moments_about_another_shift_give_the_same_statistics():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(30, 5, generator=gen, dtype=torch.float64) + 100.0
    y = torch.randint(0, 3, (30,), generator=gen)
    a = collapse.class_moments(z[:10], y[:10], 3)
    b = collapse.class_moments(z[10:], y[10:], 3)
    whole = collapse.class_moments(z, y, 3, shift=a.shift)
    joined = a + b  # b is re-expressed about a's shift
    for got, want in zip(
        (joined.counts, joined.sums, joined.scatter),
        (whole.counts, whole.sums, whole.scatter),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


def test_undefined_measures_are_nan():
    z = torch.randn(4, 3)
    one_class = collapse.neural_collapse(z, torch.zeros(4, dtype=torch.long), torch.ones(2, 3))
    assert all(math.isnan(v) for k, v in one_class.as_dict().items() if k != "n_classes")
    no_head = collapse.neural_collapse(z, torch.tensor([0, 0, 1, 1]))
    assert math.isnan(no_head.nc3) and math.isnan(no_head.nc4) and not math.isnan(no_head.nc1)
