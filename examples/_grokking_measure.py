"""Measuring and judging the grokking runs of ``05_grokking.py``.

Every checkpoint of a seed is measured with ``infoprobe track`` on both splits under the exact
full-set entropies and the mini-batch estimate at B = 64, 256 and 1024. "Full batch"
(B = the split's size) is one batch holding the whole split: its entropies are those of the
whole set, which is the exact value. ``full`` rows are measured at step 0, the grokking step
and the last step of each seed: on the train split they check that equivalence; on the test
split, whose exact curve is taken on a subsample (:func:`measure`), they give the whole
split's exact value.

The criteria of the verdict were fixed before the runs (g: the grokking step):

* MIR "reaches its lowest after grokking": margin = min MIR over steps >= g minus min MIR
  over steps < g (every checkpoint from step 0). after: margin <= -0.01; before: margin >=
  +0.01; otherwise a tie.
* HDR "rapidly declines from its highest point" (after grokking): the run's HDR maximum lies
  in the grokking window [t20, 1.1 g] (t20: the first evaluated step with test accuracy >=
  20%) and HDR falls by at least 0.1 from that maximum by step 2 g.
"""

from __future__ import annotations

from pathlib import Path

import _common as C

MODEL_FILE = C.EXAMPLES / "grokking_model.py"
BATCHES = (64, 256, 1024)
ESTIMATORS = ("exact", *(f"B={b}" for b in BATCHES))
TIE = 0.01  # MIR margin below which "after" and "before" are a tie
HDR_DROP = 0.1  # HDR fall from its maximum that counts as a decline
ONSET = 0.2  # test accuracy that opens the grokking window


def model_args(model_kwargs: dict) -> list[object]:
    """The infoprobe arguments that build the custom model: every command takes them here.

    The architecture is passed explicitly (an absolute path, so any working directory
    works); its recorded arguments are passed with ``--model-kwargs`` because infoprobe does
    not take them from a checkpoint for a custom factory."""
    given = [a for k, v in model_kwargs.items() for a in ("--model-kwargs", f"{k}={v}")]
    return ["--arch", f"{MODEL_FILE}:factory", "--trust-code", *given]  # code outside timm


def _estimate_args(estimator: str, n: int | None = None) -> list[object]:
    if estimator == "exact":
        return ["--estimate", "exact"]
    size = n if estimator == "full" else int(estimator.removeprefix("B="))
    return ["--estimate", "batch", "--estimate-batch-size", size]


def _csv(out: Path, split: str, estimator: str) -> Path:
    return out / "track" / f"{split}_{estimator.replace('=', '')}.csv"


def measure(out: Path, paths: dict[str, Path], model_kwargs: dict) -> None:
    """``infoprobe track`` of ``out/checkpoints`` per split and estimator (resumable), and the
    full-batch rows at step 0, the grokking step and the last step.

    The exact value on the test split is an n x n eigen-solve (n = 8938 > d = 128 but < d C)
    that took 43 CPU seconds per checkpoint here, so it is computed on a seeded
    class-stratified subsample of the training split's size (``--max-samples``); the
    full-batch rows give the whole test split's exact value at the three checked steps."""
    (out / "track").mkdir(exist_ok=True)
    log = C.read_csv(out / "train_log.csv")
    ckpts = sorted((out / "checkpoints").glob("step*.safetensors"))
    grok = _first_step(log, "test_accuracy", 0.99)
    check = [c for c in ckpts if _step(c) in {0, grok, _step(ckpts[-1])}]  # grok may be None
    n_train = _size(paths["train"])
    for split, path in paths.items():
        n = _size(path)
        for estimator, targets in [(e, [out / "checkpoints"]) for e in ESTIMATORS] + [
            ("full", check)
        ]:
            subsample = (
                ["--max-samples", n_train] if (split, estimator) == ("test", "exact") else []
            )
            C.infoprobe(
                "track", *targets, *model_args(model_kwargs), "--data", path, *subsample,
                *_estimate_args(estimator, n), "--device", "cpu",
                "--csv", _csv(out, split, estimator), "--resume",
            )  # fmt: skip


def _size(path: Path) -> int:
    return int(C.load_tensors(path)["y"].numel())


def _step(path: Path) -> int:
    return int(path.stem.removeprefix("step"))


def _first_step(frame, column: str, threshold: float) -> int | None:
    hit = frame[frame[column] >= threshold]
    return int(hit["step"].iloc[0]) if len(hit) else None


