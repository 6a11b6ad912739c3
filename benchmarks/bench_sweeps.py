"""Sweep overhead: a K-point lmc sweep and an R-ratio prune sweep vs single evaluations.

A single evaluation is what ``infoprobe analyze`` does per checkpoint:
:func:`infoprobe.probe.evaluate` + :func:`infoprobe.rows.analysis_row`, on the same
in-memory data and the same model object. Target (issues 5 and 6): sweep time <= 1.1 x
(points x one single evaluation). Two figures per sweep:

* ``vs singles``: the sweep against K (R) single evaluations of the unchanged model, as
  the target is stated;
* ``vs its own evaluations``: the sweep against the time it spent inside evaluate +
  analysis_row (timed in the same run), i.e. what the sweep machinery adds (interpolation
  and ``load_state_dict``; masks, their removal and the sparsity count). This one is immune
  to slow spells of a shared machine and to per-point differences of the evaluation.

The prune sweep evaluates the dense model once as the reference for ``mir_dense``. With
ratio 0 in the list that evaluation is the ratio-0 row, so R ratios cost R evaluations;
without it they cost R + 1 (reported against R + 1 as well). Each prune row also computes
``mir_dense``/``hdr_dense``: one more exact interplay (an n x n eigen-solve when n <= d^2),
timed separately; ``dense_metrics=False`` skips it.

Fine-tuning (``prune --finetune-data``): :func:`infoprobe.sweeps.finetune.finetune` on a
model pruned to 50 % (masks live) against a plain training loop written inline, with the same
batches, optimizer and epochs, on the same pruned model (the loop's own overhead: seeding,
forked RNG, finiteness checks, train/eval flags); the plain loop on the dense model shows what
the masks' forward pre-hooks cost.

Timings are medians over repeats; each repeat runs every variant in a rotated order, so a
slow spell hits all of them. On a machine shared with other jobs ``--threads 1`` avoids the
erratic cost of OpenMP threads waiting for each other.

    python benchmarks/bench_sweeps.py                 # n = 1000, K = 11, R = 6, 5 repeats
    python benchmarks/bench_sweeps.py --threads 1 --repeats 3
    python benchmarks/bench_sweeps.py --quick         # n = 200, 2 repeats, a smoke run
    python benchmarks/bench_sweeps.py --epochs 3      # fine-tuning epochs (default 2)
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import timm
import torch
import torch.nn.functional as F

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.info import DEFAULT_BATCH_SIZE
from infoprobe.rows import analysis_row
from infoprobe.sweeps import (
    FinetuneOptions,
    finetune,
    lmc,
    lmc_sweep,
    masks,
    parse_alphas,
    parse_ratios,
    prune,
    prune_sweep,
)

ARCH = "test_efficientnet"


def make_model(seed: int) -> torch.nn.Module:
    """test_efficientnet (10 classes, 1 channel) with seeded weights and BN statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=10, in_chans=1)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-zero shifts, as in a trained model
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def make_data(n: int) -> LabelledTensors:
    """[n, 1, 16, 16] inputs: a pattern per class plus noise, 10 balanced classes."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    patterns = torch.randn(10, 1, 16, 16, generator=g)
    inputs = patterns[labels] + 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    return LabelledTensors(inputs, labels, "synthetic")


class Inside:
    """Seconds a sweep spends inside its evaluations and its mir_dense computations."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, module, name: str, key: str) -> Callable[[], None]:
        """Replace ``module.name`` by a timed version; returns the undo."""
        real = getattr(module, name)

        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        setattr(module, name, timed_call)
        return lambda: setattr(module, name, real)

    @contextmanager
    def watching(self) -> Iterator[None]:
        undo = [
            self.wrap(lmc, "evaluate_row", "evaluate"),
            self.wrap(prune, "evaluate_row", "evaluate"),
            self.wrap(prune, "_dense_interplay", "mir_dense"),
        ]
        try:
            yield
        finally:
            for u in undo:
                u()


