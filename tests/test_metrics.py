"""InterplayMetrics: streamed states give the values of all samples at once.

Every value is checked against an independent brute-force computation on the n x n kernels
(eigenvalues of K / n, explicit class means and scatters) and against the one-shot row of
``infoprobe analyze`` (:func:`infoprobe.rows.analysis_row`) on the same samples.
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

from infoprobe import info
from infoprobe.errors import InputError
from infoprobe.metrics import InterplayMetrics
from infoprobe.rows import analysis_row
from infoprobe.schema import COLUMNS

INFO_KEYS = ("h_z", "h_w", "h_zw", "mi", "mir", "hdr")
NC_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")
VALUE_KEYS = (*INFO_KEYS, *NC_KEYS, "accuracy", "loss", "n_samples", "classes_present")


def sample(n: int, d: int, c: int, seed: int = 0, offset: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    y[:c] = torch.arange(c)  # every class present
    z = torch.randn(n, d, generator=gen) + 1.5 * torch.randn(c, d, generator=gen)[y] + offset
    head = torch.randn(c, d, generator=gen)
    return z, y, head, z @ head.T + torch.randn(c, generator=gen)


def streamed(z, y, head, logits, sizes, c, **kwargs) -> InterplayMetrics:
    metric = InterplayMetrics(c, **kwargs)
    start = 0
    for size in sizes:
        part = slice(start, start + size)
        metric.update(z[part], y[part], head, None if logits is None else logits[part])
        start += size
    assert start == len(z)
    return metric


# ----------------------------------------------------------------------- brute force


def entropy(k: torch.Tensor) -> float:
    lam = torch.linalg.eigvalsh(k.double() / k.shape[0]).clamp(min=0)
    lam = lam[lam > 1e-15]
    return float(-(lam * lam.log()).sum())


def brute_interplay(z, y, head) -> dict:
    zh = z.double() / z.double().norm(dim=1, keepdim=True)
    wh = head.double() / head.double().norm(dim=1, keepdim=True)
    k_z, k_w = zh @ zh.T, wh[y] @ wh[y].T
    h_z, h_w, h_zw = entropy(k_z), entropy(k_w), entropy(k_z * k_w)
    mi = h_z + h_w - h_zw
    return {
        "h_z": h_z,
        "h_w": h_w,
        "h_zw": h_zw,
        "mi": mi,
        "mir": mi / min(h_z, h_w),
        "hdr": abs(h_z - h_w) / max(h_z, h_w),
    }


def brute_collapse(z, y, head, logits, ncc_rows=None) -> dict:
    """Papyan et al.'s NC1-NC4 written out; NC4 on ``ncc_rows`` (default all samples)."""
    z, head = z.double(), head.double()
    classes = y.unique()
    means = torch.stack([z[y == c].mean(0) for c in classes])
    centred = means - means.mean(0)
    within = sum((z[y == c] - means[i]).T @ (z[y == c] - means[i]) for i, c in enumerate(classes))
    sigma_w, sigma_b = within / len(z), centred.T @ centred / len(classes)
    norms = centred.norm(dim=1)
    unit = centred / norms[:, None]
    off = ~torch.eye(len(classes), dtype=torch.bool)
    w = head[classes]
    rows = torch.arange(len(z)) if ncc_rows is None else ncc_rows
    nearest = classes[torch.cdist(z[rows], means).argmin(1)]
    return {
        "nc1": float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)))
        / len(classes),
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangular": float((unit @ unit.T + 1 / (len(classes) - 1))[off].abs().mean()),
        "nc3": float(((w / w.norm() - centred / centred.norm()) ** 2).sum()),
        "nc4": float((nearest == logits[rows].argmax(1)).double().mean()),
        "accuracy": float((logits.argmax(1) == y).double().mean()),
        "loss": float(torch.nn.functional.cross_entropy(logits.double(), y)),
    }


def one_shot(z, y, head, logits) -> dict:
    evaluation = SimpleNamespace(
        features=z, labels=y, head=head, logits=logits, loss=math.nan, accuracy=math.nan
    )
    return analysis_row("x", evaluation)


