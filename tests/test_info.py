"""infoprobe.info against a brute-force n x n implementation and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infoprobe import exact, info, routes
from infoprobe.errors import InputError
from infoprobe.info import batch_indices, interplay, interplay_between, matrix_entropy, nc_optimum

EXACT = 1e-9


# ---- brute force: the definitions, literally ----------------------------------------------


def brute_entropy(gram: torch.Tensor) -> float:
    lam = torch.linalg.eigvalsh(gram.double() / gram.shape[0]).clamp_min(0)
    return float(-(lam[lam > 0] * lam[lam > 0].log()).sum())


def brute_interplay(z, y, w) -> tuple[float, float, float]:
    zh = z.double() / z.double().norm(dim=1, keepdim=True)
    wh = w.double() / w.double().norm(dim=1, keepdim=True)
    k_z = zh @ zh.T
    k_w = wh[y] @ wh[y].T
    return brute_entropy(k_z), brute_entropy(k_w), brute_entropy(k_z * k_w)


def clustered(n, d, c, spread, seed):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    z = means[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = means + 0.1 * torch.randn(c, d, generator=g, dtype=torch.float64)
    return z, y, w


def random_case(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    return z, y, w


def simplex_etf(c: int) -> torch.Tensor:
    """C unit vectors in R^C with pairwise cosine -1/(C-1)."""
    m = torch.eye(c, dtype=torch.float64) - 1.0 / c
    return m / m.norm(dim=1, keepdim=True)


# Shapes cover n < d, n > d, d*C < n (Khatri-Rao route) and d*C > n (n x n route).
SHAPES = [(40, 100, 5), (300, 20, 4), (600, 6, 10), (200, 30, 10), (500, 64, 100), (900, 3, 3)]


@pytest.mark.parametrize("n,d,c", SHAPES)
@pytest.mark.parametrize("make", [random_case, lambda n, d, c, s: clustered(n, d, c, 0.3, s)])
def test_matches_brute_force(n, d, c, make):
    z, y, w = make(n, d, c, 7)
    got = interplay(z, y, w)
    h_z, h_w, h_zw = brute_interplay(z, y, w)
    assert got.h_z == pytest.approx(h_z, abs=EXACT)
    assert got.h_w == pytest.approx(h_w, abs=EXACT)
    assert got.h_zw == pytest.approx(h_zw, abs=EXACT)
    assert got.mi == pytest.approx(h_z + h_w - h_zw, abs=EXACT)
    assert got.mir == pytest.approx((h_z + h_w - h_zw) / min(h_z, h_w), abs=1e-8)
    assert got.hdr == pytest.approx(abs(h_z - h_w) / max(h_z, h_w), abs=1e-8)
    assert (got.n_samples, got.n_classes, got.estimate) == (n, c, "exact")


def record_solves(monkeypatch) -> list[int]:
    """The side of every eigen-solve that interplay runs, in order."""
    sizes = []
    real = info.spectral_entropy
    for module in (info, routes):
        monkeypatch.setattr(
            module, "spectral_entropy", lambda a: sizes.append(a.shape[0]) or real(a)
        )
    return sizes


def test_khatri_rao_route_is_taken_and_exact(monkeypatch):
    """d*r < n must not build the n x n joint matrix."""
    z, y, w = clustered(800, 8, 5, 0.5, 3)
    sizes = record_solves(monkeypatch)
    got = interplay(z, y, w)
    assert max(sizes) == 8 * 5
    assert got.h_zw == pytest.approx(brute_interplay(z, y, w)[2], abs=EXACT)


def test_rank_compression_shrinks_the_joint_matrix(monkeypatch):
    """Features of rank 3 in d = 50 give a (3*r) joint matrix, not (50*r)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 50, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (700,), generator=g)
    z = torch.randn(700, 3, generator=g, dtype=torch.float64) @ basis
    w = torch.randn(4, 50, generator=g, dtype=torch.float64)
    sizes = record_solves(monkeypatch)
    got = interplay(z, y, w)
    assert sizes[-1] == 3 * 4
    assert got.h_zw == pytest.approx(brute_interplay(z, y, w)[2], abs=EXACT)