def measure(
    tasks: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, Inside]]:
    """Per task: median wall seconds and the breakdown of the median run."""
    runs: dict[str, list[tuple[float, Inside]]] = {name: [] for name in tasks}
    names = list(tasks)
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            inside = Inside()
            with inside.watching():
                start = time.perf_counter()
                tasks[name]()
                runs[name].append((time.perf_counter() - start, inside))
    return {name: sorted(r, key=lambda t: t[0])[len(r) // 2] for name, r in runs.items()}


def report(label: str, result: tuple[float, Inside], points: int, one: float) -> None:
    seconds, inside = result
    evals, evaluate = inside.calls["evaluate"], inside.seconds["evaluate"]
    line = (
        f"{label}: {seconds:.3f} s, {evals} evaluations; vs {points} singles "
        f"{seconds / (points * one):.3f}"
    )
    if evals > points:
        line += f", vs {evals} singles {seconds / (evals * one):.3f}"
    line += f"; vs its own evaluations {seconds / evaluate:.3f}"
    if inside.calls["mir_dense"]:
        dense = inside.seconds["mir_dense"]
        line += (
            f"; mir_dense {dense:.3f} s ({inside.calls['mir_dense']}x), vs its own "
            f"evaluations + mir_dense {seconds / (evaluate + dense):.3f}"
        )
    print(line)


def plain_training(
    model: torch.nn.Module, data: LabelledTensors, options: FinetuneOptions, device: torch.device
) -> None:
    """The baseline: finetune's batches, SGD and epochs as a bare loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
    )
    generator = torch.Generator().manual_seed(options.seed)
    model.train()
    for _ in range(options.epochs):
        batches = torch.randperm(len(data), generator=generator).split(options.batch_size)
        if len(batches) > 1 and len(batches[-1]) < options.batch_size:
            batches = batches[:-1]
        for index in batches:
            x, y = data.inputs[index].to(device), data.labels[index].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()


def bench_finetune(data: LabelledTensors, epochs: int, repeats: int, device: str) -> None:
    """finetune vs the plain loop on one pruned model, and the plain loop on the dense one."""
    dev = probe.resolve_device(device)
    options = FinetuneOptions(epochs=epochs)
    dense_model, pruned_model = make_model(0).to(dev), make_model(0).to(dev)
    masks.prune_to(masks.prunable_parameters(pruned_model), 0.5, "global-magnitude", 0)
    states = {
        id(m): {k: v.clone() for k, v in m.state_dict().items()}
        for m in (dense_model, pruned_model)
    }

    def task(model: torch.nn.Module, train: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            model.load_state_dict(states[id(model)])  # every repeat from the same weights
            train()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return run

    results = measure(
        {
            "finetune": task(
                pruned_model, lambda: finetune(pruned_model, data, options, device=dev)
            ),
            "plain": task(pruned_model, lambda: plain_training(pruned_model, data, options, dev)),
            "plain_dense": task(
                dense_model, lambda: plain_training(dense_model, data, options, dev)
            ),
        },
        repeats,
    )
    seconds = {name: result[0] for name, result in results.items()}
    print(
        f"fine-tuning {epochs} epoch(s), batch {options.batch_size}, pruned 50 %: "
        f"finetune {seconds['finetune']:.3f} s, plain loop {seconds['plain']:.3f} s, "
        f"ratio {seconds['finetune'] / seconds['plain']:.3f}; plain loop on the dense "
        f"model {seconds['plain_dense']:.3f} s (masks cost "
        f"{seconds['plain'] / seconds['plain_dense']:.3f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples")
    parser.add_argument("--steps", type=int, default=11, help="lmc points K")
    parser.add_argument("--ratios", default="0,0.1,0.3,0.5,0.7,0.9", help="prune ratios")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 steadies timings on a shared machine)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 200, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"device": args.device, "batch_size": args.batch_size}
    data = make_data(args.n)
    model = make_model(0)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = {k: v.clone() for k, v in make_model(1).state_dict().items()}
    alphas = parse_alphas(steps=args.steps)
    ratios = parse_ratios(args.ratios)
    without_zero = sorted({r for r in ratios if r > 0} | {0.8})
    k, r = len(alphas), len(ratios)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {probe.resolve_device(args.device)}, {ARCH}, n = {args.n}, "
        f"batch {args.batch_size}, median of {args.repeats} rotated repeats"
    )
    probe.evaluate(model, data, **kwargs)  # warm-up

    def singles() -> None:  # K single evaluations of the unchanged model
        for _ in range(k):
            analysis_row("single", probe.evaluate(model, data, **kwargs))

    def run_lmc() -> None:
        list(lmc_sweep(model, state_a, state_b, data, alphas, eval_kwargs=kwargs))
        model.load_state_dict(state_a)

    def run_prune(values: list[float], dense_metrics: bool = True) -> Callable[[], None]:
        return lambda: list(
            prune_sweep(model, data, values, dense_metrics=dense_metrics, eval_kwargs=kwargs)
        )

    results = measure(
        {
            "singles": singles,
            "lmc": run_lmc,
            "prune": run_prune(ratios),
            "prune_without_zero": run_prune(without_zero),
            "prune_no_dense": run_prune(ratios, dense_metrics=False),
        },
        args.repeats,
    )
    one = results["singles"][0] / k
    print(f"one single evaluation (evaluate + analysis_row): {one:.3f} s")
    shown = ",".join(f"{v:g}" for v in ratios)
    report(f"lmc K = {k}", results["lmc"], k, one)
    report(f"prune R = {r} ({shown})", results["prune"], r, one)
    report(f"prune R = {r} ({shown}), dense_metrics=False", results["prune_no_dense"], r, one)
    shown = ",".join(f"{v:g}" for v in without_zero)
    report(
        f"prune R = {len(without_zero)} ({shown}), no ratio 0",
        results["prune_without_zero"],
        len(without_zero),
        one,
    )
    bench_finetune(data, args.epochs, args.repeats, args.device)


if __name__ == "__main__":
    main()
