"""Pruning sweep from 0 to 90% of the weights, with and without fine-tuning (paper, Fig. 6).

The paper's protocol (assumed; the paper's text was not available to check): magnitude pruning,
after which "the remaining parameters are fine-tuned"; the pruned model's features keep a high
MIR with the dense model's even at 90% sparsity. Here a timm ``test_resnet`` trained on MNIST-5k
is pruned at ratios 0, 0.1, ..., 0.9 by global weight magnitude and each pruned model is
fine-tuned (masks fixed) for ``--finetune-epochs`` epochs on the training split:

    infoprobe prune OUT/checkpoints/dense-seed0.safetensors --data OUT/data/mnist/test.safetensors \
        --ratios 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 --method global-magnitude \
        --finetune-data OUT/data/mnist/train.safetensors --finetune-epochs 1 \
        --csv OUT/prune_global-magnitude_seed0.csv

Each row holds the values before fine-tuning (``accuracy``, ``mir``, ``hdr`` between the
pruned model's features and its head; ``mir_dense``, ``hdr_dense`` between the pruned and the
dense model's features on the same samples, the MIR the paper's Fig. 6 is assumed to plot)
and after it
(``ft_accuracy``, ``ft_mir``, ``ft_hdr``, ``ft_mir_dense``, ``ft_hdr_dense``). Random pruning
without fine-tuning is a control.

Three dense models (initialisation seeds 0-2, ``--seeds``) give the seed spread.

    python examples/04_pruning.py [--quick] [--out DIR] [--finetune-epochs 1] [--seeds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "04_pruning"
METHODS = ("global-magnitude", "random")
FINETUNED = "global-magnitude"  # the paper's protocol (assumed); random pruning: the control


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="dense models (init seeds)")
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")


def sweep(args, seed: int, train, test, train_path, test_path):
    """Train one dense model, then the pruning sweeps; one frame with a ``seed`` column."""
    import pandas as pd

    config = C.TrainConfig(epochs=args.epochs, max_steps=6 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    model = C.create_model(C.ARCH, seed=seed)
    C.train(model, train, config, order_seed=seed)
    dense = C.save_checkpoint(
        model,
        args.out / "checkpoints" / f"dense-seed{seed}.safetensors",
        arch=C.ARCH,
        num_classes=C.NUM_CLASSES,
        step=total,
        epoch=total / config.steps_per_epoch(len(train["y"])),
        seed=seed,
    )
    C.log(f"dense model, seed {seed}: test accuracy {C.accuracy(model, test):.4f}")
    ratios = "0,0.5,0.9" if args.quick else ",".join(f"{r / 10:g}" for r in range(10))
    frames = []
    for method in METHODS:
        csv = args.out / f"prune_{method}_seed{seed}.csv"
        csv.unlink(missing_ok=True)  # a fresh sweep (the CLI resumes only with --resume)
        finetune = (
            ["--finetune-data", train_path, "--finetune-epochs", args.finetune_epochs]
            if method == FINETUNED
            else []
        )
        C.infoprobe(
            "prune",
            dense,
            "--data",
            test_path,
            "--ratios",
            ratios,
            "--method",
            method,
            *finetune,
            *C.quick_samples(args.quick),
            "--csv",
            csv,
            "--device",
            "cpu",
        )
        frame = C.read_csv(csv)
        frame.insert(0, "method", method)
        frame.insert(1, "seed", seed)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


COLUMNS = (
    "accuracy",
    "mir",
    "hdr",
    "mir_dense",
    "hdr_dense",
    "ft_accuracy",
    "ft_mir",
    "ft_hdr",
    "ft_mir_dense",
    "ft_hdr_dense",
)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.DATASETS[args.data](args.out)
    import pandas as pd

    seeds = range(1 if args.quick else args.seeds)
    rows = pd.concat(
        [sweep(args, seed, train, test, train_path, test_path) for seed in seeds], ignore_index=True
    )
    C.write_csv(rows, args.out / "pruning.csv")

    summary = {
        "data": args.data,
        "epochs": args.epochs,
        "seeds": len(seeds),
        "finetune_epochs": args.finetune_epochs,
    }
    for method, frame in rows.groupby("method"):
        cols = [c for c in COLUMNS if c in frame and frame[c].notna().any()]
        stats = frame.groupby("ratio")[cols].agg(["mean", "std"])
        summary[method] = {
            f"ratio={r:g}": {
                f"{c}_{st}": round(float(v), 4) for (c, st), v in row.items() if v == v
            }
            for r, row in stats.iterrows()
        }
    summary["stays_high"] = stays_high(rows)
    csv = C.write_csv(figure_frame(rows, args.data), args.out / "pruning_figure.csv")
    draw(csv, args.out / "pruning.png")
    C.finish(args.out, "pruning", summary, timer)


#: "stays high", fixed before the rerun: MIR(pruned, dense) after fine-tuning at ratio 0.9 is at
#: least this fraction of its value at ratio 0
STAYS_HIGH = 0.8


def stays_high(rows) -> dict:
    """Per dense model, ft_mir_dense at the largest ratio over its value at ratio 0; mean ±
    sd and how many models meet :data:`STAYS_HIGH`."""
    frame = rows[(rows.method == FINETUNED) & rows.ft_mir_dense.notna()]
    wide = frame.pivot(index="seed", columns="ratio", values="ft_mir_dense")
    kept = (wide[wide.columns.max()] / wide[0.0]).tolist()
    mean, sd = C.mean_std(kept)
    return {
        "ratio": float(wide.columns.max()),
        "criterion": STAYS_HIGH,
        "kept_fraction_mean": round(mean, 4),
        "kept_fraction_sd": round(sd, 4),
        "models_meeting": f"{sum(k >= STAYS_HIGH for k in kept)} of {len(kept)}",
    }


#: (method, column prefix, label) of each arm of the figure
ARMS = (
    ("global-magnitude", "", "magnitude, no fine-tuning"),
    ("global-magnitude", "ft_", "magnitude + fine-tuning (paper)"),
    ("random", "", "random, no fine-tuning"),
)
PLOTTED = ("accuracy", "mir_dense", "hdr_dense", "mir")


def figure_frame(rows, data: str):
    """The figure's data: per arm and ratio, mean and sd over the dense models."""
    import pandas as pd

    frames = []
    for method, prefix, label in ARMS:
        frame = rows[rows.method == method]
        cols = [prefix + c for c in PLOTTED]
        if not all(c in frame and frame[c].notna().any() for c in cols):
            continue
        stats = frame.groupby("ratio")[cols].agg(["mean", "std"])
        stats.columns = [f"{c.removeprefix(prefix)}_{st}" for c, st in stats.columns]
        stats.insert(0, "data", data)
        stats.insert(1, "arm", label)
        stats["models"] = frame.groupby("ratio").size()
        stats["n_classes"] = int(rows.n_classes.iloc[0])
        frames.append(stats.reset_index())
    return pd.concat(frames, ignore_index=True).round(5)


