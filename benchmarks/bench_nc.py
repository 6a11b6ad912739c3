"""Cost of NC1-NC4 against the rest of an analyze run, in the same process.

For each configuration one model is evaluated on cached inputs (``probe.evaluate``, the
forward pass), the row's information measures are computed (``rows.measure``), and then
NC1-NC4 (``collapse.neural_collapse``) on the same evaluation. Each part is timed with this
thread's CPU time (``time.thread_time``, blind to other processes on a shared machine) and
wall time; the figure is ``NC / (evaluate + measure)``, the share NC adds to a run, as the
median over repeats. Target: under 0.05, so that NC can be always on.

    python3 benchmarks/bench_nc.py [--repeats 5] [--threads 1]

Configurations: the digits MLP fixture on the digits test set (the smallest run there is,
so the worst case for the share), and timm's resnet18 at 32 x 32 with 10 and 100 classes on
random inputs (features d = 512). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import timm
import torch

from infoprobe import checkpoints, collapse, probe, rows
from infoprobe.data import LabelledTensors, load_data

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def configurations():
    fixture = checkpoints.load_model(ROOT / "fixtures" / "lmc" / "same_init_a.safetensors")
    digits = load_data(ROOT / "fixtures" / "digits" / "test.safetensors", model=fixture.model)
    yield "digits MLP fixture", fixture.model, digits
    for classes, n in ((10, 2000), (100, 5000)):
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=classes).eval()
        data = LabelledTensors(
            inputs=torch.randn(n, 3, 32, 32), labels=torch.arange(n) % classes, source="random"
        )
        yield f"resnet18 32x32 C={classes} n={n}", model, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{'configuration':32} {'evaluate s':>10} {'measure s':>10} {'nc s':>8} "
        f"{'nc share (cpu)':>15} {'nc share (wall)':>16}"
    )
    for name, model, data in configurations():
        (ev, me, nc), share_cpu, share_wall = measure_shares(model, data, args.repeats)
        print(f"{name:32} {ev:10.3f} {me:10.3f} {nc:8.4f} {share_cpu:15.4f} {share_wall:16.4f}")


def measure_shares(model, data, repeats: int) -> tuple[tuple[float, ...], float, float]:
    """Median CPU seconds of (evaluate, measure, NC) and NC's median share, CPU and wall."""
    evaluation = probe.evaluate(model, data, device="cpu")
    shares_cpu, shares_wall, parts = [], [], []
    for _ in range(repeats):
        ev = timed(lambda: probe.evaluate(model, data, device="cpu"))
        me = timed(lambda: rows.measure(evaluation, rows.MeasureOptions(device="cpu")))
        nc = timed(
            lambda: collapse.neural_collapse(
                evaluation.features, evaluation.labels, evaluation.head, evaluation.logits
            )
        )
        shares_wall.append(nc[0] / (ev[0] + me[0]))
        shares_cpu.append(nc[1] / (ev[1] + me[1]))
        parts.append((ev[1], me[1], nc[1]))
    medians = tuple(statistics.median(p[i] for p in parts) for i in range(3))
    return medians, statistics.median(shares_cpu), statistics.median(shares_wall)


if __name__ == "__main__":
    main()