def assert_close(got: dict, want: dict, keys, rel: float = 1e-9) -> None:
    for key in keys:
        a, b = float(got[key]), float(want[key])
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=rel), (
            key,
            a,
            b,
        )


# ----------------------------------------------------------------------- values


@pytest.mark.parametrize("n,d,c", [(120, 40, 4), (90, 30, 5), (40, 12, 8)])
def test_kept_rows_give_the_values_of_all_samples(n, d, c):
    z, y, head, logits = sample(n, d, c, seed=n)
    metric = streamed(z, y, head, logits, [1, 7, n - 1 - 7 - 13, 13], c)
    assert not metric.folded  # n <= C d: the rows are kept
    got = metric.compute()
    assert_close(got, brute_interplay(z, y, head), INFO_KEYS)
    assert_close(got, brute_collapse(z, y, head, logits), (*NC_KEYS, "accuracy", "loss"))
    row = one_shot(z, y, head, logits)
    assert_close(got, row, (*INFO_KEYS, *NC_KEYS, "mir_nc", "hdr_nc", "n_samples", "n_classes"))
    assert got["estimate"] == row["estimate"] == "exact" and got["note"] == ""
    assert set(got) <= set(COLUMNS)
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), 1e-6)


@pytest.mark.parametrize("n,d,c", [(200, 6, 5), (301, 4, 3)])
def test_folded_grams_give_the_values_of_all_samples(n, d, c):
    z, y, head, logits = sample(n, d, c, seed=n)
    metric = streamed(z, y, head, logits, [50, 3, n - 53], c)
    assert metric.folded and len(metric.labels[0]) == c * d  # the NC4 probe rows
    got = metric.compute()
    assert_close(got, brute_interplay(z, y, head), INFO_KEYS)
    assert_close(got, one_shot(z, y, head, logits), INFO_KEYS)
    first = torch.arange(c * d)
    want = brute_collapse(z, y, head, logits, ncc_rows=first)
    assert_close(got, want, (*NC_KEYS, "accuracy", "loss"))
    assert f"nc4 on the first {c * d} of {n} samples" in got["note"]
    # NC4 is over the probe rows only, which differs from the whole set's here
    assert want["nc4"] != brute_collapse(z, y, head, logits)["nc4"]


def test_features_far_from_the_origin_keep_nc1_exact():
    z, y, head, logits = sample(150, 40, 4, seed=3, offset=50.0)
    got = streamed(z, y, head, logits, [64, 64, 22], 4).compute()
    assert_close(got, brute_collapse(z, y, head, logits), NC_KEYS)


def test_memory_is_the_smaller_of_rows_and_grams():
    c, d = 3, 5  # the rows fold once n > C d = 15
    z, y, head, logits = sample(100, d, c, seed=4)
    metric = InterplayMetrics(c)

    def floats() -> int:
        return sum(
            t.numel()
            for v in metric.metric_state.values()
            for t in (v if isinstance(v, list) else [v])
        )

    sizes = []
    for start in range(0, 100, 5):  # n = 15 = C d keeps the rows, n = 20 folds them
        metric.update(z[start : start + 5], y[start : start + 5], head, logits[start : start + 5])
        sizes.append((start + 5, metric.folded, floats()))
    fixed = 2 * c + 2 * c * d + d * d + 5  # counts, gram_counts, sums, head, scatter, scalars
    for n, folded, size in sizes:
        assert folded == (n > c * d)
        rows = min(n, c * d) * (d + 2)  # features, labels, predictions
        assert size == fixed + rows + (c * d * d if folded else 0), n


def test_forward_gives_the_batch_and_accumulates():
    z, y, head, logits = sample(80, 30, 4, seed=5)
    metric = InterplayMetrics(4)
    first = metric(z[:40], y[:40], head, logits[:40])
    assert_close(first, brute_interplay(z[:40], y[:40], head), INFO_KEYS)
    second = metric(z[40:], y[40:], head, logits[40:])
    assert_close(second, brute_interplay(z[40:], y[40:], head), INFO_KEYS)
    assert_close(metric.compute(), brute_interplay(z, y, head), INFO_KEYS)