def draw(csv: Path, png: Path):
    """Draw the pruning figure from its CSV (:func:`figure_frame`); returns the figure."""
    stats = C.read_csv(csv)
    fig, ax = C.figure(4, width=3.0, height=2.8)
    colours = {
        label: c
        for (_, _, label), c in zip(ARMS, ("tab:blue", "tab:green", "tab:gray"), strict=True)
    }
    for label, frame in stats.groupby("arm", sort=False):
        style = dict(
            c=colours[label], ls=":" if label.startswith("random") else "-", marker="o", ms=3,
            capsize=2, label=label,
        )  # fmt: skip
        for a, col in zip(ax, PLOTTED, strict=True):
            a.errorbar(
                frame.ratio, frame[f"{col}_mean"], yerr=frame[f"{col}_std"].fillna(0.0), **style
            )
    C.nc_line(ax[3], int(stats.n_classes.iloc[0]), label=False)
    titles = (
        "test accuracy",
        "MIR, pruned vs dense features",
        "HDR, pruned vs dense features",
        "MIR, features vs head (dashed: NC)",
    )
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title, fontsize=9)
        a.set_xlabel("pruning ratio")
    ax[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.6))
    fig.suptitle(
        f"test_resnet on {stats.data.iloc[0]}: unstructured pruning, before and after fine-tuning "
        f"(mean ± sd over {int(stats.models.max())} dense models)",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig


if __name__ == "__main__":
    main()
