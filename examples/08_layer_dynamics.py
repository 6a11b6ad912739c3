"""Layer-wise dynamics: where in the network does MIR rise first during training?

Beyond the paper, which measures the penultimate features only. A timm ``test_resnet`` is
trained on MNIST-5k (4000 train / 1000 test real 28x28 digits, ``fixtures/mnist``) with
AdamW and a one-cycle schedule, once per seed; checkpoints are saved at log-spaced steps.
Every checkpoint is measured on the test split at each stage of the network in one forward
pass: timm's ``forward_intermediates`` taps (``act1``, ``layer1`` ... ``layer4``) averaged
over H x W as the head averages, and the head's input ``pre_logits``. Per layer and step:
MIR and HDR between the layer's features and the classifier head (the head's K_W depends
only on the labels and the head, so it is defined for any layer), and the label information
``mi_y = I(K_Z; K_Y)`` with ``h_z`` (the information plane), all from

    infoprobe track OUT/seedK/checkpoints --data OUT/data/mnist/test.safetensors \
        --layers stages --csv OUT/seedK/track_layers.csv

"Where MIR rises first": for each seed and layer, the training step at which the layer's MIR
has covered half of its rise from initialisation to the end of training (``t_half``,
interpolated linearly between checkpoints; layers whose MIR rises by less than 0.02 have
none), compared across layers, with the mean and standard deviation over seeds.

    python examples/08_layer_dynamics.py [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "08_layer_dynamics"
EPOCHS = 8
#: A layer whose MIR rises by less than this has no half-rise step.
MIN_RISE = 0.02


def add_options(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="training runs (seeds 0..K-1)")
    parser.add_argument("--checkpoints", type=int, default=32, help="about this many, log-spaced")


def train_run(args, seed: int, train, config) -> Path:
    """Train one seed, saving checkpoints into the folder it returns."""
    spe = config.steps_per_epoch(len(train["y"]))
    total = config.total_steps(len(train["y"]))
    save_at = set(C.log_spaced_steps(total, 4 if args.quick else args.checkpoints))
    ckpt_dir = C.fresh_checkpoint_dir(args.out / f"seed{seed}")

    def on_step(step, model):
        if step in save_at:
            path = ckpt_dir / f"step{step:04d}.safetensors"
            C.save_checkpoint(
                model, path, arch=C.ARCH, num_classes=C.NUM_CLASSES, step=step, epoch=step / spe
            )

    model = C.create_model(C.ARCH, seed=seed)
    C.train(model, train, config, order_seed=seed, on_step=on_step)
    return ckpt_dir


def measure(ckpt_dir: Path, test_path: Path, quick: bool):
    """One row per checkpoint and layer: ``infoprobe track DIR --layers stages``."""
    return C.track_frame(
        ckpt_dir.parent / "track_layers.csv",
        ckpt_dir,
        "--data",
        test_path,
        "--layers",
        "stages",
        "--device",
        "cpu",
        *C.quick_samples(quick),
    )


def half_rise_step(steps, values) -> float:
    """The step at which ``values`` first cover half of their rise from the first to the
    last, interpolated linearly between steps; NaN for a rise under :data:`MIN_RISE`."""
    rise = values[-1] - values[0]
    if rise < MIN_RISE:
        return math.nan
    goal = values[0] + rise / 2
    for (s0, v0), (s1, v1) in zip(
        zip(steps, values, strict=True), zip(steps[1:], values[1:], strict=True), strict=False
    ):
        if v1 >= goal:
            return s0 + (s1 - s0) * (goal - v0) / (v1 - v0) if v1 != v0 else s1
    return math.nan


def summarise(rows, layers: list[str]) -> dict:
    """Per layer over seeds: MIR at the start and end, ``t_half`` (mean, sd, per seed),
    ``mi_y`` and ``h_z`` at the end; per seed, over the taps (not ``pre_logits``, which may
    be the last tap itself): the layer that reaches its half rise first and the Spearman
    correlation of depth with ``t_half`` (1: strictly bottom-up)."""
    out: dict = {"layers": layers, "mir_nc": float(rows.mir_nc.iloc[0]), "per_layer": {}}
    import pandas as pd

    first, spearman = {}, {}
    accuracy_half = []
    for seed, frame in rows.groupby("seed"):
        frame = frame.sort_values("step")
        head = frame[frame.layer == "pre_logits"]
        accuracy_half.append(half_rise_step(list(head.step), list(head.accuracy)))
        halves = {
            layer: half_rise_step(
                list(frame[frame.layer == layer].step), list(frame[frame.layer == layer].mir)
            )
            for layer in layers
        }
        taps = {k: v for k, v in halves.items() if k != "pre_logits" and not math.isnan(v)}
        first[int(seed)] = min(taps, key=taps.get) if taps else None
        depth = [layers.index(k) for k in taps]
        spearman[int(seed)] = (
            round(float(pd.Series(depth).corr(pd.Series(list(taps.values())), "spearman")), 3)
            if len(taps) > 2
            else None
        )
        for layer, t in halves.items():
            out["per_layer"].setdefault(layer, {"t_half": []})["t_half"].append(t)
    for layer in layers:
        at = rows[rows.layer == layer]
        start = at[at.step == at.step.min()]
        end = at[at.step == at.step.max()]
        entry = out["per_layer"][layer]
        entry["t_half"] = [None if math.isnan(t) else round(t, 1) for t in entry["t_half"]]
        done = [t for t in entry["t_half"] if t is not None]
        entry["t_half_mean"], entry["t_half_sd"] = (
            [round(v, 1) for v in C.mean_std(done)] if done else (None, None)
        )
        for name, frame in (("start", start), ("end", end)):
            entry[f"mir_{name}_mean"], entry[f"mir_{name}_sd"] = (
                round(v, 4) for v in C.mean_std(frame.mir)
            )
        entry["mi_y_end_mean"], entry["mi_y_end_sd"] = (round(v, 4) for v in C.mean_std(end.mi_y))
        entry["h_z_end_mean"], entry["h_z_end_sd"] = (round(v, 4) for v in C.mean_std(end.h_z))
    out["first_to_half_rise_by_seed"] = first
    out["spearman_depth_t_half_by_seed"] = spearman
    out["accuracy_t_half"] = [round(t, 1) for t in accuracy_half]
    return out


def plot(rows, summary: dict, path: Path) -> None:
    """MIR against step per layer (mean and range over seeds), t_half per layer (seeds as
    dots), and the information plane of seed 0."""
    import matplotlib

    layers = summary["layers"]
    colours = matplotlib.colormaps["viridis"]
    fig, ax = C.figure(3, width=3.9, height=3.2)
    for k, layer in enumerate(layers):
        colour = colours(k / max(len(layers) - 1, 1))
        by_step = rows[rows.layer == layer].groupby("step").mir
        mean, low, high = by_step.mean(), by_step.min(), by_step.max()
        x = mean.index.to_numpy().clip(min=mean.index[mean.index > 0].min() / 2)
        style = "--" if layer == "pre_logits" else "-"  # may be the last tap itself
        ax[0].plot(x, mean.values, "o" + style, ms=2.5, color=colour, label=layer)
        ax[0].fill_between(x, low.values, high.values, color=colour, alpha=0.15)
        halves = summary["per_layer"][layer]["t_half"]
        ax[1].plot([t for t in halves if t is not None], [k] * sum(t is not None for t in halves),
                   "o", mfc="none", color=colour)  # fmt: skip
        if summary["per_layer"][layer]["t_half_mean"] is not None:
            ax[1].plot(summary["per_layer"][layer]["t_half_mean"], k, "|", ms=14, color=colour)
        path_rows = rows[(rows.layer == layer) & (rows.seed == rows.seed.min())].sort_values("step")
        ax[2].plot(path_rows.h_z, path_rows.mi_y, "." + style, ms=3, color=colour, label=layer)
        ax[2].plot(path_rows.h_z.iloc[-1:], path_rows.mi_y.iloc[-1:], "o", color=colour)
    C.nc_line(ax[0], C.NUM_CLASSES)
    ax[0].set(xscale="log", xlabel="training step", ylabel="MIR (layer vs head)")
    ax[0].set_title("MIR by layer (mean, seed range)", fontsize="medium")
    ax[0].legend(fontsize="x-small", ncol=2)
    acc = [t for t in summary["accuracy_t_half"] if not math.isnan(t)]
    if acc:
        ax[1].axvspan(min(acc), max(acc), color="gray", alpha=0.2, label="accuracy half rise")
        ax[1].legend(fontsize="x-small", loc="lower right")
    ax[1].set_yticks(range(len(layers)), layers)
    ax[1].set(xlabel="step of half the MIR rise", xscale="log")
    ax[1].set_title("t_half (dots: seeds, bar: mean)", fontsize="medium")
    ax[2].set(xlabel="h_z = H(K_Z), nats", ylabel="mi_y = I(K_Z; K_Y), nats")
    ax[2].set_title("information plane, seed 0 (dot: end)", fontsize="medium")
    for axis in ax:
        axis.grid(alpha=0.3)
    C.save_figure(fig, path)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    import pandas as pd

    from infoprobe.report.layer_plots import plot_layer_track

    train, _test, _train_path, test_path = C.mnist(args.out)
    config = C.TrainConfig(epochs=EPOCHS, max_steps=12 if args.quick else None)
    seeds = range(2 if args.quick else args.seeds)
    frames = []
    for seed in seeds:
        frame = measure(train_run(args, seed, train, config), test_path, args.quick)
        frame.insert(0, "seed", seed)
        frames.append(frame)
        steps, layers = frame.step.nunique(), frame.layer.nunique()
        C.log(f"seed {seed}: {steps} checkpoints x {layers} layers measured ({timer})")
    rows = pd.concat(frames, ignore_index=True)
    C.write_csv(rows, args.out / "layer_dynamics.csv")
    layers = list(dict.fromkeys(rows.layer))
    summary = summarise(rows, layers)
    summary.update(seeds=len(seeds), epochs=EPOCHS, n_test=int(rows.n_samples.iloc[0]))
    plot(rows, summary, args.out / "layer_dynamics.png")
    seed0 = rows[rows.seed == 0].to_dict("records")
    plot_layer_track(seed0, args.out / "layer_track_seed0.png", "test_resnet on MNIST-5k, seed 0")
    C.finish(args.out, "layer_dynamics", summary, timer)


if __name__ == "__main__":
    main()