def test_head_rank_deficient_factor():
    """A head of rank 2 (C = 6 rows in a plane) gives r = 2 and stays exact."""
    g = torch.Generator().manual_seed(1)
    plane = torch.randn(2, 9, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, generator=g, dtype=torch.float64) @ plane
    y = torch.randint(0, 6, (400,), generator=g)
    z = torch.randn(400, 9, generator=g, dtype=torch.float64)
    got = interplay(z, y, w)
    assert (got.h_z, got.h_w, got.h_zw) == pytest.approx(brute_interplay(z, y, w), abs=EXACT)


# ---- closed forms -----------------------------------------------------------------------


def test_nc_optimum_closed_form_values():
    assert nc_optimum(3).mir == 0.5
    assert nc_optimum(10).mir == pytest.approx(0.952350, abs=1e-6)
    assert nc_optimum(100).mir == pytest.approx(0.997812, abs=1e-6)
    assert nc_optimum(10).hdr == 0.0
    two = nc_optimum(2)
    assert math.isnan(two.mir) and math.isnan(two.hdr) and "C = 2" in two.note
    with pytest.raises(InputError):
        nc_optimum(1)


@pytest.mark.parametrize("c", [3, 10, 100])
def test_simplex_etf_reproduces_the_optimum(c):
    head = simplex_etf(c)
    y = torch.arange(c).repeat(4)
    features = 2.5 * head[y]  # collapsed onto the class means, aligned with the head
    got = interplay(features, y, head)
    assert got.mir == pytest.approx(nc_optimum(c).mir, abs=EXACT)
    assert got.hdr == pytest.approx(0.0, abs=EXACT)
    assert got.h_z == pytest.approx(math.log(c - 1), abs=EXACT)


def test_rank_one_has_zero_entropy():
    x = torch.randn(1, 7, dtype=torch.float64).repeat(30, 1)
    xh = x / x.norm(dim=1, keepdim=True)
    assert float(matrix_entropy(xh @ xh.T)) == pytest.approx(0.0, abs=EXACT)


def test_orthonormal_features_give_log_n():
    q, _ = torch.linalg.qr(torch.randn(40, 25, dtype=torch.float64))
    rows = q.T  # 25 orthonormal rows in R^40
    assert float(matrix_entropy(rows @ rows.T)) == pytest.approx(math.log(25), abs=EXACT)
    got = interplay(rows, torch.zeros(25, dtype=torch.long), torch.ones(1, 40))
    assert got.h_z == pytest.approx(math.log(25), abs=EXACT)


def test_matrix_entropy_matches_brute_and_validates():
    z, _, _ = random_case(30, 5, 2, 0)
    zh = z / z.norm(dim=1, keepdim=True)
    assert float(matrix_entropy(zh @ zh.T)) == pytest.approx(brute_entropy(zh @ zh.T), abs=EXACT)
    with pytest.raises(InputError, match="square"):
        matrix_entropy(torch.ones(3, 4))
    with pytest.raises(InputError, match="unit diagonal"):
        matrix_entropy(2 * torch.eye(3))
    with pytest.raises(InputError, match="symmetric"):
        matrix_entropy(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(InputError, match="NaN"):
        matrix_entropy(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))


# ---- the batch estimate ---------------------------------------------------------------------


def test_batch_estimate_is_the_mean_of_batch_entropies():
    z, y, w = clustered(250, 12, 4, 0.4, 5)
    got = interplay(z, y, w, estimate="batch", batch_size=64, seed=3)
    parts = batch_indices(250, 64, 3)
    assert [len(p) for p in parts] == [64, 64, 64]  # the short last batch is dropped
    assert sorted(torch.cat(parts).tolist()) == sorted(set(torch.cat(parts).tolist()))
    means = torch.tensor([brute_interplay(z[p], y[p], w) for p in parts], dtype=torch.float64)
    means = means.mean(0)
    assert (got.h_z, got.h_w, got.h_zw) == pytest.approx(means.tolist(), abs=EXACT)
    assert (got.estimate, got.batch_size, got.n_batches) == ("batch", 64, 3)
    assert (got.n_samples, got.n_used, got.label) == (250, 192, "batch(B=64,seed=3)")
    assert got.mir_err is None and got.mir_lower is None
    again = interplay(z, y, w, estimate="batch", batch_size=64, seed=3)
    assert again == got
    other = interplay(z, y, w, estimate="batch", batch_size=64, seed=4)
    assert other.h_z != got.h_z