def test_works_in_a_metric_collection():
    z, y, head, logits = sample(90, 20, 3, seed=6)  # the exact metric folds at n > 60
    collection = MetricCollection(
        {
            "exact": InterplayMetrics(3),
            "paper": InterplayMetrics(3, estimate="batch", batch_size=32),
        },
        prefix="probe/",
    )
    for part in (slice(0, 50), slice(50, 90)):
        collection.update(z[part], y[part], head, logits=logits[part])
    got = collection.compute()
    exact = info.interplay(z, y, head, estimate="exact")
    paper = info.interplay(z, y, head, estimate="batch", batch_size=32)
    assert got["probe/exact_mir"] == pytest.approx(exact.mir, rel=1e-9)
    assert got["probe/paper_mir"] == pytest.approx(paper.mir, rel=1e-9)
    assert got["probe/paper_estimate"] == "batch(B=32,seed=0)"
    want = brute_collapse(z, y, head, logits, ncc_rows=torch.arange(60))
    assert got["probe/exact_nc4"] == pytest.approx(want["nc4"])
    collection.reset()
    assert all(m.update_count == 0 for m in collection.values())


@pytest.mark.parametrize("split", [10, 60, 0])
def test_merged_shards_equal_one_metric(split):
    c, d = 4, 5  # C d = 20: a shard of 60 folds, one of 10 does not
    z, y, head, logits = sample(100, d, c, seed=7)
    one = streamed(z, y, head, logits, [100], c).compute()
    left = streamed(z[:split], y[:split], head, logits[:split], [split] if split else [], c)
    right = streamed(z[split:], y[split:], head, logits[split:], [100 - split], c)
    left.merge_state(right)
    merged = left.compute()
    assert_close(merged, one, (*INFO_KEYS, *NC_KEYS[:4], "accuracy", "loss", "n_samples"))
    assert right.compute()["n_samples"] == 100 - split  # the incoming metric is unchanged


@pytest.mark.parametrize("estimate", ["batch", "slq"])
def test_row_estimates_keep_the_rows(estimate):
    z, y, head, logits = sample(300, 4, 3, seed=8)
    metric = streamed(z, y, head, logits, [100, 200], 3, estimate=estimate, batch_size=64)
    assert not metric.folded
    got = metric.compute()
    want = info.interplay(z, y, head, estimate=estimate, batch_size=64)
    assert got["estimate"] == want.label and got["h_zw"] == pytest.approx(want.h_zw, rel=1e-9)
    assert got["nc4"] == pytest.approx(brute_collapse(z, y, head, logits)["nc4"])


def test_the_last_head_given_is_used():
    z, y, head, logits = sample(60, 30, 3, seed=9)
    metric = InterplayMetrics(3)
    metric.update(z[:30], y[:30], torch.randn(3, 30), logits[:30])
    metric.update(z[30:], y[30:], head, logits[30:])
    assert_close(metric.compute(), brute_interplay(z, y, head), INFO_KEYS)


def test_without_logits_nc4_accuracy_and_loss_are_nan_with_a_note():
    z, y, head, logits = sample(50, 20, 3)
    metric = InterplayMetrics(3)
    metric.update(z[:25], y[:25], head, logits[:25])
    metric.update(z[25:], y[25:], head)
    got = metric.compute()
    assert all(math.isnan(got[k]) for k in ("nc4", "accuracy", "loss"))
    assert "need the model's logits" in got["note"]
    assert_close(got, brute_collapse(z, y, head, logits), NC_KEYS[:4])


