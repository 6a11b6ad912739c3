"""Overhead of measuring MIR/HDR/NC while training, and the cost of one streamed measurement.

1. ``epoch``: timm's ``test_resnet`` trains on MNIST-5k (4000 images of 28x28, batch 64,
   AdamW) with Lightning, alternately without and with ``InterplayCallback`` (every epoch, a
   probe set of 2,048 training images; the test split has only 1,000). Reported: the median
   epoch time without the callback (the baseline), the median time of one measurement (timed
   inside the callback) and their ratio; also the whole run's extra time over the
   baseline's. Goal: a measurement under 5% of an epoch.
2. ``call``: one streamed measurement on synthetic features at d = 2048, C = 1000,
   n = 10,000 (``InterplayMetrics.update`` in batches of 256, then ``compute``) against the
   one-shot baseline on the same samples (``infoprobe.info.interplay`` and
   ``infoprobe.collapse.neural_collapse``), with the bytes of the metric's states.
3. ``memory``: the metric's state bytes as n grows at d = 64, C = 10 (the rows fold into
   per-class Grams at n > C d = 640), against the O(min(C d^2, n d) + d^2 + C d) bound.

The machine's load average (1 minute) is printed before and after each part: the timings
are only comparable within one run on a quiet machine.

    python3 benchmarks/bench_callback.py [--epochs 3] [--repeats 2] [--n 10000] [--skip-call]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import _common as C  # noqa: E402

from infoprobe import collapse, info  # noqa: E402
from infoprobe.metrics import InterplayMetrics  # noqa: E402
from infoprobe.schema import NC_COLUMNS  # noqa: E402


def load() -> float:
    return round(os.getloadavg()[0], 2)


def state_bytes(metric: InterplayMetrics) -> int:
    tensors = []
    for value in metric.metric_state.values():
        tensors += value if isinstance(value, list) else [value]
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------- 1. epochs


def train_once(train_path: Path, epochs: int, with_callback: bool) -> dict:
    import lightning.pytorch as L
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from infoprobe.integrations.lightning import InterplayCallback

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = C.create_model(C.ARCH, seed=0)

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.05)

    class EpochTimes(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.end = time.perf_counter()  # the last batch's end: the epoch without hooks

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.times.append(self.end - self.start)

    data = C.load_tensors(train_path)
    loader = DataLoader(
        TensorDataset(data["x"], data["y"]), batch_size=64, shuffle=True, drop_last=True
    )
    epoch_times, callbacks, calls = EpochTimes(), [], []
    callbacks.append(epoch_times)
    if with_callback:
        live = InterplayCallback(str(train_path), every_n_epochs=1, max_samples=2048)
        measure = live.probe.measure

        def timed(model):
            start = time.perf_counter()
            row = measure(model)
            calls.append(time.perf_counter() - start)
            return row

        live.probe.measure = timed
        callbacks.append(live)
    L.seed_everything(0, verbose=False)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        L.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        ).fit(Classifier(), loader)
    return {"total": time.perf_counter() - start, "epochs": epoch_times.times, "calls": calls}


def bench_split(train_path: Path, repeats: int = 3) -> dict:
    """One measurement of the 2,048-sample probe set split into infoprobe's forward pass
    (``evaluate``) and the rest (the metric's update and compute)."""
    from infoprobe.data import load_data
    from infoprobe.integrations.probe_set import ProbeSet
    from infoprobe.probe import evaluate

    model = C.create_model(C.ARCH, seed=0)
    probe = ProbeSet(str(train_path), max_samples=2048)
    data = probe.load(model)
    forward, whole = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(model, load_data(train_path, max_samples=2048), device="cpu")
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        probe.measure(model)
        whole.append(time.perf_counter() - start)
    return {
        "load_1min": load(),
        "probe_samples": len(data),
        "measurement_s_median": round(statistics.median(whole), 3),
        "of_which_forward_pass_s_median": round(statistics.median(forward), 3),
    }


def bench_epochs(epochs: int, repeats: int) -> dict:
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(tempfile.mkdtemp())
    train_path, _ = C.mnist_files(out)
    load_before = load()
    runs = {"without": [], "with": []}
    for _ in range(repeats):  # alternate, so that a change of load hits both
        for arm in ("without", "with"):
            runs[arm].append(train_once(train_path, epochs, arm == "with"))
    epoch = statistics.median(t for r in runs["without"] for t in r["epochs"])
    call = statistics.median(t for r in runs["with"] for t in r["calls"])
    total = {arm: statistics.median(r["total"] for r in rs) for arm, rs in runs.items()}
    return {
        "load_1min_before_after": [load_before, load()],
        "split": bench_split(train_path),
        "threads": torch.get_num_threads(),
        "epochs_per_run": epochs,
        "runs_per_arm": repeats,
        "epoch_s_median_without": round(epoch, 3),
        "measurement_s_median": round(call, 3),
        "measurement_over_epoch": round(call / epoch, 4),
        "run_s_median": {arm: round(t, 2) for arm, t in total.items()},
        "run_extra_over_baseline": round(total["with"] / total["without"] - 1, 4),
    }


# ------------------------------------------------------------------------- 2. one call


def synthetic(n: int, d: int, c: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % c
    z = torch.randn(n, d, generator=gen) + 2 * torch.randn(c, d, generator=gen)[y]
    z = z.relu()  # non-negative, as pooled ReLU features are
    head = torch.randn(c, d, generator=gen) / d**0.5
    return z, y, head, z @ head.T


def bench_call(n: int, d: int, c: int) -> dict:
    z, y, head, logits = synthetic(n, d, c)
    load_before = load()
    start = time.perf_counter()
    metric = InterplayMetrics(c, d)
    for batch in torch.arange(n).split(256):
        metric.update(z[batch], y[batch], head, logits[batch])
    updated = time.perf_counter()
    row = metric.compute()
    streamed = time.perf_counter()
    one = info.interplay(z, y, head)
    found = collapse.neural_collapse(z, y, head, logits)
    baseline = time.perf_counter() - streamed
    gap = max(abs(row[k] - getattr(one, k)) for k in ("h_z", "h_w", "h_zw", "mir", "hdr"))
    gap = max(gap, max(abs(row[k] - getattr(found, k)) for k in NC_COLUMNS))
    return {
        "load_1min_before_after": [load_before, load()],
        "n": n,
        "d": d,
        "C": c,
        "route": "per-class Grams" if metric.folded else "kept rows (n d < C d^2)",
        "update_s": round(updated - start, 3),
        "compute_s": round(streamed - updated, 3),
        "one_shot_baseline_s": round(baseline, 3),
        "streamed_over_one_shot": round((streamed - start) / baseline, 3),
        "max_abs_gap_to_one_shot": float(f"{gap:.3g}"),
        "state_MiB": round(state_bytes(metric) / 2**20, 1),
        "grams_would_be_MiB": round(8 * c * d * d / 2**20, 1),
    }


# ------------------------------------------------------------------------- 3. memory


def bench_memory(d: int = 64, c: int = 10) -> dict:
    z, y, head, logits = synthetic(16384, d, c)
    metric = InterplayMetrics(c, d)
    sizes, done = {}, 0
    for n in (256, 512, 640, 641, 1024, 4096, 16384):
        metric.update(z[done:n], y[done:n], head, logits[done:n])
        done = n
        bound = 8 * (min(c * d * d, n * d) + d * d + c * d)
        sizes[n] = {"state_bytes": state_bytes(metric), "over_bound": state_bytes(metric) / bound}
    return {"d": d, "C": c, "fold_above_n": c * d, "by_n": sizes}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--skip-call", action="store_true", help="skip part 2 (minutes on CPU)")
    args = parser.parse_args(argv)
    results = {"memory": bench_memory()}
    print(json.dumps(results, indent=2), flush=True)
    results["epoch"] = bench_epochs(args.epochs, args.repeats)
    print(json.dumps(results["epoch"], indent=2), flush=True)
    if not args.skip_call:
        results["call"] = bench_call(args.n, 2048, 1000)
        print(json.dumps(results["call"], indent=2), flush=True)


if __name__ == "__main__":
    main()
