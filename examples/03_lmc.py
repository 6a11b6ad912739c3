"""Linear mode connectivity seen through MIR and HDR (paper §5.3, Figs. 3-4).

The paper's protocol: two runs from the same initialisation that differ only in the SGD noise
(batch order), interpolated, theta(alpha) = (1 - alpha) theta_A + alpha theta_B, at several
learning rates. On CIFAR-10 at lr 0.03 the path is not connected (accuracy near chance for
alpha in 0.4-0.6) and there "MIR shows an additional upward trend"; at 3e-3 and 3e-4 the path
is connected. Here a timm ``test_resnet`` on MNIST-5k, same-initialisation pairs (init seed
k, batch orders 0 and 1; ``--pairs`` seeds k), under two optimizers:

* ``sgd`` (the paper's, assumed; its text was not available to check): SGD momentum 0.9,
  batch 64, weight decay 5e-4, constant lr in {3e-2, 3e-3, 3e-4}, each run trained until its
  test accuracy plateaus (``_plateau.py``: the best accuracy gains <= 0.2 points over 10
  epochs; at most 150 epochs);
* ``adamw`` (a second optimizer): AdamW with a one-cycle schedule, 4 epochs, lr in {3e-2,
  1e-2, 3e-3, 3e-4}, plus a different-initialisation pair at 3e-3 and BatchNorm resets
  (``--reset-bn --bn-data OUT/data/mnist/train.safetensors``, REPAIR's "BN reset").

Every pair is measured along the path on both splits, with the exact entropies and the
mini-batch estimate at B = 256:

    infoprobe lmc OUT/sgd/checkpoints/init0_order0_lr0.03.safetensors \
        OUT/sgd/checkpoints/init0_order1_lr0.03.safetensors \
        --data OUT/data/mnist/test.safetensors --steps 11 \
        [--estimate batch --estimate-batch-size 256] --csv OUT/sgd/lmc/...csv

    python examples/03_lmc.py [--quick] [--out DIR] [--optimizer sgd|adamw|both]
        [--stage all|train|measure|report]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _plateau as P  # noqa: E402

NAME = "03_lmc"
LRS = {"sgd": (3e-2, 3e-3, 3e-4), "adamw": (3e-2, 1e-2, 3e-3, 3e-4)}
ADAMW_EPOCHS = 4
OTHER_INIT_LR = 3e-3  # the AdamW different-initialisation pair
#: estimator name -> infoprobe arguments
BATCH = 256
ESTIMATES = {
    "exact": ["--estimate", "exact"],
    "batch256": ["--estimate", "batch", "--estimate-batch-size", BATCH],
}
STAGES = ("all", "train", "measure", "report")


def add_options(parser) -> None:
    parser.add_argument("--optimizer", choices=("sgd", "adamw", "both"), default="both")
    parser.add_argument("--stage", choices=STAGES, default="all")
    parser.add_argument("--steps", type=int, default=11, help="alphas from 0 to 1")
    parser.add_argument("--data", choices=sorted(C.DATASETS), default="mnist")
    parser.add_argument("--pairs", type=int, default=3, help="same-init pairs per lr")


def pairs_of(optimizer: str, n_pairs: int, quick: bool) -> dict[str, tuple]:
    """pair label -> ((init, order) of A, (init, order) of B, lr, BN resets to run)."""
    lrs = LRS[optimizer][:1] if quick else LRS[optimizer]
    top = max(lrs)
    pairs = {
        f"same_init{k}_lr{lr:g}": (
            (k, 0),
            (k, 1),
            lr,
            (False, True) if (k, lr) == (0, top) and optimizer == "adamw" else (False,),
        )
        for lr in lrs
        for k in range(1 if quick else n_pairs)
    }
    if optimizer == "adamw":
        pairs[f"different_init_lr{OTHER_INIT_LR:g}"] = (
            (0, 0),
            (1, 1),
            OTHER_INIT_LR,
            (False, True),
        )
    return pairs


def _train_one(args, optimizer: str, key: tuple, train, test, path: Path) -> None:
    init_seed, order_seed, lr = key
    model = C.create_model(C.ARCH, seed=init_seed)
    n = len(train["y"])
    if optimizer == "sgd":
        cfg = P.PlateauConfig(lr=lr)
        history = P.train_to_plateau(
            model,
            train,
            test,
            cfg,
            order_seed=order_seed,
            state_path=_run_file(path, ".state.pt"),
            max_epochs=1 if args.quick else None,
        )
        epochs, detail = len(history), cfg.describe()
        C.write_csv(_frame(history), _run_file(path, ".log.csv"))
    else:
        config = C.TrainConfig(epochs=ADAMW_EPOCHS, lr=lr, max_steps=3 if args.quick else None)
        C.train(model, train, config, order_seed=order_seed)
        epochs = config.total_steps(n) / config.steps_per_epoch(n)
        detail = f"AdamW(lr={lr:g}, weight_decay={config.weight_decay}), one-cycle, batch 64"
    C.save_checkpoint(
        model,
        path,
        arch=C.ARCH,
        num_classes=C.NUM_CLASSES,
        epoch=epochs,
        step=round(epochs * (n // 64)),
        init_seed=init_seed,
        order_seed=order_seed,
        lr=lr,
        optimizer=detail,
    )
    C.log(
        f"{optimizer} init {init_seed} order {order_seed} lr {lr:g}: {epochs:g} epochs, "
        f"test accuracy {C.accuracy(model, test):.4f}"
    )


def _frame(history):
    import pandas as pd

    return pd.DataFrame(history)


def _run_file(checkpoint: Path, suffix: str) -> Path:
    """A run's training state or epoch log, in ``runs/`` beside ``checkpoints/``."""
    return checkpoint.parent.parent / "runs" / f"{checkpoint.stem}{suffix}"