def curves(root: Path, seeds: list[int]):
    """Every measured row of every seed: seed, split, estimator, step, g, step / g and the
    metrics (the data behind the figure)."""
    import pandas as pd

    frames = []
    for seed in seeds:
        out = root / f"seed{seed}"
        log = C.read_csv(out / "train_log.csv")
        grok = _first_step(log, "test_accuracy", 0.99)
        grokked = grok is not None  # else (short runs) steps are scaled by the last step
        grok = grok if grokked else int(log.step.max())
        for split in ("train", "test"):
            for estimator in (*ESTIMATORS, "full"):
                frame = C.read_csv(_csv(out, split, estimator))
                frame = frame.merge(
                    log[["step", "test_accuracy", "train_accuracy"]], on="step", how="left"
                )
                frame.insert(0, "seed", seed)
                frame.insert(1, "split", split)
                frame.insert(2, "estimator", estimator)
                frame.insert(3, "grok_step", grok)
                frame.insert(4, "grokked", grokked)
                frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    rows.insert(5, "step_over_g", rows.step / rows.grok_step)
    return rows.sort_values(["seed", "split", "estimator", "step"], ignore_index=True)


def judge(curve, log) -> dict:
    """The two criteria (module docstring) on one seed's curve of one split and estimator."""
    curve = curve.sort_values("step")
    grok = int(curve.grok_step.iloc[0])
    if not curve.grokked.iloc[0]:
        return {"grok_step": None, "mir_verdict": "not grokked", "hdr_verdict": "not grokked"}
    before, after = curve[curve.step < grok], curve[curve.step >= grok]
    margin = float(after.mir.min() - before.mir.min())
    onset = _first_step(log, "test_accuracy", ONSET)
    peak = curve.loc[curve.hdr.idxmax()]
    later = curve[(curve.step >= peak.step) & (curve.step <= 2 * grok)]
    drop = float(peak.hdr - later.hdr.min())
    in_window = onset is not None and onset <= peak.step <= 1.1 * grok
    return {
        "grok_step": grok,
        "onset_step": onset,
        "mir_min_before": round(float(before.mir.min()), 4),
        "mir_min_after": round(float(after.mir.min()), 4),
        "mir_min_step": int(curve.loc[curve.mir.idxmin()].step),
        "mir_margin": round(margin, 4),
        "mir_verdict": "after" if margin <= -TIE else "before" if margin >= TIE else "tie",
        "hdr_max": round(float(peak.hdr), 4),
        "hdr_max_step": int(peak.step),
        "hdr_drop_by_2g": round(drop, 4),
        "hdr_verdict": "agrees" if in_window and drop >= HDR_DROP else "disagrees",
    }


def verdicts(rows, root: Path, seeds: list[int]):
    """One row per seed, split and estimator (full batch excluded: it is the exact value)."""
    import pandas as pd

    out = []
    for seed in seeds:
        log = C.read_csv(root / f"seed{seed}" / "train_log.csv")
        sub = rows[(rows.seed == seed) & (rows.estimator != "full")]
        for (split, estimator), curve in sub.groupby(["split", "estimator"], sort=False):
            out.append({"seed": seed, "split": split, "estimator": estimator, **judge(curve, log)})
    return pd.DataFrame(out)


def full_batch_gaps(rows) -> dict:
    """Largest |MIR or HDR at B = n - exact| per split over the checked steps. On the train
    split both are the whole split's value (the equivalence); on the test split the exact row
    is the subsample's, so the gap is the subsample's deviation from the whole split."""
    full = rows[rows.estimator == "full"]
    exact = rows[rows.estimator == "exact"]
    both = full.merge(exact, on=["seed", "split", "step"], suffixes=("_full", "_exact"))
    out = {}
    for split, frame in both.groupby("split"):
        gaps = [(frame[f"{c}_full"] - frame[f"{c}_exact"]).abs().max() for c in ("mir", "hdr")]
        out[split] = {"max_abs_gap": float(max(gaps)), "steps_checked": len(frame)}
    return out


