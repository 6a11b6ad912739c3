"""Pruning sweep from 0 to 90% of the weights (paper, Fig. 6).

A timm ``test_resnet`` trained on the digits is pruned, without fine-tuning, at ratios
0, 0.1, ..., 0.9 by global weight magnitude (the usual choice) and, as a control, at random:

    infoprobe prune OUT/checkpoints/dense.safetensors --data fixtures/digits/test.safetensors \
        --ratios 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 --csv OUT/prune_global-magnitude.csv

Each row holds MIR/HDR between the pruned model's features and its head (``mir``, ``hdr``)
and between the pruned and the dense model's features on the same samples (``mir_dense``,
``hdr_dense``, the comparison the paper makes). The paper's reading: as more weights are
removed, the information the pruned representation shares with the dense one falls (MIR down,
HDR up), tracking the loss of accuracy.

    python examples/04_pruning.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "04_pruning"
METHODS = ("global-magnitude", "random")


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, _, test_path = C.digits(args.out)
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
        C.infoprobe("prune", dense, "--data", test_path, "--ratios", ratios, "--method", method,
                    "--csv", csv, "--plot", args.out / f"prune_{method}_cli.png",
                    "--device", "cpu")
        frame = C.read_csv(csv)
        frame.insert(0, "method", method)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "pruning.csv")

    summary = {"epochs": args.epochs}
    for method, frame in rows.groupby("method"):
        frame = frame.sort_values("ratio")
        summary[method] = {
            f"ratio={r:g}": {c: round(float(v), 4) for c, v in
                             frame[frame.ratio == r][["accuracy", "mir", "hdr", "mir_dense",
                                                      "hdr_dense"]].iloc[0].items()}
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
    fig, ax = C.figure(4, width=3.0, height=2.7)
    colours = {"global-magnitude": "tab:blue", "random": "tab:gray"}
    for method, frame in rows.groupby("method"):
        frame = frame.sort_values("ratio")
        style = dict(c=colours.get(method), marker="o", ms=3, label=method)
        ax[0].plot(frame.ratio, frame.accuracy, **style)
        ax[1].plot(frame.ratio, frame.mir_dense, **style)
        ax[2].plot(frame.ratio, frame.hdr_dense, **style)
        ax[3].plot(frame.ratio, frame.mir, **style)
    C.nc_line(ax[3], int(rows.n_classes.iloc[0]))
    titles = ("test accuracy", "MIR pruned vs dense features", "HDR pruned vs dense features",
              "MIR features vs head")
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title, fontsize=9)
        a.set_xlabel("pruning ratio")
    ax[0].legend(fontsize=7)
    ax[3].legend(fontsize=6)
    fig.suptitle("test_resnet on digits: unstructured pruning, no fine-tuning", fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
