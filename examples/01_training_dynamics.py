"""Training dynamics: MIR and HDR along training runs (paper, Figs. 1-2).

A timm ``test_resnet`` is trained (``--seeds`` runs per dataset, each seed its own
initialisation and batch order) with AdamW and a one-cycle schedule on two datasets: the
digits (scikit-learn's 8x8 handwritten digits upsampled to 16x16; 1347 train / 450 test) and
MNIST-5k (4000 train / 1000 test real 28x28 MNIST images, ``fixtures/mnist``). Checkpoints are
saved at log-spaced steps and measured on both splits with the exact entropies (infoprobe's
default) and with the mini-batch estimate, the mean over mini-batches of 256 (taken to be
the paper's estimate and batch size: assumed; the paper's text was not available to check):

    infoprobe track OUT/mnist/checkpoints --data OUT/data/mnist/test.safetensors \
        [--estimate batch] --csv OUT/mnist/seed0/track_test_exact.csv

The paper's claim (Figs. 1-2): as accuracy rises, MIR between features and head rises toward
its neural-collapse optimum (0.952 for 10 classes) and HDR falls.

    python examples/01_training_dynamics.py [--quick] [--out DIR] [--seeds 3]
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
    parser.add_argument("--seeds", type=int, default=3, help="training runs per dataset")


def run(args, dataset: str, seed: int, timer):
    """Train on ``dataset`` with ``seed`` (initialisation and batch order) saving checkpoints,
    then track both splits with both estimates."""
    import pandas as pd

    train, test, train_path, test_path = C.DATASETS[dataset](args.out)
    config = C.TrainConfig(epochs=EPOCHS[dataset], max_steps=12 if args.quick else None)
    total = config.total_steps(len(train["y"]))
    spe = config.steps_per_epoch(len(train["y"]))
    save_at = set(C.log_spaced_steps(total, 4 if args.quick else args.checkpoints))
    ckpt_dir = C.fresh_checkpoint_dir(args.out / dataset / f"seed{seed}")

    def on_step(step, model):
        if step in save_at:
            C.save_checkpoint(
                model,
                ckpt_dir / f"step{step:04d}.safetensors",
                arch=C.ARCH,
                num_classes=C.NUM_CLASSES,
                step=step,
                epoch=step / spe,
                seed=seed,
                data=dataset,
            )

    model = C.create_model(C.ARCH, seed=seed)
    C.train(model, train, config, order_seed=seed, on_step=on_step)
    C.log(
        f"{dataset}, seed {seed}: trained {total} steps ({total / spe:.1f} epochs), {len(save_at)} "
        f"checkpoints, test accuracy {C.accuracy(model, test):.4f} ({timer})"
    )
    frames = []
    for split, path in (("train", train_path), ("test", test_path)):
        for estimate in ESTIMATES:
            csv = ckpt_dir.parent / f"track_{split}_{estimate}.csv"
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
                seed=seed,
                split=split,
                estimator=estimate,
            )
            frame.insert(4, "epoch", frame["step"] / spe)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    import pandas as pd

    seeds = range(1 if args.quick else args.seeds)
    rows = pd.concat(
        [run(args, dataset, seed, timer) for dataset in EPOCHS for seed in seeds],
        ignore_index=True,
    )
    C.write_csv(rows, args.out / "training_dynamics.csv")
    summary = summarise(rows)
    summary["epochs"] = EPOCHS
    csv = C.write_csv(figure_frame(rows), args.out / "training_dynamics_figure.csv")
    draw(csv, args.out / "training_dynamics.png")
    C.finish(args.out, "training_dynamics", summary, timer)


def summarise(rows) -> dict:
    """Per dataset, split and estimate: start and end values and the Spearman correlations
    of MIR and HDR with accuracy over the checkpoints, each as [mean, sd] over seeds; and
    the largest gap between the batch and the exact MIR (seed means) along training."""
    out = {"mir_nc": float(rows["mir_nc"].iloc[0]), "seeds": int(rows.seed.nunique())}
    keys = ["dataset", "split", "estimator"]
    for key, frame in rows.groupby(keys):
        per_seed = [_one_run(f.sort_values("step")) for _, f in frame.groupby("seed")]
        out["_".join(key)] = {
            k: [round(v, 4) for v in C.mean_std(r[k] for r in per_seed)] for k in per_seed[0]
        }
    means = rows.groupby([*keys, "step"]).mir.mean().unstack("estimator")
    gap = (means["batch"] - means["exact"]).groupby(["dataset", "split"])
    out["batch_minus_exact_mir"] = {
        f"{d}_{s}": {"max": round(float(g.max()), 4), "at_end": round(float(g.iloc[-1]), 4)}
        for (d, s), g in gap
    }
    return out


def _one_run(frame) -> dict:
    first, last = frame.iloc[0], frame.iloc[-1]
    out = {f"{c}_{w}": float(r[c]) for c in ("accuracy", "mir", "hdr") for w, r in
           (("start", first), ("end", last))}  # fmt: skip
    out["spearman_accuracy_mir"] = float(frame.accuracy.corr(frame.mir, method="spearman"))
    out["spearman_accuracy_hdr"] = float(frame.accuracy.corr(frame.hdr, method="spearman"))
    return out


PLOTTED = ("accuracy", "mir", "hdr", "h_z", "h_w")


def figure_frame(rows):
    """The figure's data: per dataset, split, estimate and step, mean and sd over seeds."""
    keys = ["dataset", "split", "estimator", "step"]
    stats = rows.groupby(keys)[list(PLOTTED)].agg(["mean", "std"])
    stats.columns = [f"{c}_{st}" for c, st in stats.columns]
    grouped = rows.groupby(keys)
    stats.insert(0, "epoch", grouped.epoch.first())
    stats["seeds"] = grouped.size()
    stats["n_classes"] = grouped.n_classes.first()
    return stats.reset_index().round(5)