def test_batch_estimate_computes_the_head_gram_once(monkeypatch):
    """The C x C head Gram's rank factor is solved once, not once per batch."""
    z, y, w = clustered(600, 6, 40, 0.4, 2)
    calls = []
    real = info.rank_factor
    for module in (info, exact):
        monkeypatch.setattr(module, "rank_factor", lambda m: calls.append(m.shape) or real(m))
    got = interplay(z, y, w, estimate="batch", batch_size=50)
    assert got.n_batches == 12 and calls == [(40, 40)]


def test_batch_larger_than_n_is_the_exact_value():
    z, y, w = random_case(50, 6, 3, 2)
    batch = interplay(z, y, w, estimate="batch", batch_size=512)
    exact = interplay(z, y, w)
    assert batch.n_batches == 1
    assert batch.h_zw == pytest.approx(exact.h_zw, abs=EXACT)


# ---- the entropy's gradient ----------------------------------------------------------------


def test_spectral_entropy_backward_is_the_gradient_of_the_renormalised_value():
    """Trace 2.7, not 1: the value is the entropy of lam / sum(lam), and so is the gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    a = (x @ x.T / 7 * 2.7 / float(torch.trace(x @ x.T / 7))).requires_grad_()
    assert float(torch.trace(a)) == pytest.approx(2.7)
    assert torch.autograd.gradcheck(info.spectral_entropy, (a,), eps=1e-6, atol=1e-7)
    lam = torch.linalg.eigvalsh(a.detach())
    p = lam / lam.sum()
    assert float(info.spectral_entropy(a)) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-13)


# ---- edge cases ------------------------------------------------------------------------------


def test_zero_rows_raise_or_drop():
    z, y, w = random_case(20, 4, 3, 1)
    z[[3, 7]] = 0
    with pytest.raises(InputError, match="features has 2 zero-norm row"):
        interplay(z, y, w)
    kept = interplay(z, y, w, drop_zero_rows=True)
    mask = torch.ones(20, dtype=torch.bool)
    mask[[3, 7]] = False
    assert kept.n_samples == 18
    assert (kept.h_z, kept.h_w, kept.h_zw) == pytest.approx(
        brute_interplay(z[mask], y[mask], w), abs=EXACT
    )


def test_zero_head_row_is_nan_with_a_note_only_when_used():
    z, y, w = random_case(20, 4, 3, 1)
    y = y.clamp(max=1)
    w[2] = 0  # class 2 has no samples: harmless
    assert math.isfinite(interplay(z, y, w).mir)
    w[1] = 0  # class 1 has samples: K_W is undefined
    r = interplay(z, y, w)
    assert r.h_z == pytest.approx(brute_interplay(z, y, torch.ones_like(w))[0], abs=EXACT)
    assert all(math.isnan(v) for v in (r.h_w, r.h_zw, r.mi, r.mir, r.hdr))
    assert "head rows of classes 1 are zero" in r.note and "--drop-zero-rows" in r.note
    assert r.n_samples == 20 and r.n_classes == 3
    kept = interplay(z, y, w, drop_zero_rows=True)  # the other classes are measured
    assert kept.n_samples == int((y == 0).sum()) and math.isfinite(kept.h_w)


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("estimate", ["exact", "batch"])
def test_all_zero_head_keeps_h_z_and_gives_nan_ratios(drop, estimate):
    """An untrained zero-initialised head (timm's MLP-Mixer, ResMLP at step 0)."""
    z, y, w = random_case(30, 5, 3, 2)
    r = interplay(z, y, torch.zeros_like(w), drop_zero_rows=drop, estimate=estimate, batch_size=10)
    parts = batch_indices(30, 10, 0) if estimate == "batch" else [torch.arange(30)]
    want = sum(brute_interplay(z[i], y[i], w[y[i]].new_ones(3, 5))[0] for i in parts)
    assert r.h_z == pytest.approx(want / len(parts), abs=EXACT)
    assert all(math.isnan(v) for v in (r.h_w, r.h_zw, r.mi, r.mir, r.hdr))
    assert "head rows of classes 0, 1, 2 are zero" in r.note and r.n_samples == 30


def test_timm_mixer_head_starts_at_zero():
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=3, img_size=32, patch_size=16, num_blocks=1, embed_dim=8)
    assert not model.get_classifier().weight.any()  # the case the NaN rows are for


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_name_the_tensor(bad):
    z, y, w = random_case(10, 4, 2, 0)
    z[2, 1] = bad
    with pytest.raises(InputError, match="^features contains 1 NaN/Inf"):
        interplay(z, y, w)
    z[2, 1] = 0.5
    w[0, 0] = bad
    with pytest.raises(InputError, match="^head contains 1 NaN/Inf"):
        interplay(z, y, w)


