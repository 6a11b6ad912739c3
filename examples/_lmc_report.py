"""Summaries and figures of the linear-mode-connectivity study (``03_lmc.py``).

Per same-initialisation pair, split and estimator: the accuracy barrier (mean accuracy of the
two ends minus the lowest interior accuracy; the path counts as connected when it is below
2 points), the barrier point alpha* (the interior alpha of lowest accuracy), and the changes
of MIR and HDR at alpha* against the mean of their two ends. The paper's "MIR shows an
additional upward trend" at the barrier is read as MIR(alpha*) > the mean of its two ends.
These criteria were fixed before the SGD runs.
"""

from __future__ import annotations

from pathlib import Path

import _common as C

CONNECTED = 0.02  # accuracy barrier (fraction) below which a path counts as connected
METRICS = ("accuracy", "loss", "mir", "hdr")


def read_rows(out: Path, optimizer: str, pairs: dict, estimates) -> object:
    """Every lmc CSV of ``optimizer``: pair, arm, lr, split, estimator, alpha, the metrics."""
    import pandas as pd

    frames = []
    for pair, (_, _, lr, resets) in pairs.items():
        for split in ("train", "test"):
            for name in estimates:
                for reset in resets:
                    label = f"{pair}{'+bn_reset' if reset else ''}_{split}_{name}"
                    path = out / optimizer / "lmc" / f"{label}.csv"
                    if not path.is_file():
                        continue
                    frame = C.read_csv(path)
                    arm = pair.split("_init")[0] + "_init" + ("+bn_reset" if reset else "")
                    for i, (col, value) in enumerate(
                        (
                            ("optimizer", optimizer),
                            ("pair", pair),
                            ("arm", arm),
                            ("lr", lr),
                            ("split", split),
                            ("estimator", name),
                        )
                    ):
                        frame.insert(i, col, value)
                    frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def path_changes(frame) -> dict:
    """Barrier, alpha* and the MIR/HDR changes at alpha* of one interpolation path."""
    frame = frame.sort_values("alpha")
    ends = frame[frame.alpha.isin([0.0, 1.0])]
    inner = frame[~frame.alpha.isin([0.0, 1.0])]
    worst = inner.loc[inner.accuracy.idxmin()]
    mir_ends, hdr_ends = ends.mir.mean(), ends.hdr.mean()
    return {
        "end_accuracy": float(ends.accuracy.mean()),
        "barrier": float(ends.accuracy.mean() - worst.accuracy),
        "alpha_star": float(worst.alpha),
        "mir_change": float(worst.mir - mir_ends),
        "hdr_change": float(worst.hdr - hdr_ends),
        "mir_max_inner_change": float(inner.mir.max() - mir_ends),
        "inner_above_ends": int((inner.mir > mir_ends).sum()),
        "inner_points": len(inner),
    }


def pair_table(rows):
    """One row per pair, split and estimator with :func:`path_changes`."""
    import pandas as pd

    keys = ["optimizer", "arm", "lr", "pair", "split", "estimator"]
    out = [
        {**dict(zip(keys, key, strict=True)), **path_changes(frame)}
        for key, frame in rows.groupby(keys, sort=False)
    ]
    return pd.DataFrame(out)


def by_lr(pairs) -> dict:
    """Same-init pairs per lr, split and estimator: mean ± sd over pairs and counts."""
    out = {}
    same = pairs[pairs.arm == "same_init"]
    for (opt, lr, split, est), f in same.groupby(["optimizer", "lr", "split", "estimator"]):
        entry = {"pairs": len(f), "connected": int((f.barrier < CONNECTED).sum())}
        for col in ("end_accuracy", "barrier", "mir_change", "hdr_change", "mir_max_inner_change"):
            m, s = C.mean_std(f[col])
            entry[col] = [round(m, 4), round(s, 4)]
        entry["mir_falls_at_alpha_star"] = int((f.mir_change < 0).sum())
        entry["inner_mir_above_ends"] = (
            f"{int(f.inner_above_ends.sum())} of {int(f.inner_points.sum())}"
        )
        out[f"{opt} lr={lr:g} {split} {est}"] = entry
    return out


def figure_frame(rows):
    """The figure's data: per arm, lr, split, estimator and alpha, mean and sd over pairs."""
    keys = ["optimizer", "arm", "lr", "split", "estimator", "alpha"]
    stats = rows.groupby(keys)[list(METRICS)].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["pairs"] = rows.groupby(keys).size()
    return stats.reset_index().round(5)


PANELS = (
    ("accuracy", "exact", "accuracy"),
    ("loss", "exact", "loss"),
    ("mir", "exact", "MIR, exact"),
    ("mir", "batch256", "MIR, B = 256"),
    ("hdr", "exact", "HDR, exact"),
    ("hdr", "batch256", "HDR, B = 256"),
)