def summarise(judged) -> dict:
    """Per split and estimator: verdict counts and mean ± sd over seeds of the margins."""
    out = {}
    for (split, estimator), frame in judged.groupby(["split", "estimator"], sort=False):
        frame = frame[frame.mir_verdict != "not grokked"]
        if not len(frame):
            continue
        margin = C.mean_std(frame.mir_margin)
        drop = C.mean_std(frame.hdr_drop_by_2g)
        out[f"{split} {estimator}"] = {
            "seeds": len(frame),
            "mir_after/tie/before": [
                int((frame.mir_verdict == v).sum()) for v in ("after", "tie", "before")
            ],
            "mir_margin_mean": round(margin[0], 4),
            "mir_margin_sd": round(margin[1], 4),
            "hdr_agrees": int((frame.hdr_verdict == "agrees").sum()),
            "hdr_max_step_over_g": [
                round(s / g, 2) for s, g in zip(frame.hdr_max_step, frame.grok_step, strict=True)
            ],
            "hdr_drop_mean": round(drop[0], 4),
            "hdr_drop_sd": round(drop[1], 4),
        }
    return out


def report(root: Path, seeds: list[int], cfg, model_kwargs: dict, timer) -> None:
    """grokking.csv (every row), grokking_verdicts.csv, the figure CSV and PNG, summary.json."""
    rows = curves(root, seeds)
    C.write_csv(rows, root / "grokking.csv")
    judged = verdicts(rows, root, seeds)
    C.write_csv(judged, root / "grokking_verdicts.csv")
    figure_csv = C.write_csv(figure_frame(rows), root / "grokking_figure.csv")
    draw(figure_csv, root / "grokking.png")
    summary = {
        "seeds": seeds,
        "grok_steps": {int(s): g for s, g in judged.groupby("seed").grok_step.first().items()},
        "last_steps": {int(s): int(f.step.max()) for s, f in rows.groupby("seed")},
        "full_batch_minus_exact": full_batch_gaps(rows),
        "by_split_and_estimator": summarise(judged),
        "p": cfg.p,
        "model": model_kwargs,
    }
    C.finish(root, "grokking", summary, timer)


FIGURE_COLUMNS = ["seed", "split", "estimator", "step", "grok_step", "step_over_g", "accuracy"]
FIGURE_COLUMNS += ["mir", "hdr", "h_z", "h_w"]


def figure_frame(rows):
    """The figure's data: per seed, split, estimator (not the full-batch check) and step."""
    frame = rows[rows.estimator != "full"][FIGURE_COLUMNS]
    return frame.round({c: 5 for c in ("step_over_g", "accuracy", "mir", "hdr", "h_z", "h_w")})


def draw(csv: Path, png: Path):
    """Draw the grokking figure from its CSV (:func:`figure_frame`); returns the figure."""
    import matplotlib

    rows = C.read_csv(csv)
    fig, ax = C.figure(5, nrows=2, width=2.7, height=2.5)
    seeds = sorted(rows.seed.unique())
    colour = {s: matplotlib.colormaps["tab10"](i) for i, s in enumerate(seeds)}
    style = {"train": "-", "test": "--"}
    exact = rows[rows.estimator == "exact"]
    for (seed, split), c in exact.groupby(["seed", "split"]):
        kw = {"c": colour[seed], "ls": style[split], "lw": 1}
        ax[0].plot(c.step_over_g, c.accuracy, label=f"seed {seed}, {split}", **kw)
        ax[5].plot(c.step_over_g, c.h_z, **kw)
        if split == "train":
            ax[5].plot(c.step_over_g, c.h_w, c=colour[seed], ls=":", lw=1)
    for col, estimator in enumerate(ESTIMATORS, start=1):
        sub = rows[rows.estimator == estimator]
        for (seed, split), c in sub.groupby(["seed", "split"]):
            kw = {"c": colour[seed], "ls": style[split], "lw": 1}
            ax[col].plot(c.step_over_g, c.mir, **kw)
            ax[5 + col].plot(c.step_over_g, c.hdr, **kw)
        ax[col].set_title(f"MIR, {estimator}", fontsize=9)
        ax[5 + col].set_title(f"HDR, {estimator}", fontsize=9)
    ax[0].set_title("accuracy", fontsize=9)
    ax[5].set_title("H(Z) (train -, test --), H(W) (:), exact", fontsize=8)
    for a in ax:
        a.axvline(1.0, c="gray", ls="--", lw=0.8)
        a.set_xlabel("step / grokking step", fontsize=8)
    ax[0].legend(fontsize=6)
    fig.suptitle(
        f"grokking, (a+b) mod 113, {len(seeds)} seeds (colour); solid: train split, dashed: "
        "test split; grey line: test accuracy first >= 99%",
        fontsize=9,
    )
    C.save_figure(fig, png)
    return fig
