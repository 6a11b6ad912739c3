"""Linear mode connectivity seen through MIR and HDR (paper §5.3, Figs. 3-4).

The paper's protocol: two runs from the same initialisation that differ only in the SGD noise
(batch order), interpolated, theta(alpha) = (1 - alpha) theta_A + alpha theta_B, at several
learning rates. On CIFAR-10 at lr 0.03 the path is not connected (accuracy near chance for
alpha in 0.4-0.6) and there "MIR shows an additional upward trend"; at 3e-3 and 3e-4 the path is
connected. Here: timm ``test_resnet`` on MNIST-5k, AdamW at lr in {3e-2, 1e-2, 3e-3, 3e-4},
same-initialisation pairs (init seed k, batch orders 0 and 1; ``--pairs`` seeds k) at each lr,
measured with

    infoprobe lmc OUT/checkpoints/A_lr0.03.safetensors OUT/checkpoints/B_lr0.03.safetensors \
        --data OUT/data/mnist/test.safetensors --steps 11 --csv OUT/lmc_same_init0_lr0.03.csv

Extra arms (not in the paper): a pair with different initialisations (seeds 0 and 1) at lr
3e-3, and that pair and the highest-lr pair again with the BatchNorm statistics re-estimated
at each alpha (``--reset-bn --bn-data OUT/data/mnist/train.safetensors``, REPAIR's "BN
reset").

    python examples/03_lmc.py [--quick] [--out DIR] [--data digits]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "03_lmc"
LRS = (3e-2, 1e-2, 3e-3, 3e-4)
OTHER_INIT_LR = 3e-3


def add_options(parser) -> None:
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=11, help="alphas from 0 to 1")
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")
    parser.add_argument("--pairs", type=int, default=3, help="same-init pairs per lr")


def _pairs(lrs, n_pairs: int) -> dict[str, tuple[tuple, tuple, float]]:
    """pair label -> ((init, order) of A, (init, order) of B, lr)."""
    pairs = {f"same_init{k}_lr{lr:g}": ((k, 0), (k, 1), lr) for lr in lrs for k in range(n_pairs)}
    pairs[f"different_init_lr{OTHER_INIT_LR:g}"] = ((0, 0), (1, 1), OTHER_INIT_LR)
    return pairs


def train_runs(args, train, test, pairs) -> dict[tuple, Path]:
    """One checkpoint per distinct (init, order, lr)."""
    ckpt = {}
    for a, b, lr in pairs.values():
        for init_seed, order_seed in (a, b):
            key = (init_seed, order_seed, lr)
            if key in ckpt:
                continue
            config = C.TrainConfig(epochs=args.epochs, lr=lr, max_steps=3 if args.quick else None)
            total, spe = (
                config.total_steps(len(train["y"])),
                config.steps_per_epoch(len(train["y"])),
            )
            model = C.create_model(C.ARCH, seed=init_seed)
            C.train(model, train, config, order_seed=order_seed)
            ckpt[key] = C.save_checkpoint(
                model,
                args.out / "checkpoints" / f"init{init_seed}_order{order_seed}_lr{lr:g}"
                ".safetensors",
                arch=C.ARCH,
                num_classes=C.NUM_CLASSES,
                step=total,
                epoch=total / spe,
                init_seed=init_seed,
                order_seed=order_seed,
                lr=lr,
            )
            C.log(
                f"init {init_seed}, order {order_seed}, lr {lr:g}: test accuracy "
                f"{C.accuracy(model, test):.4f}"
            )
    return ckpt


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.DATASETS[args.data](args.out)
    pairs = _pairs(LRS[::2] if args.quick else LRS, 1 if args.quick else args.pairs)
    ckpt = train_runs(args, train, test, pairs)
    steps = 3 if args.quick else args.steps

    import pandas as pd

    frames, barriers = [], {}
    for pair, (a, b, lr) in pairs.items():
        # BN reset for the different-init pair and the highest lr only (a pass over the
        # training split per alpha)
        resets = (
            (False, True)
            if pair.startswith("different")
            or (a[0] == 0 and lr == max(p[2] for p in pairs.values()))
            else (False,)
        )
        for reset in resets:
            label = f"{pair}{'+bn_reset' if reset else ''}"
            csv, js = args.out / f"lmc_{label}.csv", args.out / f"lmc_{label}.json"
            reset_args = ["--reset-bn", "--bn-data", train_path] if reset else []
            C.infoprobe(
                "lmc",
                ckpt[(*a, lr)],
                ckpt[(*b, lr)],
                "--data",
                test_path,
                "--steps",
                steps,
                *reset_args,
                "--csv",
                csv,
                "--json",
                js,
                "--device",
                "cpu",
                *C.quick_samples(args.quick),
            )
            frame = C.read_csv(csv)
            frame.insert(0, "pair", pair)
            frame.insert(1, "bn_reset", reset)
            frame.insert(2, "lr", lr)
            frames.append(frame)
            barriers[label] = json.loads(js.read_text())["barriers"]
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "lmc.csv")

    summary = {"data": args.data, "epochs": args.epochs, "barriers": barriers}
    for (pair, reset), frame in rows.groupby(["pair", "bn_reset"]):
        summary[f"{pair}{'+bn_reset' if reset else ''}"] = _path_summary(frame)
    summary["same_init_by_lr"] = _by_lr(rows)
    plot(rows, args.out / "lmc.png", args.data)
    C.finish(args.out, "lmc", summary, timer)


def _by_lr(rows) -> dict:
    """Per lr, over the same-init pairs (no BN reset): mean and sd of the accuracy barrier
    (end mean minus worst inside) and of MIR and HDR at the worst point minus their end mean."""
    out = {}
    same = rows[rows.pair.str.startswith("same") & ~rows.bn_reset.astype(bool)]
    for lr, by_lr in same.groupby("lr"):
        stats = {"accuracy_barrier": [], "mir_change": [], "hdr_change": []}
        for _, frame in by_lr.groupby("pair"):
            ends = frame[frame.alpha.isin([0.0, 1.0])]
            inner = frame[~frame.alpha.isin([0.0, 1.0])]
            if not len(inner):
                continue
            worst = inner.loc[inner.accuracy.idxmin()]
            stats["accuracy_barrier"].append(float(ends.accuracy.mean() - worst.accuracy))
            stats["mir_change"].append(float(worst.mir - ends.mir.mean()))
            stats["hdr_change"].append(float(worst.hdr - ends.hdr.mean()))
        out[f"lr={lr:g}"] = {
            "pairs": len(stats["mir_change"]),
            **{
                f"{k}_{stat}": round(v, 4)
                for k, vals in stats.items()
                if vals
                for stat, v in zip(("mean", "sd"), C.mean_std(vals), strict=True)
            },
        }
    return out


def _path_summary(frame) -> dict:
    """End points against the worst interior point; MIR/HDR at the accuracy minimum."""
    ends = frame[frame.alpha.isin([0.0, 1.0])]
    inner = frame[~frame.alpha.isin([0.0, 1.0])]
    out = {
        "accuracy_ends_mean": round(float(ends.accuracy.mean()), 4),
        "mir_ends_mean": round(float(ends.mir.mean()), 4),
        "hdr_ends_mean": round(float(ends.hdr.mean()), 4),
    }
    if len(inner):
        worst = inner.loc[inner.accuracy.idxmin()]
        out.update(
            accuracy_min_inside=round(float(worst.accuracy), 4),
            alpha_at_min=float(worst.alpha),
            mir_at_accuracy_min=round(float(worst.mir), 4),
            hdr_at_accuracy_min=round(float(worst.hdr), 4),
            mir_min_inside=round(float(inner.mir.min()), 4),
            mir_max_inside=round(float(inner.mir.max()), 4),
            hdr_max_inside=round(float(inner.hdr.max()), 4),
        )
    return out


def plot(rows, path: Path, data: str) -> None:
    import matplotlib

    fig, ax = C.figure(4, width=3.0, height=2.9)
    same = sorted(rows[rows.pair.str.startswith("same")].lr.unique(), reverse=True)
    cmap = matplotlib.colormaps["viridis"]
    colours = {lr: cmap(i / max(len(same) - 1, 1) * 0.85) for i, lr in enumerate(same)}
    for (pair, reset), frame in rows.groupby(["pair", "bn_reset"], sort=False):
        frame = frame.sort_values("alpha")
        lr = float(frame.lr.iloc[0])
        different = pair.startswith("different")
        first = different or pair.startswith("same_init0")
        if reset and not different:
            continue  # the BN-reset line of the same-init pair is in the CSV, not the figure
        if not first:  # further pairs of an lr: thin, unlabelled
            for a, col in zip(ax, ("accuracy", "loss", "mir", "hdr"), strict=True):
                a.plot(frame.alpha, frame[col], c=colours[lr], ls="--", lw=0.7, alpha=0.6)
            continue
        kw = dict(
            c="tab:red" if different else colours[lr],
            ls="-" if reset else "--",
            marker="o",
            ms=3,
            label=(
                f"different init, lr {lr:g}{', BN reset' if reset else ''}"
                if different
                else f"same init, lr {lr:g}"
            ),
        )
        for a, col in zip(ax, ("accuracy", "loss", "mir", "hdr"), strict=True):
            a.plot(frame.alpha, frame[col], **kw)
    for a, title in zip(ax, ("test accuracy", "test loss", "MIR", "HDR"), strict=True):
        a.set_title(title)
        a.set_xlabel("alpha")
    ax[1].set_yscale("log")
    handles, labels = ax[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    fig.suptitle(
        f"linear interpolation between test_resnet runs on {data} (AdamW; dashed: "
        "interpolated BN statistics, solid: BN reset; thin: further same-init pairs)",
        fontsize=9,
    )
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
