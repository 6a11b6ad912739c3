"""InterplayMetrics: batch-by-batch states give the one-shot values on all samples."""

from __future__ import annotations

import math

import pytest
import torch

from infoprobe import collapse, info
from infoprobe.errors import InputError
from infoprobe.metrics import InterplayMetrics

INFO_KEYS = ("h_z", "h_w", "h_zw", "mi", "mir", "hdr")
NC_KEYS = (
    "nc1",
    "nc2_equinorm",
    "nc2_equiangular",
    "nc3",
    "nc4",
    "nc2_equinorm_head",
    "nc2_equiangular_head",
)


def sample(n: int, d: int, c: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    z = torch.randn(n, d, generator=gen) + 1.5 * torch.randn(c, d, generator=gen)[y] + 2.0
    head = torch.randn(c, d, generator=gen)
    return z, y, head, z @ head.T


def streamed(z, y, logits, sizes, c, **kwargs) -> InterplayMetrics:
    metric = InterplayMetrics(c, **kwargs)
    start = 0
    for size in sizes:
        metric.update(
            z[start : start + size], y[start : start + size], logits[start : start + size]
        )
        start += size
    assert start == len(z)
    return metric


@pytest.mark.parametrize("n,d,c", [(120, 6, 5), (90, 20, 4), (40, 3, 8), (30, 10, 6)])
def test_uneven_batches_equal_the_one_shot_values(n, d, c):
    z, y, head, logits = sample(n, d, c, seed=n)
    sizes = [1, 7, n - 1 - 7 - 13, 13]
    got = streamed(z, y, logits, sizes, c).compute(head)
    exact = info.interplay(z, y, head, estimate="exact", max_exact_dim=0)
    for key in INFO_KEYS:
        assert got[key] == pytest.approx(getattr(exact, key), rel=1e-9, abs=1e-9), key
    assert got["n_samples"] == n and got["n_classes"] == c
    whole = collapse.neural_collapse(z, y, head, logits)
    for key in NC_KEYS:
        assert got[key] == pytest.approx(getattr(whole, key), rel=1e-9, abs=1e-12), key


def test_merged_shards_equal_one_metric_over_all_samples():
    z, y, head, logits = sample(100, 8, 5, seed=1)
    z = z + 50.0  # a large common mean: shifts must cancel
    one = streamed(z, y, logits, [100], 5).compute(head)
    left = streamed(z[:30], y[:30], logits[:30], [30], 5)
    left.merge(streamed(z[30:], y[30:], logits[30:], [20, 50], 5))
    merged = left.compute(head)
    for key in INFO_KEYS + NC_KEYS:
        assert merged[key] == pytest.approx(one[key], rel=1e-9, abs=1e-12), key


def test_without_logits_nc4_is_nan_and_nothing_is_stored():
    z, y, head, _ = sample(50, 5, 3)
    metric = InterplayMetrics(3)
    metric.update(z, y)
    got = metric.compute(head)
    assert math.isnan(got["nc4"]) and not math.isnan(got["nc1"]) and metric.features == []


def test_zero_rows_raise_unless_dropped_and_reset_forgets():
    z, y, head, logits = sample(30, 4, 3)
    z[5] = 0.0
    with pytest.raises(InputError, match="zero-norm"):
        InterplayMetrics(3).update(z, y, logits)
    metric = InterplayMetrics(3, drop_zero_rows=True)
    metric.update(z, y, logits)
    keep = torch.arange(30) != 5
    exact = info.interplay(z[keep], y[keep], head)
    got = metric.compute(head)
    assert got["mir"] == pytest.approx(exact.mir, rel=1e-9) and got["n_samples"] == 29
    assert got["nc1"] == pytest.approx(collapse.neural_collapse(z, y, head).nc1, rel=1e-9)
    metric.reset()
    with pytest.raises(InputError, match="no samples"):
        metric.compute(head)


def test_bad_batches_are_refused():
    z, y, head, logits = sample(20, 4, 3)
    metric = InterplayMetrics(3)
    metric.update(z, y, logits)
    with pytest.raises(InputError, match="d = 5"):
        metric.update(torch.randn(4, 5), y[:4])
    with pytest.raises(InputError, match="labels must lie"):
        metric.update(z[:2], torch.tensor([0, 3]))
    with pytest.raises(InputError, match="logits"):
        metric.update(z[:2], y[:2], logits[:2, :2])