def checkpoint_path(out: Path, key: tuple) -> Path:
    init_seed, order_seed, lr = key
    return out / "checkpoints" / f"init{init_seed}_order{order_seed}_lr{lr:g}.safetensors"


def train_runs(args, optimizer: str, pairs: dict, train, test) -> None:
    """One checkpoint per distinct (init, order, lr); finished ones are kept."""
    out = args.out / optimizer
    for a, b, lr, _ in pairs.values():
        for key in ((*a, lr), (*b, lr)):
            path = checkpoint_path(out, key)
            if not path.is_file():
                _train_one(args, optimizer, key, train, test, path)


def measure(args, optimizer: str, pairs: dict, paths: dict[str, Path]) -> None:
    """``infoprobe lmc`` per pair, split, estimator and BN reset; one CSV each (resumable)."""
    out = args.out / optimizer
    for pair, (a, b, lr, resets) in pairs.items():
        for split, data in paths.items():
            for name, estimate in ESTIMATES.items():
                for reset in resets:
                    if reset and (split, name) != ("test", "exact"):
                        continue  # BN reset: test split, exact only
                    label = f"{pair}{'+bn_reset' if reset else ''}_{split}_{name}"
                    reset_args = ["--reset-bn", "--bn-data", paths["train"]] if reset else []
                    C.infoprobe(
                        "lmc",
                        checkpoint_path(out, (*a, lr)),
                        checkpoint_path(out, (*b, lr)),
                        "--data",
                        data,
                        "--steps",
                        3 if args.quick else args.steps,
                        *estimate,
                        *reset_args,
                        "--device",
                        "cpu",
                        *C.quick_samples(args.quick),
                        "--csv",
                        out / "lmc" / f"{label}.csv",
                        "--resume",
                    )


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    train, test, train_path, test_path = C.DATASETS[args.data](args.out)
    if args.quick:  # a few SGD steps per epoch
        train = {k: v[:256] for k, v in train.items()}
    optimizers = ("sgd", "adamw") if args.optimizer == "both" else (args.optimizer,)
    for optimizer in optimizers:
        pairs = pairs_of(optimizer, args.pairs, args.quick)
        if args.stage in ("all", "train"):
            train_runs(args, optimizer, pairs, train, test)
        if args.stage in ("all", "measure"):
            (args.out / optimizer / "lmc").mkdir(parents=True, exist_ok=True)
            measure(args, optimizer, pairs, {"train": train_path, "test": test_path})
    if args.stage in ("all", "report"):
        import _lmc_report as R

        pairs = {o: pairs_of(o, args.pairs, args.quick) for o in optimizers}
        R.report(args, optimizers, pairs, ESTIMATES, timer)


if __name__ == "__main__":
    main()