def test_zero_rows_raise_unless_dropped_and_reset_forgets():
    z, y, head, logits = sample(30, 12, 3)
    z[5] = 0.0
    with pytest.raises(InputError, match="zero-norm"):
        InterplayMetrics(3).update(z, y, head, logits)
    metric = InterplayMetrics(3, drop_zero_rows=True)
    metric.update(z, y, head, logits)
    keep = torch.arange(30) != 5
    got = metric.compute()
    assert_close(got, brute_interplay(z[keep], y[keep], head), INFO_KEYS)
    assert got["n_samples"] == 29
    assert_close(got, brute_collapse(z, y, head, logits), NC_KEYS)  # NC uses every sample
    metric.reset()
    with pytest.raises(InputError, match="no samples"):
        metric.compute()


def test_bad_batches_are_refused_and_change_nothing():
    z, y, head, logits = sample(20, 4, 3)
    metric = InterplayMetrics(3)
    metric.update(z, y, head, logits)
    before = {
        k: v.clone() if isinstance(v, torch.Tensor) else list(v)
        for k, v in metric.metric_state.items()
    }
    with pytest.raises(InputError, match="d = 5"):
        metric.update(torch.randn(4, 5), y[:4], torch.randn(3, 5))
    with pytest.raises(InputError, match="labels must lie"):
        metric.update(z[:2], torch.tensor([0, 3]), head)
    with pytest.raises(InputError, match=r"logits must be \[2, 3\]"):
        metric.update(z[:2], y[:2], head, logits[:2, :2])
    with pytest.raises(InputError, match=r"head must be the classifier weights \[3, 4\]"):
        metric.update(z[:2], y[:2], logits[:2])  # the old update(features, labels, logits)
    bad = logits[:2].clone()
    bad[0, 0] = math.inf
    with pytest.raises(InputError, match="logits contains"):
        metric.update(z[:2], y[:2], head, bad)
    for key, value in metric.metric_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key
        else:
            assert len(value) == len(before[key]), key
    with pytest.raises(InputError, match="num_classes"):
        InterplayMetrics(0)
    with pytest.raises(InputError, match="estimate"):
        InterplayMetrics(3, estimate="fast")


# ----------------------------------------------------------------------- two processes

# (n, d, C, rank 0's samples, num_features): rows kept on both; folded on both; folded on
# rank 0 only (the layouts are agreed at the sync); rank 1 without samples
CASES = [
    (120, 40, 4, 50, None),
    (200, 6, 5, 90, None),
    (200, 6, 5, 180, None),
    (120, 40, 4, 120, 40),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_metric(case, rank: int) -> InterplayMetrics:
    n, d, c, split, num_features = case
    z, y, head, logits = sample(n, d, c, seed=n + split)
    part = slice(0, split) if rank == 0 else slice(split, n)
    metric = InterplayMetrics(c, num_features)
    idx = torch.arange(n)[part]
    for batch in idx.split(16) if len(idx) else []:  # rank 1 of the last case: no update
        metric.update(z[batch], y[batch], head, logits[batch])
    return metric


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    rows = [_shard_metric(case, rank).compute() for case in CASES]
    torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    os._exit(0)  # no interpreter teardown (see tests/test_distributed.py)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert json.dumps(got[0]) == json.dumps(got[1])  # every process gets the same values
    for case, row in zip(CASES, got[0], strict=True):
        n, d, c, split, _ = case
        z, y, head, logits = sample(n, d, c, seed=n + split)
        one = InterplayMetrics(c)
        one.update(z, y, head, logits)
        want = one.compute()
        assert_close(row, want, (*INFO_KEYS, *NC_KEYS[:4], "accuracy", "loss", "n_samples"))
        assert_close(row, brute_interplay(z, y, head), INFO_KEYS)
        # NC4's probe rows: the first C d samples of each process once a process folds
        folded = max(split, n - split) > c * d
        kept = [torch.arange(0, split), torch.arange(split, n)]
        rows = torch.cat([k[: c * d] if folded else k for k in kept])
        assert row["nc4"] == pytest.approx(brute_collapse(z, y, head, logits, rows)["nc4"])
        if not folded:
            assert row["nc4"] == pytest.approx(want["nc4"], rel=1e-12)