def _style(arm: str, lr: float, colours: dict) -> dict:
    different = arm.startswith("different")
    return {
        "c": "tab:red" if different else colours[lr],
        "ls": "-" if arm.endswith("bn_reset") else "--",
        "marker": "o",
        "ms": 2.5,
        "lw": 1,
        "label": f"{arm.replace('_', ' ')}, lr {lr:g}",
    }


def draw(csv: Path, png: Path):
    """Draw an LMC figure from its CSV (:func:`figure_frame`): mean over pairs (band: ± sd),
    a dotted line at the barrier point alpha* of each path that is not connected."""
    import matplotlib

    stats = C.read_csv(csv)
    splits = [s for s in ("train", "test") if s in set(stats.split)]
    fig, ax = C.figure(len(PANELS), nrows=len(splits), width=2.5, height=2.3)
    lrs = sorted(stats[stats.arm == "same_init"].lr.unique(), reverse=True)
    cmap = matplotlib.colormaps["viridis"]
    colours = {lr: cmap(i / max(len(lrs) - 1, 1) * 0.85) for i, lr in enumerate(lrs)}
    for r, split in enumerate(splits):
        for (arm, lr), path in stats[stats.split == split].groupby(["arm", "lr"], sort=False):
            style = _style(arm, lr, colours)
            exact = path[path.estimator == "exact"].sort_values("alpha")
            star = _barrier_alpha(exact)
            for c, (metric, estimator, title) in enumerate(PANELS):
                a = ax[r * len(PANELS) + c]
                line = path[path.estimator == estimator].sort_values("alpha")
                if len(line):
                    a.plot(line.alpha, line[f"{metric}_mean"], **style)
                    sd = line[f"{metric}_std"].fillna(0.0)
                    lo, hi = line[f"{metric}_mean"] - sd, line[f"{metric}_mean"] + sd
                    a.fill_between(line.alpha, lo, hi, color=style["c"], alpha=0.15, lw=0)
                if star is not None:
                    a.axvline(star, c=style["c"], ls=":", lw=0.9)
                a.set_title(f"{split}: {title}", fontsize=8)
                a.set_xlabel("alpha", fontsize=8)
        ax[r * len(PANELS) + 1].set_yscale("log")
    legend = {}  # every arm once (the BN-reset arms are on the test row only)
    for a in ax:
        legend.update(zip(*reversed(a.get_legend_handles_labels()), strict=True))
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=4, fontsize=7)
    optimizer = stats.optimizer.iloc[0]
    fig.suptitle(
        f"linear interpolation between same-init test_resnet runs on MNIST-5k, {optimizer}; "
        f"mean over {int(stats.pairs.max())} pairs (band ± sd); dotted: barrier point "
        "(lowest accuracy, paths with a barrier >= 2 points)",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig


def _barrier_alpha(exact) -> float | None:
    """alpha* of a mean path when its accuracy barrier is at least :data:`CONNECTED`."""
    inner = exact[~exact.alpha.isin([0.0, 1.0])]
    if not len(inner):
        return None
    ends = exact[exact.alpha.isin([0.0, 1.0])].accuracy_mean.mean()
    worst = inner.loc[inner.accuracy_mean.idxmin()]
    return float(worst.alpha) if ends - worst.accuracy_mean >= CONNECTED else None


def report(args, optimizers, pairs_by_optimizer: dict, estimates, timer) -> None:
    """lmc.csv (every row), lmc_pairs.csv, per optimizer a figure CSV and PNG, summary.json."""
    import pandas as pd

    rows = pd.concat(
        [read_rows(args.out, o, pairs_by_optimizer[o], estimates) for o in optimizers],
        ignore_index=True,
    )
    C.write_csv(rows, args.out / "lmc.csv")
    pairs = pair_table(rows)
    C.write_csv(pairs, args.out / "lmc_pairs.csv")
    for optimizer in optimizers:
        name = "lmc" if optimizer == "sgd" else f"lmc_{optimizer}"
        csv = C.write_csv(
            figure_frame(rows[rows.optimizer == optimizer]), args.out / f"{name}_figure.csv"
        )
        draw(csv, args.out / f"{name}.png")
    summary = {"data": args.data, "connected_below": CONNECTED, "by_lr": by_lr(pairs)}
    summary["epochs"] = _epochs(args.out, optimizers)
    C.finish(args.out, "lmc", summary, timer)


def _epochs(out: Path, optimizers) -> dict:
    """Epochs each SGD run trained (its plateau), per lr: the list over runs."""
    epochs: dict = {}
    if "sgd" in optimizers:
        for log in sorted((out / "sgd" / "runs").glob("*.log.csv")):
            lr = log.name.split("_lr")[1].removesuffix(".log.csv")
            epochs.setdefault(f"sgd lr={lr}", []).append(len(C.read_csv(log)))
    return epochs
