"""Live dynamics: MIR, HDR and NC1-NC4 in TensorBoard while Lightning trains (paper, Figs. 1-2).

A timm ``test_resnet`` trains on MNIST-5k (4000 train / 1000 test real 28x28 images,
``fixtures/mnist``) with Lightning. An ``InterplayCallback`` measures a fixed probe set (500
test images, a seeded class-stratified subsample) before training, every 20 optimizer steps
and at the end of every epoch, and logs ``interplay/mir``, ``interplay/hdr``, ... to a
TensorBoardLogger and a CSVLogger, beside the run's own training loss; a checkpoint is saved
at each of those moments. Afterwards the same
checkpoints go through

    infoprobe track OUT/checkpoints --data OUT/data/mnist/test.safetensors --max-samples 500 \\
        --csv OUT/track.csv --tensorboard OUT/tb/track

and the example checks that the curve TensorBoard holds from the live run equals track's to
1e-6 (TensorBoard stores float32). The figure is drawn from the event files themselves
(TensorBoard's EventAccumulator), the live curves as lines and track's as markers: the
picture TensorBoard would show.

    python examples/07_live_dynamics.py [--quick] [--out DIR]
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "07_live_dynamics"
EPOCHS = 10
EVERY_N_STEPS = 20
PROBE = 500
#: The logged values the check compares with track (every scalar of an exact row).
CHECKED = ("accuracy", "h_z", "h_w", "h_zw", "mi", "mir", "hdr", "nc1", "nc2_equinorm")
CHECKED += ("nc2_equiangular", "nc3", "nc4")
TOLERANCE = 1e-6


def add_options(parser) -> None:
    parser.add_argument("--seed", type=int, default=0)


def classifier(seed: int, total_steps: int):
    """A LightningModule around the timm model: AdamW with a one-cycle schedule (the
    fixtures' recipe, :class:`_common.TrainConfig`), the training loss logged per step."""
    import lightning.pytorch as L
    import torch
    import torch.nn.functional as F

    config = C.TrainConfig()

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = C.create_model(C.ARCH, seed=seed)

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            loss = F.cross_entropy(self(batch[0]), batch[1])
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(
                self.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=config.lr, total_steps=max(total_steps, 2), pct_start=0.15
            )
            return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    return Classifier()


def train(args, train_data, test_path: Path, ckpt_dir: Path):
    """Train with the callback and the loggers; a checkpoint at every measurement."""
    import lightning.pytorch as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from infoprobe.integrations.lightning import InterplayCallback

    every = 2 if args.quick else EVERY_N_STEPS
    live = InterplayCallback(
        str(test_path), every_n_epochs=1, every_n_train_steps=every, max_samples=args.probe
    )

    class SaveCheckpoints(L.Callback):
        """After the callback in each hook: the weights it has just measured, once."""

        def __init__(self) -> None:
            self.saved: set[int] = set()

        def save(self, trainer, pl_module) -> None:
            step = trainer.global_step
            if live.rows and live.rows[-1]["step"] == step and step not in self.saved:
                self.saved.add(step)
                C.save_checkpoint(
                    pl_module.model,
                    ckpt_dir / f"step{step:05d}.safetensors",
                    arch=C.ARCH,
                    num_classes=C.NUM_CLASSES,
                    step=step,
                    epoch=live.rows[-1]["epoch"],
                )

        def on_train_start(self, trainer, pl_module) -> None:
            self.save(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.save(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.save(trainer, pl_module)

    batches = 3 if args.quick else None
    epochs = 2 if args.quick else EPOCHS
    loader = DataLoader(
        TensorDataset(train_data["x"], train_data["y"]), batch_size=64, shuffle=True, drop_last=True
    )
    L.seed_everything(args.seed, verbose=False)
    loggers = [
        TensorBoardLogger(args.out, name="tb", version="live"),
        CSVLogger(args.out, name="csv", version="live"),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches,
        callbacks=[live, SaveCheckpoints()],
        logger=loggers,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(classifier(args.seed, epochs * (batches or len(loader))), loader)
    return live.rows, loggers[0].log_dir


def scalars_of(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalars in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {t: {e.step: e.value for e in events.Scalars(t)} for t in events.Tags()["scalars"]}


def check(live: dict, tracked) -> dict:
    """The largest |TensorBoard (live) - track CSV| per column; raise past TOLERANCE."""
    gaps = {}
    for column in CHECKED:
        logged = live[f"interplay/{column}"]
        want = dict(zip(tracked["step"], tracked[column], strict=True))
        if sorted(logged) != sorted(want):
            raise RuntimeError(
                f"{column}: logged at steps {sorted(logged)}, tracked {sorted(want)}"
            )
        gaps[column] = max(abs(logged[s] - want[s]) for s in want)
    worst = max(gaps, key=gaps.get)
    if gaps[worst] > TOLERANCE:
        raise RuntimeError(f"live {worst} differs from infoprobe track by {gaps[worst]:.2e}")
    return gaps


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    args.probe = 200 if args.quick else PROBE
    C.setup()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    timer = C.Timer()
    import pandas as pd

    train_data, _, _, test_path = C.mnist(args.out)
    for logs in ("tb", "csv"):  # this run's curves only
        shutil.rmtree(args.out / logs, ignore_errors=True)
    ckpt_dir = C.fresh_checkpoint_dir(args.out)
    rows, live_dir = train(args, train_data, test_path, ckpt_dir)
    C.log(f"trained with the callback: {len(rows)} measurements ({timer})")
    track_dir = args.out / "tb" / "track"
    tracked = C.track_frame(
        args.out / "track.csv",
        ckpt_dir,
        "--data",
        test_path,
        "--max-samples",
        args.probe,
        "--device",
        "cpu",
        "--tensorboard",
        track_dir,
    )
    live, posthoc = scalars_of(Path(live_dir)), scalars_of(track_dir)
    gaps = check(live, tracked)
    C.log(f"live TensorBoard curves equal infoprobe track: max gap {max(gaps.values()):.1e}")
    frame = pd.concat(
        [pd.DataFrame(rows).assign(source="live"), tracked.assign(source="track")],
        ignore_index=True,
    )
    C.write_csv(frame, args.out / "live_dynamics.csv")
    plot(live, posthoc, args.out / "live_dynamics.png")
    last = rows[-1]
    summary = {
        "probe_samples": args.probe,
        "measurements": len(rows),
        "max_gap_tensorboard_vs_track": {k: float(f"{v:.3g}") for k, v in gaps.items()},
        **{f"{k}_end": round(float(last[k]), 4) for k in ("accuracy", "mir", "hdr", "nc1")},
        "mir_nc": round(float(last["mir_nc"]), 4),
    }
    C.finish(args.out, "live_dynamics", summary, timer)


def plot(live: dict, posthoc: dict, path: Path) -> None:
    fig, ax = C.figure(4, width=3.0, height=2.6)
    panels = (("accuracy", "probe accuracy"), ("mir", "MIR"), ("hdr", "HDR"), ("nc1", "NC1"))
    for axis, (column, title) in zip(ax, panels, strict=True):
        tag = f"interplay/{column}"
        steps = sorted(live[tag])
        axis.plot(steps, [live[tag][s] for s in steps], "-", c="tab:blue", label="live (callback)")
        done = sorted(posthoc[tag])
        axis.plot(done, [posthoc[tag][s] for s in done], "x", c="tab:red", label="infoprobe track")
        axis.set_title(f"{title} ({tag})", fontsize=9)
        axis.set_xlabel("step (symlog)")
        axis.set_xscale("symlog", linthresh=20)
        if column == "nc1":
            axis.set_yscale("log")
    C.nc_line(ax[1], C.NUM_CLASSES)
    ax[1].legend(fontsize=7)
    fig.suptitle(
        f"test_resnet on MNIST-5k, {len(live['interplay/mir'])} measurements: drawn from the "
        "TensorBoard event files (EventAccumulator)",
        fontsize=9,
    )
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
