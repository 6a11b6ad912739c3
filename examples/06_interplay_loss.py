"""MIR/HDR as loss terms: does ``InterplayLoss`` improve training? (paper, Tables 1-2)

The paper is taken to train with ``L = CE - lambda_mi * I(K_Z; K_W) + lambda_hdr * |H(K_Z) -
H(K_W)|`` on each mini-batch (the loss form is assumed; the paper's text was not available to
check). Supervised, it reports CIFAR-10 95.35 -> 95.57 and CIFAR-100 80.77 -> 80.96 (WRN-28-2 /
WRN-28-8); its main gains are semi-supervised, on a FreeMatch base. Here a timm ``test_resnet``
on MNIST-5k, each seed with the same initialisation and batch order in both arms (paired), in
two settings:

* ``supervised``: all 4000 training images, cross-entropy with and without the terms;
* ``semi``: ``--labels`` labelled images (balanced) and the other training images unlabelled,
  trained with confidence-thresholded pseudo-labelling (FixMatch's unlabelled loss without the
  augmentations: cross-entropy on the model's own predictions with confidence >= 0.95, weight
  1, ``--mu`` unlabelled per labelled sample), with and without the terms on the labelled
  batch.

The final checkpoints are measured with

    infoprobe analyze OUT/checkpoints/*.safetensors --data OUT/data/mnist/test.safetensors \
        --csv OUT/analyze_test.csv

    python examples/06_interplay_loss.py [--quick] [--out DIR] [--seeds 10] [--semi-seeds 5]
        [--lambda-mi 0.1] [--lambda-hdr 0.1]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from infoprobe import InterplayLoss  # noqa: E402

NAME = "06_interplay_loss"


def add_options(parser) -> None:
    parser.add_argument("--seeds", type=int, default=10, help="supervised seeds")
    parser.add_argument("--semi-seeds", type=int, default=5, help="semi-supervised seeds")
    parser.add_argument("--epochs", type=int, default=3, help="supervised epochs")
    parser.add_argument("--semi-steps", type=int, default=150)
    parser.add_argument("--labels", type=int, default=250, help="labelled images (semi)")
    parser.add_argument("--mu", type=int, default=2, help="unlabelled per labelled sample")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--lambda-mi", type=float, default=0.1)
    parser.add_argument("--lambda-hdr", type=float, default=0.1)
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")


def labelled_split(train: dict, n_labels: int, seed: int) -> tuple[dict, torch.Tensor]:
    """``n_labels`` training images, the same number per class, and the rest's inputs."""
    g = torch.Generator().manual_seed(1000 + seed)
    classes = int(train["y"].max()) + 1
    picked = torch.cat(
        [
            idx[torch.randperm(len(idx), generator=g)[: n_labels // classes]]
            for idx in (torch.nonzero(train["y"] == c).flatten() for c in range(classes))
        ]
    )
    rest = torch.ones(len(train["y"]), dtype=torch.bool)
    rest[picked] = False
    return {"x": train["x"][picked], "y": train["y"][picked]}, train["x"][rest]


def pseudo_label_term(unlabelled, batch: int, threshold: float, seed: int):
    """FixMatch's unlabelled loss without augmentation: CE on confident own predictions."""
    g = torch.Generator().manual_seed(2000 + seed)

    def term(model, features, logits, labels):
        x = unlabelled[torch.randint(len(unlabelled), (batch,), generator=g)]
        out = model(x)
        with torch.no_grad():
            confidence, target = out.detach().softmax(1).max(1)
        mask = (confidence >= threshold).float()
        return (F.cross_entropy(out, target, reduction="none") * mask).mean()

    return term


def train_arms(args, setting: str, seed: int, train: dict, ckpt_dir: Path, interplay) -> list:
    """Train both arms of one seed in one setting; return their run records."""
    quick = 3 if args.quick else None
    if setting == "supervised":
        data, semi = train, None
        config = C.TrainConfig(epochs=args.epochs, max_steps=quick)
    else:
        data, unlabelled = labelled_split(train, args.labels, seed)
        config = C.TrainConfig(
            epochs=10**6, batch_size=min(64, args.labels), max_steps=quick or args.semi_steps
        )
        semi = pseudo_label_term(unlabelled, args.mu * config.batch_size, args.threshold, seed)
    runs = []
    for arm in ("ce", "ce+interplay"):
        terms = [t for t in (semi, interplay if arm != "ce" else None) if t is not None]

        def extra(model, z, logits, y, terms=terms):
            return sum(t(model, z, logits, y) for t in terms)

        model = C.create_model(C.ARCH, seed=seed)
        C.train(model, data, config, order_seed=seed, extra_loss=extra if terms else None)
        total = config.total_steps(len(data["y"]))
        path = ckpt_dir / f"{setting}-{arm.replace('+', '_')}-seed{seed}.safetensors"
        C.save_checkpoint(
            model,
            path,
            arch=C.ARCH,
            num_classes=C.NUM_CLASSES,
            step=total,
            epoch=total / config.steps_per_epoch(len(data["y"])),
            seed=seed,
            loss=arm,
            setting=setting,
        )
        runs.append({"checkpoint": str(path), "setting": setting, "seed": seed, "arm": arm})
    return runs


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, _, test_path = C.DATASETS[args.data](args.out)
    criterion = InterplayLoss(lambda_mi=args.lambda_mi, lambda_hdr=args.lambda_hdr)

    def interplay_term(model, features, logits, labels):
        # the head's weight W [C, d], bias excluded; gradients reach features and head
        return criterion(features, labels, model.get_classifier().weight)

    ckpt_dir = C.fresh_checkpoint_dir(args.out)
    runs = []
    seeds = {
        "supervised": 2 if args.quick else args.seeds,
        "semi": 2 if args.quick else args.semi_seeds,
    }
    for setting, n in seeds.items():
        for seed in range(n):
            runs += train_arms(args, setting, seed, train, ckpt_dir, interplay_term)
            C.log(f"{setting} seed {seed} done ({timer})")

    csv = args.out / "analyze_test.csv"
    C.infoprobe(
        "analyze",
        *[r["checkpoint"] for r in runs],
        "--data",
        test_path,
        "--csv",
        csv,
        "--device",
        "cpu",
        *C.quick_samples(args.quick),
    )
    import pandas as pd

    rows = pd.DataFrame(runs).merge(C.read_csv(csv), on="checkpoint")
    rows.insert(4, "lambda_mi", [args.lambda_mi if a != "ce" else 0.0 for a in rows.arm])
    rows.insert(5, "lambda_hdr", [args.lambda_hdr if a != "ce" else 0.0 for a in rows.arm])
    C.write_csv(rows, args.out / "interplay_loss.csv")

    summary = {setting: summarise(frame) for setting, frame in rows.groupby("setting")}
    summary.update(
        data=args.data,
        epochs=args.epochs,
        semi_steps=args.semi_steps,
        labels=args.labels,
        mu=args.mu,
        threshold=args.threshold,
        lambda_mi=args.lambda_mi,
        lambda_hdr=args.lambda_hdr,
    )
    csv = C.write_csv(figure_frame(rows, args.data), args.out / "interplay_loss_figure.csv")
    shown = C.read_csv(csv)  # the figure's numbers, which the docs quote
    for setting, frame in shown.groupby("setting"):
        summary[setting]["paired_diff_shown"] = shown_diff(frame)
    draw(csv, args.out / "interplay_loss.png")
    C.finish(args.out, "interplay_loss", summary, timer)


def summarise(rows) -> dict:
    """Mean ± std per arm and the paired per-seed difference (in accuracy points)."""
    out = {"n_seeds": int(rows.seed.nunique()), "n_test": int(rows.n_samples.iloc[0])}
    for arm, frame in rows.groupby("arm"):
        for col in ("accuracy", "mir", "hdr"):
            m, s = C.mean_std(frame[col] * (100 if col == "accuracy" else 1))
            out[f"{arm}_{col}_mean"] = round(m, 4)
            out[f"{arm}_{col}_std"] = round(s, 4)
    diff = [100 * d for d in paired_diff(rows)]
    m, s = C.mean_std(diff)
    out["paired_diff_points_mean"] = round(m, 3)
    out["paired_diff_points_std"] = round(s, 3)
    out["paired_diff_points_sem"] = round(s / math.sqrt(len(diff)), 3)
    out["seeds_better_equal_worse"] = [
        sum(d > 1e-9 for d in diff),
        sum(abs(d) <= 1e-9 for d in diff),
        sum(d < -1e-9 for d in diff),
    ]
    out["one_test_sample_points"] = round(100 / out["n_test"], 3)
    out.update(significance(diff))
    return out


def significance(diff: list[float]) -> dict:
    """Two-sided paired t-test and sign test on the per-seed differences (needs scipy,
    which scikit-learn installs; left out without it)."""
    try:
        from scipy import stats
    except ImportError:
        return {}
    nonzero = [d for d in diff if abs(d) > 1e-9]
    out = {}
    if len(diff) > 1 and any(abs(d - diff[0]) > 1e-12 for d in diff):
        out["paired_t_pvalue"] = round(float(stats.ttest_1samp(diff, 0.0).pvalue), 4)
    if nonzero:
        better = sum(d > 0 for d in nonzero)
        out["sign_test_pvalue"] = round(float(stats.binomtest(better, len(nonzero)).pvalue), 4)
    return out


ARMS = ("ce", "ce+interplay")
FIGURE_COLUMNS = ["setting", "seed", "arm", "accuracy", "mir", "hdr"]


def figure_frame(rows, data: str):
    """The figure's data: every seed's test accuracy (in percent), MIR and HDR per setting
    and arm."""
    frame = rows[FIGURE_COLUMNS].copy()
    frame["accuracy"] = frame.accuracy * 100
    frame.insert(0, "data", data)
    return frame.round(5)


def paired_diff(frame, col: str = "accuracy") -> list[float]:
    """Per seed, the ``ce+interplay`` value minus the ``ce`` value."""
    wide = frame.pivot(index="seed", columns="arm", values=col)
    return (wide[ARMS[1]] - wide[ARMS[0]]).tolist()


def shown_diff(frame) -> str:
    """The paired accuracy difference as the figure and docs/results.md show it."""
    mean, sd = C.mean_std(paired_diff(frame))
    return f"{mean:+.2f} ± {sd:.2f} points"


def draw(csv: Path, png: Path):
    """Draw the interplay-loss figure from its CSV (:func:`figure_frame`): per setting the
    seeds (grey lines pair them) and mean ± sd per arm; returns the figure."""
    rows = C.read_csv(csv)
    settings = [s for s in ("supervised", "semi") if s in set(rows.setting)]
    fig, ax = C.figure(3, nrows=len(settings), width=3.2, height=2.6)
    titles = {"accuracy": "test accuracy (%)", "mir": "test MIR", "hdr": "test HDR"}
    for r, setting in enumerate(settings):
        sub = rows[rows.setting == setting]
        for a, col in zip(ax[3 * r : 3 * r + 3], titles, strict=True):
            _paired_panel(a, sub.pivot(index="seed", columns="arm", values=col))
            a.set_title(f"{setting}: {titles[col]}", fontsize=9)
        ax[3 * r].set_title(
            f"{setting}: test accuracy (%)\npaired diff {shown_diff(sub)}, "
            f"{sub.seed.nunique()} seeds",
            fontsize=9,
        )
    fig.suptitle(
        f"InterplayLoss on {rows.data.iloc[0]} (grey lines pair the seeds; black: mean ± sd)",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig


def _paired_panel(a, wide) -> None:
    for seed in wide.index:
        a.plot([0, 1], [wide.loc[seed, ARMS[0]], wide.loc[seed, ARMS[1]]], "-", c="lightgray",
               lw=0.8, zorder=1)  # fmt: skip
    for i, arm in enumerate(ARMS):
        a.scatter([i] * len(wide), wide[arm], s=10, zorder=2)
        sd = wide[arm].std() if len(wide) > 1 else 0
        a.errorbar([i + 0.15], [wide[arm].mean()], yerr=[sd], fmt="ks", ms=4, capsize=3, zorder=3)
    a.set_xticks([0, 1], ARMS)
    a.set_xlim(-0.4, 1.5)


if __name__ == "__main__":
    main()
