"""Training dynamics: MIR and HDR along one training run (paper, Figs. 1-2).

A timm ``test_resnet`` is trained on the digits (scikit-learn's 8x8 handwritten digits,
upsampled to 16x16; 1347 train / 450 test, 10 classes) with AdamW and a one-cycle schedule.
Checkpoints are saved at log-spaced steps and measured with

    infoprobe track OUT/checkpoints --data fixtures/digits/test.safetensors \
        --csv OUT/track_test.csv --plot OUT/track_test_cli.png

and the same on the training split. The paper's claim: as accuracy rises, the mutual-information
ratio MIR between features and head rises toward its neural-collapse optimum (0.952 for 10
classes) and the entropy-difference ratio HDR falls toward 0.

    python examples/01_training_dynamics.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "01_training_dynamics"


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--checkpoints", type=int, default=24, help="about this many, log-spaced")
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.digits(args.out)
    config = C.TrainConfig(epochs=args.epochs, max_steps=12 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    spe = config.steps_per_epoch(len(train["y"]))
    save_at = set(C.log_spaced_steps(total, 4 if args.quick else args.checkpoints))

    ckpt_dir = C.fresh_checkpoint_dir(args.out)

    def on_step(step, model):
        if step in save_at:
            C.save_checkpoint(model, ckpt_dir / f"step{step:04d}.safetensors", arch=C.ARCH,
                              num_classes=C.NUM_CLASSES, step=step, epoch=step / spe,
                              seed=args.seed)

    model = C.create_model(C.ARCH, seed=args.seed)
    C.train(model, train, config, order_seed=args.seed, on_step=on_step)
    C.log(f"trained {total} steps ({total / spe:.1f} epochs), {len(save_at)} checkpoints, "
          f"test accuracy {C.accuracy(model, test):.4f} ({timer})")

    frames = []
    for split, path in (("train", train_path), ("test", test_path)):
        csv = args.out / f"track_{split}.csv"
        C.infoprobe("track", ckpt_dir, "--data", path, "--csv", csv,
                    "--plot", args.out / f"track_{split}_cli.png", "--device", "cpu")
        frame = C.read_csv(csv)
        frame.insert(0, "split", split)
        frames.append(frame)
    import pandas as pd

    rows = pd.concat(frames, ignore_index=True)
    rows.insert(2, "epoch", rows["step"] / spe)
    C.write_csv(rows, args.out / "training_dynamics.csv")
    summary = summarise(rows)
    plot(rows, args.out / "training_dynamics.png")
    C.finish(args.out, "training_dynamics", summary, timer)


def summarise(rows) -> dict:
    """Start/end values and rank correlations with accuracy over the checkpoints."""
    out = {"mir_nc": float(rows["mir_nc"].iloc[0])}
    for split, frame in rows.groupby("split"):
        frame = frame.sort_values("step")
        first, last = frame.iloc[0], frame.iloc[-1]
        for col in ("accuracy", "mir", "hdr", "mi"):
            out[f"{split}_{col}_start"] = round(float(first[col]), 4)
            out[f"{split}_{col}_end"] = round(float(last[col]), 4)
        out[f"{split}_mir_max"] = round(float(frame.mir.max()), 4)
        out[f"{split}_hdr_min"] = round(float(frame.hdr.min()), 4)
        if len(frame) > 2:
            out[f"{split}_spearman_accuracy_mir"] = round(
                float(frame.accuracy.corr(frame.mir, method="spearman")), 3)
            out[f"{split}_spearman_accuracy_hdr"] = round(
                float(frame.accuracy.corr(frame.hdr, method="spearman")), 3)
    return out


def plot(rows, path: Path) -> None:
    fig, ax = C.figure(4, width=3.0, height=2.7)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    for split, frame in rows.groupby("split"):
        frame = frame.sort_values("step")
        x = frame.epoch.clip(lower=frame.epoch[frame.epoch > 0].min() / 2)
        ax[0].plot(x, frame.accuracy, "o-", ms=3, c=colours[split], label=split)
        ax[1].plot(x, frame.mir, "o-", ms=3, c=colours[split], label=split)
        ax[2].plot(x, frame.hdr, "o-", ms=3, c=colours[split], label=split)
        ax[3].plot(x, frame.h_z, "-", c=colours[split], label=f"H(Z) {split}")
        ax[3].plot(x, frame.h_w, ":", c=colours[split], label=f"H(W) {split}")
    C.nc_line(ax[1], int(rows["n_classes"].iloc[0]))
    for a, title in zip(ax, ("accuracy", "MIR", "HDR", "entropy (nats)"), strict=True):
        a.set_title(title)
        a.set_xscale("log")
        a.set_xlabel("epoch (log; step 0 drawn at the left edge)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    ax[3].legend(fontsize=6)
    fig.suptitle("test_resnet on digits: one training run", fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
