"""Label smoothing and the information interplay (paper, Fig. 5).

A timm ``test_resnet`` is trained on MNIST-5k (4000 train / 1000 test real MNIST images, see
``fixtures/mnist``) with cross-entropy label smoothing eps in {0, 0.1}, over several seeds
(same initialisation and batch order for both eps of a seed), and the final checkpoints are
compared with

    infoprobe analyze OUT/checkpoints/*.safetensors --data OUT/data/mnist/test.safetensors \
        --csv OUT/analyze_test.csv

(and on the training split). The paper's claim (Fig. 5): "the variation in accuracy, MIR, and
HDR are minimal". The question is whether the paired differences eps = 0.1 minus eps = 0
exceed the seed-to-seed spread (mean ± sd over seeds, paired t-test).

    python examples/02_label_smoothing.py [--quick] [--out DIR] [--seeds 6] [--data digits]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "02_label_smoothing"
EPSILONS = (0.0, 0.1)


def add_options(parser) -> None:
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    seeds = list(range(2 if args.quick else args.seeds))
    train, test, train_path, test_path = C.DATASETS[args.data](args.out)
    ckpt_dir = C.fresh_checkpoint_dir(args.out)
    runs = []
    for seed in seeds:
        for eps in EPSILONS:
            config = C.TrainConfig(
                epochs=args.epochs, label_smoothing=eps, max_steps=3 if args.quick else None
            )
            total = config.total_steps(len(train["y"]))
            model = C.create_model(C.ARCH, seed=seed)
            C.train(model, train, config, order_seed=seed)
            path = ckpt_dir / f"ls{eps:.2f}-seed{seed}.safetensors"
            C.save_checkpoint(
                model,
                path,
                arch=C.ARCH,
                num_classes=C.NUM_CLASSES,
                step=total,
                epoch=total / config.steps_per_epoch(len(train["y"])),
                seed=seed,
                label_smoothing=eps,
            )
            runs.append({"checkpoint": str(path), "seed": seed, "label_smoothing": eps})
            C.log(
                f"seed {seed} eps {eps:.2f}: test accuracy {C.accuracy(model, test):.4f} ({timer})"
            )

    import pandas as pd

    frames = []
    for split, data in (("train", train_path), ("test", test_path)):
        csv = args.out / f"analyze_{split}.csv"
        C.infoprobe(
            "analyze",
            *[r["checkpoint"] for r in runs],
            "--data",
            data,
            "--csv",
            csv,
            "--device",
            "cpu",
            *C.quick_samples(args.quick),
        )
        frame = pd.DataFrame(runs).merge(C.read_csv(csv), on="checkpoint")
        frame.insert(0, "split", split)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "label_smoothing.csv")

    table = (
        rows.groupby(["split", "label_smoothing"])[["accuracy", "mir", "hdr", "h_z", "h_w"]]
        .agg(["mean", "std"])
        .round(4)
    )
    summary = {
        "data": args.data,
        "seeds": len(seeds),
        "epochs": args.epochs,
        "table": {
            f"{split}/eps={eps}": {f"{col}_{stat}": float(v) for (col, stat), v in r.items()}
            for (split, eps), r in table.iterrows()
        },
    }
    for split, frame in rows.groupby("split"):
        summary[f"{split}_paired_eps{EPSILONS[1]}_minus_eps0"] = C.paired(
            frame, "label_smoothing", EPSILONS[0], EPSILONS[1], ("accuracy", "mir", "hdr")
        )
    csv = C.write_csv(figure_frame(rows, args.data), args.out / "label_smoothing_figure.csv")
    draw(csv, args.out / "label_smoothing.png")
    C.finish(args.out, "label_smoothing", summary, timer, show=table.to_string())


FIGURE_COLUMNS = ["split", "seed", "label_smoothing", "n_classes", "accuracy", "mir", "hdr"]


def figure_frame(rows, data: str):
    """The figure's data: every seed's final accuracy, MIR and HDR per split and eps."""
    frame = rows[FIGURE_COLUMNS].round(5)
    frame.insert(0, "data", data)
    return frame


def draw(csv: Path, png: Path):
    """Draw the label-smoothing figure from its CSV (:func:`figure_frame`): the seeds as
    dots, mean ± sd over seeds as bars; returns the figure."""
    rows = C.read_csv(csv)
    fig, ax = C.figure(3, width=3.2, height=2.8)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    for split, frame in rows.groupby("split"):
        stats = frame.groupby("label_smoothing")[["accuracy", "mir", "hdr"]].agg(["mean", "std"])
        stats = stats.fillna(0.0)
        for a, col in zip(ax, ("accuracy", "mir", "hdr"), strict=True):
            a.scatter(frame.label_smoothing, frame[col], s=8, c=colours[split], alpha=0.4)
            a.errorbar(
                stats.index,
                stats[(col, "mean")],
                yerr=stats[(col, "std")],
                fmt="o-",
                ms=4,
                capsize=3,
                c=colours[split],
                label=split,
            )
    C.nc_line(ax[1], int(rows.n_classes.iloc[0]))
    for a, title in zip(ax, ("accuracy", "MIR", "HDR"), strict=True):
        a.set_title(title)
        a.set_xlabel("label smoothing eps")
        a.set_xticks(EPSILONS)
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    seeds = rows.seed.nunique()
    fig.suptitle(
        f"test_resnet on {rows.data.iloc[0]}: label smoothing "
        f"(dots: seeds; bars: mean ± sd over {seeds} seeds)",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig


if __name__ == "__main__":
    main()
