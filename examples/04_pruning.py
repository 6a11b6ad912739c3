"""Pruning sweep from 0 to 90% of the weights, with and without fine-tuning (paper, Fig. 6).

The paper's protocol: magnitude pruning, after which "the remaining parameters are
fine-tuned"; the pruned model's features keep a high MIR with the dense model's even at 90%
sparsity. Here a timm ``test_resnet`` trained on MNIST-5k is pruned at ratios 0, 0.1, ..., 0.9
by global weight magnitude and each pruned model is fine-tuned (masks fixed) for
``--finetune-epochs`` epochs on the training split:

    infoprobe prune OUT/checkpoints/dense.safetensors --data OUT/data/mnist/test.safetensors \
        --ratios 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 --method global-magnitude \
        --finetune-data OUT/data/mnist/train.safetensors --finetune-epochs 1 \
        --csv OUT/prune_global-magnitude.csv

Each row holds the values before fine-tuning (``accuracy``, ``mir``, ``hdr`` between the
pruned model's features and its head; ``mir_dense``, ``hdr_dense`` between the pruned and the
dense model's features on the same samples, the comparison the paper makes) and after it
(``ft_accuracy``, ``ft_mir``, ``ft_hdr``, ``ft_mir_dense``, ``ft_hdr_dense``). Random pruning
without fine-tuning is a control.

    python examples/04_pruning.py [--quick] [--out DIR] [--finetune-epochs 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "04_pruning"
METHODS = ("global-magnitude", "random")
FINETUNED = "global-magnitude"  # the paper's protocol; random pruning is the control


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.DATASETS[args.data](args.out)
    config = C.TrainConfig(epochs=args.epochs, max_steps=6 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    model = C.create_model(C.ARCH, seed=args.seed)
    C.train(model, train, config, order_seed=args.seed)
    dense = C.save_checkpoint(model, args.out / "checkpoints" / "dense.safetensors",
                              arch=C.ARCH, num_classes=C.NUM_CLASSES, step=total,
                              epoch=total / config.steps_per_epoch(len(train["y"])),
                              seed=args.seed)
    C.log(f"dense model: test accuracy {C.accuracy(model, test):.4f} ({timer})")

    ratios = "0,0.5,0.9" if args.quick else ",".join(f"{r / 10:g}" for r in range(10))
    import pandas as pd

    frames = []
    for method in METHODS:
        csv = args.out / f"prune_{method}.csv"
        csv.unlink(missing_ok=True)  # a fresh sweep (the CLI resumes only with --resume)
        finetune = ["--finetune-data", train_path, "--finetune-epochs", args.finetune_epochs
                    ] if method == FINETUNED else []
        C.infoprobe("prune", dense, "--data", test_path, "--ratios", ratios, "--method", method,
                    *finetune, *C.quick_samples(args.quick), "--csv", csv,
                    "--plot", args.out / f"prune_{method}_cli.png",
                    "--device", "cpu")
        frame = C.read_csv(csv)
        frame.insert(0, "method", method)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "pruning.csv")

    summary = {"data": args.data, "epochs": args.epochs,
               "finetune_epochs": args.finetune_epochs}
    for method, frame in rows.groupby("method"):
        frame = frame.sort_values("ratio")
        cols = [c for c in ("accuracy", "mir", "hdr", "mir_dense", "hdr_dense", "ft_accuracy",
                            "ft_mir", "ft_hdr", "ft_mir_dense", "ft_hdr_dense")
                if c in frame and frame[c].notna().any()]
        summary[method] = {
            f"ratio={r:g}": {c: round(float(v), 4) for c, v in
                             frame[frame.ratio == r][cols].iloc[0].items()}
            for r in frame.ratio}
        if len(frame) > 2 and frame.accuracy.nunique() > 1 and frame.mir_dense.nunique() > 1:
            summary[method]["spearman_ratio_mir_dense"] = round(
                float(frame.ratio.corr(frame.mir_dense, method="spearman")), 3)
            summary[method]["spearman_ratio_hdr_dense"] = round(
                float(frame.ratio.corr(frame.hdr_dense, method="spearman")), 3)
            summary[method]["spearman_accuracy_mir_dense"] = round(
                float(frame.accuracy.corr(frame.mir_dense, method="spearman")), 3)
    plot(rows, args.out / "pruning.png")
    C.finish(args.out, "pruning", summary, timer)


def plot(rows, path: Path) -> None:
    fig, ax = C.figure(4, width=3.0, height=2.8)
    arms = [("global-magnitude", "", "tab:blue", "-", "magnitude, no fine-tuning"),
            ("global-magnitude", "ft_", "tab:green", "-", "magnitude + fine-tuning (paper)"),
            ("random", "", "tab:gray", ":", "random, no fine-tuning")]
    for method, prefix, colour, ls, label in arms:
        frame = rows[rows.method == method].sort_values("ratio")
        if f"{prefix}accuracy" not in frame or frame[f"{prefix}accuracy"].isna().all():
            continue
        style = dict(c=colour, ls=ls, marker="o", ms=3, label=label)
        for a, col in zip(ax, ("accuracy", "mir_dense", "hdr_dense", "mir"), strict=True):
            a.plot(frame.ratio, frame[prefix + col], **style)
    C.nc_line(ax[3], int(rows.n_classes.iloc[0]), label=False)
    titles = ("test accuracy", "MIR, pruned vs dense features", "HDR, pruned vs dense features",
              "MIR, features vs head (dashed: NC)")
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title, fontsize=9)
        a.set_xlabel("pruning ratio")
    ax[0].legend(fontsize=7)
    fig.suptitle("test_resnet on MNIST-5k: unstructured pruning, before and after fine-tuning",
                 fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