def test_one_sample_is_zero_entropy_and_nan_ratios():
    got = interplay(torch.randn(1, 5), torch.tensor([2]), torch.randn(3, 5))
    assert (got.h_z, got.h_w, got.h_zw, got.mi) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(got.mir) and math.isnan(got.hdr)
    assert "MIR is undefined" in got.note


def test_single_class_present():
    z, _, w = random_case(30, 6, 4, 0)
    got = interplay(z, torch.full((30,), 2), w)
    assert got.h_w == pytest.approx(0.0, abs=EXACT)
    assert got.h_zw == pytest.approx(got.h_z, abs=EXACT)  # K_W is all ones
    assert math.isnan(got.mir) and got.hdr == pytest.approx(1.0)
    assert "one class" in got.note


def test_two_classes_is_defined_unless_collapsed():
    z, y, w = clustered(60, 5, 2, 0.5, 0)
    got = interplay(z, y, w)
    assert 0 <= got.mir <= 1 and not got.note
    head = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.arange(2).repeat(10)
    collapsed = interplay(head[y], y, head)
    assert math.isnan(collapsed.mir) and math.isnan(collapsed.hdr) and collapsed.note


def test_labels_out_of_range_and_shape_errors():
    z, y, w = random_case(10, 4, 3, 0)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
        interplay(z, torch.full((10,), 3), w)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
        interplay(z, torch.full((10,), -1), w)
    with pytest.raises(InputError, match="integer class indices"):
        interplay(z, y.double(), w)
    with pytest.raises(InputError, match="1-D tensor of 10"):
        interplay(z, y[:5], w)
    with pytest.raises(InputError, match="d = 4 but head rows have d = 5"):
        interplay(z, y, torch.randn(3, 5))
    with pytest.raises(InputError, match="empty"):
        interplay(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), w)
    with pytest.raises(InputError, match="estimate"):
        interplay(z, y, w, estimate="lanczos")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_are_upcast(dtype):
    z, y, w = random_case(80, 6, 3, 4)
    z_low, w_low = z.to(dtype), w.to(dtype)
    got = interplay(z_low, y, w_low)
    want = brute_interplay(z_low.double(), y, w_low.double())
    assert (got.h_z, got.h_w, got.h_zw) == pytest.approx(want, abs=EXACT)


def test_past_max_exact_dim_the_cheap_values_stay_exact():
    """Only the joint entropy needs the large solve: H_Z, H_W and HDR are kept exactly."""
    z, y, w = random_case(300, 400, 5, 0)
    got = interplay(z, y, w, estimate="exact", max_exact_dim=100)
    h_z, h_w, _ = brute_interplay(z, y, w)
    assert (got.h_z, got.h_w) == pytest.approx((h_z, h_w), abs=EXACT)
    assert got.hdr == pytest.approx(abs(h_z - h_w) / max(h_z, h_w), abs=1e-12)
    assert math.isnan(got.h_zw) and math.isnan(got.mi) and math.isnan(got.mir)
    assert "300 x 300" in got.note and "max_exact_dim=100" in got.note
    assert interplay(z, y, w, max_exact_dim=100, estimate="batch", batch_size=64).n_batches == 4
    with pytest.raises(InputError, match="batch estimate"):
        interplay(z, y, w, max_exact_dim=10, estimate="batch", batch_size=64)


# ---- interplay_between ---------------------------------------------------------------------


