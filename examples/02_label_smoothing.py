"""Label smoothing and the information interplay (paper, Fig. 5).

A timm ``test_resnet`` is trained on the digits with cross-entropy label smoothing
eps in {0, 0.05, 0.1, 0.2}, over a few seeds (same initialisation and batch order for every
eps of a seed), and the final checkpoints are compared with

    infoprobe analyze OUT/checkpoints/*.safetensors --data fixtures/digits/test.safetensors \
        --csv OUT/analyze_test.csv

(and on the training split). The paper reports that label smoothing moves MIR up and HDR down,
toward the neural-collapse optimum, along with its accuracy gain.

    python examples/02_label_smoothing.py [--quick] [--out DIR] [--seeds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "02_label_smoothing"
EPSILONS = (0.0, 0.05, 0.1, 0.2)


def add_options(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    seeds = list(range(1 if args.quick else args.seeds))
    train, test, train_path, test_path = C.digits(args.out)
    ckpt_dir = C.fresh_checkpoint_dir(args.out)
    runs = []
    for seed in seeds:
        for eps in EPSILONS:
            config = C.TrainConfig(epochs=args.epochs, label_smoothing=eps,
                                   max_steps=6 if args.quick else None)
            total = config.total_steps(len(train["y"]))
            model = C.create_model(C.ARCH, seed=seed)
            C.train(model, train, config, order_seed=seed)
            path = ckpt_dir / f"ls{eps:.2f}-seed{seed}.safetensors"
            C.save_checkpoint(model, path, arch=C.ARCH, num_classes=C.NUM_CLASSES, step=total,
                              epoch=total / config.steps_per_epoch(len(train["y"])),
                              seed=seed, label_smoothing=eps)
            runs.append({"checkpoint": str(path), "seed": seed, "label_smoothing": eps})
            C.log(f"seed {seed} eps {eps:.2f}: test accuracy {C.accuracy(model, test):.4f} "
                  f"({timer})")

    import pandas as pd

    frames = []
    for split, data in (("train", train_path), ("test", test_path)):
        csv = args.out / f"analyze_{split}.csv"
        C.infoprobe("analyze", *[r["checkpoint"] for r in runs], "--data", data, "--csv", csv,
                    "--device", "cpu")
        frame = pd.DataFrame(runs).merge(C.read_csv(csv), on="checkpoint")
        frame.insert(0, "split", split)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "label_smoothing.csv")

    table = (rows.groupby(["split", "label_smoothing"])[["accuracy", "mir", "hdr", "h_z", "h_w"]]
             .agg(["mean", "std"]).round(4))
    summary = {"seeds": len(seeds), "epochs": args.epochs, "table": {
        f"{split}/eps={eps}": {f"{col}_{stat}": float(v) for (col, stat), v in r.items()}
        for (split, eps), r in table.iterrows()}}
    for split, frame in rows.groupby("split"):
        for col in ("mir", "hdr", "accuracy"):
            if frame[col].nunique() > 1 and frame.label_smoothing.nunique() > 1:
                summary[f"{split}_spearman_eps_{col}"] = round(
                    float(frame.label_smoothing.corr(frame[col], method="spearman")), 3)
    plot(rows, args.out / "label_smoothing.png")
    C.finish(args.out, "label_smoothing", summary, timer, show=table.to_string())


def plot(rows, path: Path) -> None:
    fig, ax = C.figure(3, width=3.2, height=2.8)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    for split, frame in rows.groupby("split"):
        stats = frame.groupby("label_smoothing")[["accuracy", "mir", "hdr"]].agg(["mean", "std"])
        stats = stats.fillna(0.0)
        for a, col in zip(ax, ("accuracy", "mir", "hdr"), strict=True):
            a.scatter(frame.label_smoothing, frame[col], s=8, c=colours[split], alpha=0.4)
            a.errorbar(stats.index, stats[(col, "mean")], yerr=stats[(col, "std")], fmt="o-",
                       ms=4, capsize=3, c=colours[split], label=split)
    C.nc_line(ax[1], int(rows.n_classes.iloc[0]))
    for a, title in zip(ax, ("accuracy", "MIR", "HDR"), strict=True):
        a.set_title(title)
        a.set_xlabel("label smoothing eps")
        a.set_xticks(EPSILONS)
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.suptitle("test_resnet on digits: label smoothing (mean ± std over seeds)", fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
