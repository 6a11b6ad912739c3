"""Linear mode connectivity seen through MIR and HDR (paper §5).

Three timm ``test_resnet`` runs on the digits:

* A and B share their initialisation (seed 0) and differ only in the batch order;
* C has another initialisation (seed 1) and B's batch order.

Each pair is interpolated, theta(alpha) = (1 - alpha) theta_0 + alpha theta_1, with and without
re-estimating the BatchNorm statistics at every alpha (the "BN reset" of REPAIR):

    infoprobe lmc OUT/checkpoints/A.safetensors OUT/checkpoints/B.safetensors \
        --data fixtures/digits/test.safetensors --steps 11 \
        [--reset-bn --bn-data fixtures/digits/train.safetensors] --csv OUT/lmc_same_init.csv

The paper's reading: where accuracy and loss show a barrier along the path, MIR dips and HDR
rises with it; where the two end points are linearly connected, MIR and HDR stay flat.

    python examples/03_lmc.py [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "03_lmc"
RUNS = {"A": (0, 0), "B": (0, 1), "C": (1, 1)}  # name: (init seed, batch-order seed)
PAIRS = {"same_init": ("A", "B"), "different_init": ("A", "C")}


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=11, help="alphas from 0 to 1")


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.digits(args.out)
    config = C.TrainConfig(epochs=args.epochs, max_steps=6 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    spe = config.steps_per_epoch(len(train["y"]))
    steps = 3 if args.quick else args.steps
    ckpt = {}
    for name, (init_seed, order_seed) in RUNS.items():
        model = C.create_model(C.ARCH, seed=init_seed)
        C.train(model, train, config, order_seed=order_seed)
        ckpt[name] = C.save_checkpoint(
            model, args.out / "checkpoints" / f"{name}.safetensors", arch=C.ARCH,
            num_classes=C.NUM_CLASSES, step=total, epoch=total / spe, init_seed=init_seed,
            order_seed=order_seed)
        C.log(f"run {name} (init {init_seed}, order {order_seed}): test accuracy "
              f"{C.accuracy(model, test):.4f} ({timer})")

    import pandas as pd

    frames, barriers = [], {}
    for pair, (a, b) in PAIRS.items():
        for reset in (False, True):
            label = f"{pair}{'+bn_reset' if reset else ''}"
            csv, js = args.out / f"lmc_{label}.csv", args.out / f"lmc_{label}.json"
            reset_args = ["--reset-bn", "--bn-data", train_path] if reset else []
            C.infoprobe("lmc", ckpt[a], ckpt[b], "--data", test_path, "--steps", steps,
                        *reset_args, "--csv", csv, "--json", js, "--device", "cpu")
            frame = C.read_csv(csv)
            frame.insert(0, "pair", pair)
            frame.insert(1, "bn_reset", reset)
            frames.append(frame)
            barriers[label] = json.loads(js.read_text())["barriers"]
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "lmc.csv")

    summary = {"barriers": barriers, "epochs": args.epochs}
    for (pair, reset), frame in rows.groupby(["pair", "bn_reset"]):
        label = f"{pair}{'+bn_reset' if reset else ''}"
        ends = frame[frame.alpha.isin([0.0, 1.0])]
        inner = frame[~frame.alpha.isin([0.0, 1.0])]
        summary[label] = {
            "accuracy_ends_mean": round(float(ends.accuracy.mean()), 4),
            "accuracy_min_inside": round(float(inner.accuracy.min()), 4) if len(inner) else None,
            "mir_ends_mean": round(float(ends.mir.mean()), 4),
            "mir_min_inside": round(float(inner.mir.min()), 4) if len(inner) else None,
            "hdr_ends_mean": round(float(ends.hdr.mean()), 4),
            "hdr_max_inside": round(float(inner.hdr.max()), 4) if len(inner) else None,
        }
    plot(rows, args.out / "lmc.png")
    C.finish(args.out, "lmc", summary, timer)


def plot(rows, path: Path) -> None:
    fig, ax = C.figure(4, width=3.0, height=2.7)
    colours = {"same_init": "tab:blue", "different_init": "tab:red"}
    for (pair, reset), frame in rows.groupby(["pair", "bn_reset"]):
        frame = frame.sort_values("alpha")
        style = dict(c=colours[pair], ls="-" if reset else "--", marker="o", ms=3,
                     label=f"{pair.replace('_', ' ')}{', BN reset' if reset else ''}")
        for a, col in zip(ax, ("accuracy", "loss", "mir", "hdr"), strict=True):
            a.plot(frame.alpha, frame[col], **style)
    C.nc_line(ax[2], int(rows.n_classes.iloc[0]), label=False)
    for a, title in zip(ax, ("test accuracy", "test loss", "MIR", "HDR"), strict=True):
        a.set_title(title)
        a.set_xlabel("alpha")
    ax[0].legend(fontsize=6)
    fig.suptitle("linear interpolation between test_resnet runs on digits "
                 "(dashed: interpolated BN statistics; solid: BN reset)", fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
