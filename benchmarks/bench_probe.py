"""Cost of the feature pass: ``evaluate()`` vs a plain ``model(x)`` inference loop.

Both run the same model over the same cached inputs with the same batch size. Runs are
interleaved (plain, probe, plain, probe, ...) so drift in machine load hits both. Reported:
the median of the per-pair ratios and the ratio of the fastest runs (the steadier figure on
a shared, noisy CPU). On CPU the default is one thread, so ``time.thread_time`` (this
thread's CPU time, blind to preemption by other processes) gives a third, load-independent
ratio. Target: ratio <= 1.05.

    python3 benchmarks/bench_probe.py [--arch test_resnet] [--n 2000] [--repeats 7]
        [--device auto|cpu|cuda] [--threads 1]

Run it from the repository root with infoprobe installed (``pip install -e .``) or with
``PYTHONPATH=.``. Nothing is downloaded: the model is built with ``pretrained=False``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from infoprobe.data import LabelledTensors
from infoprobe.info import DEFAULT_BATCH_SIZE
from infoprobe.probe import evaluate, resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_loop(model, x: torch.Tensor, batch_size: int, dev: torch.device) -> torch.Tensor:
    """The baseline: batches through model(x) under no_grad, logits gathered on cpu."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i : i + batch_size].to(dev, non_blocking=True)).float())
    return torch.cat(outs).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="test_resnet")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (cpu device only)")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False, num_classes=10).eval().to(dev)
    x = torch.randn(args.n, 3, args.size, args.size)
    data = LabelledTensors(inputs=x, labels=torch.arange(args.n) % 10, source="bench")

    def timed(fn) -> tuple[float, float]:
        _sync(dev)
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        _sync(dev)
        return time.perf_counter() - wall, time.thread_time() - cpu

    def run_plain():
        return timed(lambda: plain_loop(model, x, args.batch_size, dev))

    def run_probe():
        # evaluate() ends with the features and logits on cpu, as plain_loop does
        return timed(lambda: evaluate(model, data, device=dev, batch_size=args.batch_size))

    run_plain(), run_probe()  # warm-up: allocator, cudnn autotune, lazy init
    plain, probe = [], []
    for i in range(args.repeats):
        # alternate which goes first so a steady drift does not favour either
        if i % 2:
            b, a = run_probe(), run_plain()
        else:
            a, b = run_plain(), run_probe()
        plain.append(a)
        probe.append(b)
    pair = [pb[0] / pa[0] for pa, pb in zip(plain, probe, strict=True)]
    best = min(t for t, _ in probe) / min(t for t, _ in plain)
    print(
        f"arch={args.arch} n={args.n} input=3x{args.size}x{args.size} "
        f"batch={args.batch_size} device={dev} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}"
    )
    print(
        f"plain model(x) loop: median {statistics.median(t for t, _ in plain) * 1e3:.1f} ms, "
        f"best {min(t for t, _ in plain) * 1e3:.1f} ms"
    )
    print(
        f"evaluate():          median {statistics.median(t for t, _ in probe) * 1e3:.1f} ms, "
        f"best {min(t for t, _ in probe) * 1e3:.1f} ms"
    )
    print(
        f"ratio evaluate/plain: median of pairs {statistics.median(pair):.3f} "
        f"(range {min(pair):.3f}-{max(pair):.3f}), best-vs-best {best:.3f}"
    )
    if dev.type == "cpu" and args.threads == 1:
        cpu_ratio = statistics.median(c for _, c in probe) / statistics.median(c for _, c in plain)
        print(f"ratio of thread CPU time (load-independent): {cpu_ratio:.3f}")
    print("target <= 1.05")


if __name__ == "__main__":
    main()
