"""Training dynamics: MIR and HDR along one training run (paper, Figs. 1-2).

A timm ``test_resnet`` is trained with AdamW and a one-cycle schedule on two datasets: the
digits (scikit-learn's 8x8 handwritten digits upsampled to 16x16; 1347 train / 450 test) and
MNIST-5k (4000 train / 1000 test real 28x28 MNIST images, ``fixtures/mnist``). Checkpoints are
saved at log-spaced steps and measured on both splits with the exact entropies (infoprobe's
default) and with the paper's estimate, the mean over mini-batches of 256:

    infoprobe track OUT/mnist/checkpoints --data OUT/data/mnist/test.safetensors \
        [--estimate batch] --csv OUT/mnist/track_test_exact.csv

The paper's claim (Figs. 1-2): as accuracy rises, MIR between features and head rises toward
its neural-collapse optimum (0.952 for 10 classes) and HDR falls.

    python examples/01_training_dynamics.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "01_training_dynamics"
EPOCHS = {"digits": 30, "mnist": 8}
ESTIMATES = ("exact", "batch")


def add_options(parser) -> None:
    parser.add_argument("--checkpoints", type=int, default=24, help="about this many, log-spaced")
    parser.add_argument("--seed", type=int, default=0)


def run(args, dataset: str, timer):
    """Train on ``dataset`` saving checkpoints, then track both splits with both estimates."""
    import pandas as pd

    train, test, train_path, test_path = C.DATASETS[dataset](args.out)
    config = C.TrainConfig(epochs=EPOCHS[dataset], max_steps=12 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    spe = config.steps_per_epoch(len(train["y"]))
    save_at = set(C.log_spaced_steps(total, 4 if args.quick else args.checkpoints))
    ckpt_dir = C.fresh_checkpoint_dir(args.out / dataset)

    def on_step(step, model):
        if step in save_at:
            C.save_checkpoint(
                model,
                ckpt_dir / f"step{step:04d}.safetensors",
                arch=C.ARCH,
                num_classes=C.NUM_CLASSES,
                step=step,
                epoch=step / spe,
                seed=args.seed,
                data=dataset,
            )

    model = C.create_model(C.ARCH, seed=args.seed)
    C.train(model, train, config, order_seed=args.seed, on_step=on_step)
    C.log(
        f"{dataset}: trained {total} steps ({total / spe:.1f} epochs), {len(save_at)} "
        f"checkpoints, test accuracy {C.accuracy(model, test):.4f} ({timer})"
    )
    frames = []
    for split, path in (("train", train_path), ("test", test_path)):
        for estimate in ESTIMATES:
            csv = args.out / dataset / f"track_{split}_{estimate}.csv"
            frame = C.track_frame(
                csv,
                ckpt_dir,
                "--data",
                path,
                "--estimate",
                estimate,
                "--device",
                "cpu",
                *C.quick_samples(args.quick),
                dataset=dataset,
                split=split,
                estimator=estimate,
            )
            frame.insert(3, "epoch", frame["step"] / spe)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    import pandas as pd

    rows = pd.concat([run(args, dataset, timer) for dataset in EPOCHS], ignore_index=True)
    C.write_csv(rows, args.out / "training_dynamics.csv")
    summary = summarise(rows)
    summary["epochs"] = EPOCHS
    plot(rows, args.out / "training_dynamics.png")
    C.finish(args.out, "training_dynamics", summary, timer)


def summarise(rows) -> dict:
    """Start/end values and rank correlations with accuracy over the checkpoints."""
    out = {"mir_nc": float(rows["mir_nc"].iloc[0])}
    for (dataset, split, estimate), frame in rows.groupby(["dataset", "split", "estimator"]):
        frame = frame.sort_values("step")
        key = f"{dataset}_{split}_{estimate}"
        first, last = frame.iloc[0], frame.iloc[-1]
        for col in ("accuracy", "mir", "hdr", "mi"):
            out[f"{key}_{col}_start"] = round(float(first[col]), 4)
            out[f"{key}_{col}_end"] = round(float(last[col]), 4)
        out[f"{key}_mir_max"] = round(float(frame.mir.max()), 4)
        out[f"{key}_hdr_min"] = round(float(frame.hdr.min()), 4)
        if len(frame) > 2:
            out[f"{key}_spearman_accuracy_mir"] = round(
                float(frame.accuracy.corr(frame.mir, method="spearman")), 3
            )
            out[f"{key}_spearman_accuracy_hdr"] = round(
                float(frame.accuracy.corr(frame.hdr, method="spearman")), 3
            )
    return out


def plot(rows, path: Path) -> None:
    datasets = list(dict.fromkeys(rows.dataset))
    fig, ax = C.figure(4, nrows=len(datasets), width=3.0, height=2.6)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    styles = {"exact": "-", "batch": "--"}
    for row, dataset in enumerate(datasets):
        axes = ax[4 * row : 4 * row + 4]
        for (split, estimate), frame in rows[rows.dataset == dataset].groupby(
            ["split", "estimator"]
        ):
            frame = frame.sort_values("step")
            x = frame.epoch.clip(lower=frame.epoch[frame.epoch > 0].min() / 2)
            kw = dict(c=colours[split], ls=styles[estimate], label=f"{split}, {estimate}")
            if estimate == "exact":
                axes[0].plot(x, frame.accuracy, "o-", ms=3, c=colours[split], label=split)
                axes[3].plot(x, frame.h_z, "-", c=colours[split], label=f"H(Z) {split}")
                axes[3].plot(x, frame.h_w, ":", c=colours[split], label=f"H(W) {split}")
            axes[1].plot(x, frame.mir, **kw)
            axes[2].plot(x, frame.hdr, **kw)
        C.nc_line(axes[1], int(rows["n_classes"].iloc[0]))
        titles = ("accuracy", "MIR", "HDR", "entropy, exact (nats)")
        for a, title in zip(axes, titles, strict=True):
            a.set_title(f"{dataset}: {title}", fontsize=9)
            a.set_xscale("log")
            a.set_xlabel("epoch (log; step 0 at the left edge)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=6)
        axes[3].legend(fontsize=6)
    fig.suptitle(
        "test_resnet, one training run per dataset (solid: exact entropies; dashed: "
        "the paper's mean over mini-batches of 256)",
        fontsize=9,
    )
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
