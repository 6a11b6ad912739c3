"""The degenerate-value rule: a ratio whose denominator is at or below its float32 noise floor
is NaN with a note giving the value and the floor, on every route."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infoprobe import info
from infoprobe.entropy import entropy_noise_floor
from infoprobe.metrics import InterplayMetrics

U32 = 2.0**-24


def entropy_of(spectrum: np.ndarray) -> float:
    p = spectrum[spectrum > 0]
    return float(-(p * np.log(p)).sum())


# ---- the floor ------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [8, 64, 512, 2048])
def test_floor_is_the_largest_entropy_weyl_allows(d):
    """Top eigenvalue >= 1 - delta (Weyl), unit trace, rank <= d: the flat rest is the worst."""
    delta = d * U32 / (1 - d * U32)
    flat = np.concatenate([[1 - delta], np.full(d - 1, delta / (d - 1))])
    floor = entropy_noise_floor(d, d)
    assert floor == pytest.approx(entropy_of(flat), rel=1e-12)
    rng = np.random.default_rng(d)
    for _ in range(200):  # any other spectrum in the set has less entropy
        rest = rng.dirichlet(np.full(d - 1, rng.uniform(0.05, 5)))
        mass = delta * rng.uniform(0, 1)
        assert entropy_of(np.concatenate([[1 - mass], mass * rest])) <= floor
    assert entropy_noise_floor(1, d) == 0.0  # rank one: H = 0 exactly
    assert entropy_noise_floor(d, d) < entropy_noise_floor(d, 2 * d)  # longer rows, more noise


def test_float32_round_off_of_collapsed_features_stays_under_the_floor():
    """Rows on one direction at random scales, normalised and multiplied in float32."""
    g = torch.Generator().manual_seed(0)
    n, d = 400, 256
    v = torch.randn(d, generator=g)
    z = (torch.rand(n, 1, generator=g) * 100 + 0.01) * v  # float32
    zh = z / z.norm(dim=1, keepdim=True)
    k = (zh @ zh.T).double()
    lam = np.linalg.eigvalsh(k.numpy() / float(k.trace()))
    noise = entropy_of(np.clip(lam, 0, None))
    assert 0 < noise <= entropy_noise_floor(min(n, d), d)


# ---- near collapse: one direction plus noise --------------------------------------------------


def near_collapse(sigma: float, n: int = 600, d: int = 64, c: int = 4, seed: int = 1):
    """z_i = e_1 + sigma g_i with g_i orthogonal to e_1; a random head."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, d, generator=g, dtype=torch.float64)
    noise[:, 0] = 0
    z = torch.zeros(n, d, dtype=torch.float64)
    z[:, 0] = 1
    z += sigma * noise
    y = torch.arange(n) % c
    return z, y, torch.randn(c, d, generator=g, dtype=torch.float64), noise[:, 1:]


def schur_entropy(sigma: float, g: torch.Tensor) -> float:
    """H(K_Z) from the block form of ``sum zh zh^T / n`` in the basis (e_1, rest): the small
    eigenvalues are ``sigma^2 eig(G - b b^T / a)`` up to a relative O(sigma^2), the top one
    is 1 minus their sum (unit trace). Exact to ~1e-12 relative for sigma <= 1e-6."""
    g = g.numpy()
    c2 = 1.0 / (1.0 + sigma**2 * (g**2).sum(1))
    n = g.shape[0]
    a = c2.mean()
    b = (c2[:, None] * g).mean(0)
    gram = (c2[:, None, None] * g[:, :, None] * g[:, None, :]).sum(0) / n
    small = sigma**2 * np.clip(np.linalg.eigvalsh(gram - np.outer(b, b) / a), 0, None)
    return entropy_of(np.concatenate([[1 - small.sum()], small]))


@pytest.mark.parametrize("sigma", [1e-6, 1e-9, 1e-12])
def test_near_collapse_gives_nan_ratios_with_the_value_and_the_floor(sigma):
    z, y, w, g = near_collapse(sigma)
    got = info.interplay(z, y, w)
    want = schur_entropy(sigma, g)
    floor = entropy_noise_floor(64, 64)
    assert want < floor  # the case is below the floor
    # the d x d float64 solve resolves eigenvalues down to ~ d eps: h_z is right to that
    assert got.h_z == pytest.approx(want, rel=1e-3, abs=1e-12)
    assert math.isnan(got.mir) and got.mir_err is None
    assert f"h_z = {got.h_z:.3g}" in got.note and f"noise floor {floor:.3g}" in got.note
    assert got.hdr == pytest.approx(1 - got.h_z / got.h_w, abs=1e-12)  # one side: defined