@pytest.mark.parametrize("n,d1,d2", [(50, 80, 60), (400, 6, 5), (300, 10, 40)])
def test_between_matches_brute_force(n, d1, d2):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, d1, generator=g, dtype=torch.float64)
    b = a[:, :1].repeat(1, d2) + torch.randn(n, d2, generator=g, dtype=torch.float64)
    got = interplay_between(a, b)
    ah, bh = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    k_a, k_b = ah @ ah.T, bh @ bh.T
    want = brute_entropy(k_a), brute_entropy(k_b), brute_entropy(k_a * k_b)
    assert (got.h_z, got.h_w, got.h_zw) == pytest.approx(want, abs=EXACT)
    assert got.n_classes is None


def test_between_identical_views():
    a = torch.randn(100, 8, dtype=torch.float64)
    got = interplay_between(a, 3 * a)
    assert got.hdr == pytest.approx(0.0, abs=EXACT)
    assert 0 < got.mir <= 1 + EXACT
    with pytest.raises(InputError, match="same samples"):
        interplay_between(a, a[:50])


# ---- properties ------------------------------------------------------------------------------


@st.composite
def cases(draw):
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 12))
    c = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.05, 0.5, 3.0]))
    return clustered(n, d, c, spread, seed)


@settings(max_examples=40, deadline=None)
@given(cases())
def test_bounds(case):
    z, y, w = case
    got = interplay(z, y, w)
    n = z.shape[0]
    for h in (got.h_z, got.h_w, got.h_zw):
        assert -EXACT <= h <= math.log(n) + EXACT
    assert got.mi >= -EXACT
    assert got.mi <= min(got.h_z, got.h_w) + EXACT
    if not math.isnan(got.mir):
        assert -1e-8 <= got.mir <= 1 + 1e-8
    if not math.isnan(got.hdr):
        assert 0 <= got.hdr <= 1 + 1e-12


@settings(max_examples=25, deadline=None)
@given(cases(), st.integers(0, 2**31 - 1))
def test_invariances(case, seed):
    z, y, w = case
    base = interplay(z, y, w)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(z.shape[0], generator=g)
    q, _ = torch.linalg.qr(torch.randn(z.shape[1], z.shape[1], generator=g, dtype=torch.float64))
    scale_z = torch.rand(z.shape[0], 1, generator=g, dtype=torch.float64) * 10 + 0.1
    scale_w = torch.rand(w.shape[0], 1, generator=g, dtype=torch.float64) * 10 + 0.1
    for other in (
        interplay(z[perm], y[perm], w),
        interplay(z @ q, y, w @ q),
        interplay(z * scale_z, y, w * scale_w),
    ):
        assert (other.h_z, other.h_w, other.h_zw) == pytest.approx(
            (base.h_z, base.h_w, base.h_zw), abs=EXACT
        )


def test_between_batch_estimate_and_zero_rows():
    g = torch.Generator().manual_seed(9)
    a = torch.randn(130, 7, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(130, 7, generator=g, dtype=torch.float64)
    got = interplay_between(a, b, estimate="batch", batch_size=40, seed=1)
    parts = batch_indices(130, 40, 1)
    want = sum(interplay_between(a[p], b[p]).h_zw for p in parts) / len(parts)
    assert got.h_zw == pytest.approx(want, abs=EXACT)
    assert (got.estimate, got.n_batches, got.batch_size) == ("batch", 3, 40)
    b[5] = 0
    with pytest.raises(InputError, match="features_b has 1 zero-norm row"):
        interplay_between(a, b)
    kept = interplay_between(a, b, drop_zero_rows=True)
    assert kept.n_samples == 129
    assert kept.h_zw == pytest.approx(
        interplay_between(a[b.norm(dim=1) > 0], b[b.norm(dim=1) > 0]).h_zw, abs=EXACT
    )


def test_feature_entropy():
    z, _, _ = random_case(60, 9, 2, 3)
    zh = z / z.norm(dim=1, keepdim=True)
    assert info.feature_entropy(z) == pytest.approx(brute_entropy(zh @ zh.T), abs=EXACT)
    z[0] = 0
    with pytest.raises(InputError, match="zero-norm"):
        info.feature_entropy(z)
    assert info.feature_entropy(z, drop_zero_rows=True) == pytest.approx(
        brute_entropy(zh[1:] @ zh[1:].T), abs=EXACT
    )
    assert math.isnan(info.feature_entropy(torch.zeros(3, 4), drop_zero_rows=True))
