"""Cost of ``--layers stages`` against a plain ``analyze``, at a fixed n.

The plain analysis is what ``infoprobe analyze`` computes for one checkpoint: one
``evaluate()`` pass and its row (``analysis_row``: the exact entropies, MIR, HDR, neural
collapse). The layer analysis is ``evaluate(layers="stages")`` and ``layer_rows``: the same
pass keeping every stage's pooled features, and one row per stage plus the head's input.
Both run on the same model, inputs and labels (random, 10 classes; the costs do not depend
on the values). Runs are interleaved (plain, layers, plain, ...) so that drift in machine
load hits both; reported per model: the median of the per-pair ratios of wall time, the
ratio of the fastest runs, and the ratio of this thread's CPU time (blind to other
processes on one thread), with the load average. Goal: ratio < 2.

    python3 benchmarks/bench_layers.py [--models resnet18 vit_tiny_patch16_224]
        [--n 1000] [--size 32 64] [--repeats 5] [--threads 1]

``--size`` gives the input side per model, in order. Run it from the repository root with
``PYTHONPATH=.``; nothing is downloaded (``pretrained=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import timm
import torch

from infoprobe.data import LabelledTensors
from infoprobe.probe import evaluate
from infoprobe.rows import analysis_row, layer_rows


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def _model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"img_size": size} if "vit" in name or "deit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **extra).eval()


def bench(name: str, size: int, n: int, repeats: int) -> dict:
    """Interleaved timings of the plain and the layer analysis of one model."""
    model = _model(name, size)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    data = LabelledTensors(inputs=x, labels=torch.arange(n) % 10, source="bench")

    def plain():
        analysis_row("m", evaluate(model, data, device="cpu"))

    def layers():
        layer_rows("m", evaluate(model, data, device="cpu", layers="stages"))

    forward = _timed(lambda: evaluate(model, data, device="cpu"))
    plain(), layers()  # warm-up
    runs = {"plain": [], "layers": []}
    for _ in range(repeats):
        runs["plain"].append(_timed(plain))
        runs["layers"].append(_timed(layers))
    walls = [lay[0] / base[0] for base, lay in zip(runs["plain"], runs["layers"], strict=True)]
    count = len(evaluate(model, data, device="cpu", layers="stages").layers)
    return {
        "model": name,
        "input": f"3x{size}x{size}",
        "n": n,
        "rows": count,
        "forward_s": round(forward[0], 3),
        "plain_s": round(min(w for w, _ in runs["plain"]), 3),
        "layers_s": round(min(w for w, _ in runs["layers"]), 3),
        "ratio_median": round(statistics.median(walls), 3),
        "ratio_fastest": round(
            min(w for w, _ in runs["layers"]) / min(w for w, _ in runs["plain"]), 3
        ),
        "ratio_cpu": round(sum(c for _, c in runs["layers"]) / sum(c for _, c in runs["plain"]), 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vit_tiny_patch16_224"])
    ap.add_argument("--size", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.size + [args.size[-1]] * (len(args.models) - len(args.size))
    print(f"load average before: {os.getloadavg()}, threads: {args.threads}")
    for name, size in zip(args.models, sizes, strict=False):
        print(json.dumps(bench(name, size, args.n, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