def draw(csv: Path, png: Path):
    """Draw the training-dynamics figure from its CSV (:func:`figure_frame`): seed means,
    bands ± sd; returns the figure."""
    stats = C.read_csv(csv)
    datasets = list(dict.fromkeys(stats.dataset))
    fig, ax = C.figure(4, nrows=len(datasets), width=3.0, height=2.6)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    styles = {"exact": "-", "batch": "--"}
    for row, dataset in enumerate(datasets):
        axes = ax[4 * row : 4 * row + 4]
        for (split, estimate), f in stats[stats.dataset == dataset].groupby(["split", "estimator"]):
            f = f.sort_values("step")
            x = f.epoch.clip(lower=f.epoch[f.epoch > 0].min() / 2)
            c, ls = colours[split], styles[estimate]
            if estimate == "exact":
                _band(axes[0], x, f, "accuracy", c=c, ls="-", marker="o", ms=3, label=split)
                _band(axes[3], x, f, "h_z", c=c, ls="-", label=f"H(Z) {split}")
                _band(axes[3], x, f, "h_w", c=c, ls=":", label=f"H(W) {split}")
            _band(axes[1], x, f, "mir", c=c, ls=ls, label=f"{split}, {estimate}")
            _band(axes[2], x, f, "hdr", c=c, ls=ls, label=f"{split}, {estimate}")
        C.nc_line(axes[1], int(stats.n_classes.iloc[0]))
        titles = ("accuracy", "MIR", "HDR", "entropy, exact (nats)")
        for a, title in zip(axes, titles, strict=True):
            a.set_title(f"{dataset}: {title}", fontsize=9)
            a.set_xscale("log")
            a.set_xlabel("epoch (log; step 0 at the left edge)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=6)
        axes[3].legend(fontsize=6)
    fig.suptitle(
        f"test_resnet, mean over {int(stats.seeds.max())} training runs per dataset (band: ± sd; "
        "solid: exact entropies; dashed: the mean over mini-batches of 256)",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig


def _band(axis, x, frame, col: str, **style) -> None:
    mean, sd = frame[f"{col}_mean"], frame[f"{col}_std"].fillna(0.0)
    axis.plot(x, mean, **style)
    axis.fill_between(x, mean - sd, mean + sd, color=style["c"], alpha=0.15, lw=0)


if __name__ == "__main__":
    main()