def test_near_collapse_above_the_floor_keeps_exact_ratios():
    z, y, w, g = near_collapse(1e-2)
    got = info.interplay(z, y, w)
    zh = z / z.norm(dim=1, keepdim=True)
    wh = w / w.norm(dim=1, keepdim=True)
    k_z, k_w = zh @ zh.T, wh[y] @ wh[y].T
    h = [entropy_of(np.linalg.eigvalsh(k.numpy() / 600)) for k in (k_z, k_w, k_z * k_w)]
    assert got.h_z > 10 * entropy_noise_floor(64, 64) and got.note == ""
    assert got.mir == pytest.approx((h[0] + h[1] - h[2]) / min(h[:2]), abs=1e-9)


def test_every_route_applies_the_floor():
    """batch, interplay_between (prune's dense columns), the streaming metric, slq."""
    z, y, w, _ = near_collapse(1e-9)
    batch = info.interplay(z, y, w, estimate="batch", batch_size=200)
    assert math.isnan(batch.mir) and "h_z = 0 (noise floor" in batch.note
    estimated = info.interplay(z, y, w, estimate="slq", probes=6)
    assert math.isnan(estimated.mir) and "noise floor" in estimated.note
    assert math.isnan(estimated.mir_err) and math.isnan(estimated.mir_lower)
    spread = torch.randn(600, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    between = info.interplay_between(spread, z)
    assert math.isnan(between.mir) and "H(features_b) = " in between.note
    assert between.hdr == pytest.approx(1 - between.h_w / between.h_z, abs=1e-12)
    metric = InterplayMetrics(num_classes=4)
    metric.update(z, y, w)
    streamed = metric.compute()
    assert math.isnan(streamed["mir"]) and "noise floor" in streamed["note"]


def test_both_sides_below_their_floors_leave_hdr_undefined():
    z, y, _, _ = near_collapse(1e-6)
    head = torch.zeros(4, 64, dtype=torch.float64)
    head[:, 0] = 1
    head[:, 1:] = 1e-6 * torch.randn(4, 63, generator=torch.Generator().manual_seed(2))
    got = info.interplay(z, y, head)
    assert 0 < got.h_w <= entropy_noise_floor(4, 64) and 0 < got.h_z
    assert math.isnan(got.mir) and math.isnan(got.hdr)
    assert "HDR is undefined (0/0): both entropies are at their noise floor" in got.note
    assert f"h_w = {got.h_w:.3g} (noise floor {entropy_noise_floor(4, 64):.3g})" in got.note


# ---- the fixtures ------------------------------------------------------------------------------


@pytest.mark.slow
def test_readme_random_prune_at_ratio_0_9_is_nan_with_a_note():
    """The README's example: at 0.9 the features point one way (h_z ~ 1e-11, chance
    accuracy); MIR and mir_dense used to read 0.82 and 0.94."""
    from infoprobe.api import prune

    rows = prune(
        "fixtures/lmc/same_init_a.safetensors",
        data="fixtures/digits/test.safetensors",
        ratios="0,0.5,0.9",
        method="random",
        seed=1,
    ).set_index("ratio")
    last = rows.loc[0.9]
    floor = entropy_noise_floor(256, 256)  # test_efficientnet: d = 256 features, n = 450
    assert last.h_z < 1e-9 < floor and last.accuracy < 0.15
    assert math.isnan(last.mir) and math.isnan(last.mir_dense)
    assert f"h_z = {last.h_z:.3g} (noise floor {floor:.3g})" in last.note
    assert f"vs dense: MIR is undefined: H(features_b) = {last.h_z:.3g}" in last.note
    assert last.hdr == pytest.approx(1.0, abs=1e-9)
    for ratio in (0.0, 0.5):  # above the floor: values, no note
        assert rows.loc[ratio].h_z > floor and 0 < rows.loc[ratio].mir < 1
        assert 0 < rows.loc[ratio].mir_dense <= 1 and rows.loc[ratio].note == ""


@pytest.mark.slow
def test_no_fixture_value_falls_under_the_floor():
    """Every bundled checkpoint keeps its MIR: the floor only empties collapsed values."""
    from infoprobe.api import analyze

    checkpoints = [
        "fixtures/series/test_efficientnet-step000.safetensors",
        "fixtures/series/test_efficientnet-step025.safetensors",
        "fixtures/lmc/same_init_a.safetensors",
        "fixtures/lmc/other_init.safetensors",
        "fixtures/label_smoothing/ls0.0.safetensors",
        "fixtures/label_smoothing/ls0.1.safetensors",
    ]
    rows = analyze(checkpoints, data="fixtures/digits/test.safetensors")
    assert rows.mir.notna().all() and rows.hdr.notna().all(), rows.note.tolist()
    assert not rows.note.str.contains("noise floor").any()
    assert (rows.h_z > 0.1).all()
