"""The examples under each command's help (real fixture paths: they run as shown)."""

_DIGITS = "--data fixtures/digits/test.safetensors"
_A = "fixtures/lmc/same_init_a.safetensors"
_B = "fixtures/lmc/same_init_b.safetensors"


def _examples(*commands: str) -> str:
    """The epilog of a command's help: one example per paragraph."""
    return "**Examples**\n\n" + "\n\n".join(f"    $ {c}" for c in commands)


ANALYZE = _examples(
    f"infoprobe analyze {_A} {_DIGITS}",
    f"infoprobe analyze fixtures/label_smoothing/*.safetensors {_DIGITS} --csv ls.csv",
    "infoprobe analyze model.pth --arch resnet18 --num-classes 10 --data cifar/ --per-class",
    "infoprobe analyze features.safetensors --json -",
    f"infoprobe analyze fixtures/label_smoothing/ls0.0.safetensors {_DIGITS} --layers stages "
    "--plot layers.png",
)
TRACK = _examples(
    f"infoprobe track fixtures/series {_DIGITS} --plot series.png",
    "infoprobe track run/ep*.pth --arch resnet18 --data val/ --csv dynamics.csv",
    f"infoprobe track fixtures/series {_DIGITS} --layers stages --plot layers.png",
)
LMC = _examples(
    f"infoprobe lmc {_A} {_B} {_DIGITS} --steps 5",
    "infoprobe lmc a.pth b.pth --data val/ --alphas 0 0.25 0.5 0.75 1 --reset-bn "
    "--bn-data train/ --bn-batches 20 --csv lmc.csv --resume --plot lmc.png",
)
PRUNE = _examples(
    f"infoprobe prune {_A} {_DIGITS} --ratios 0 0.5 0.9 --method layer-magnitude "
    "--finetune-data fixtures/digits/train.safetensors --finetune-epochs 2",
    "infoprobe prune model.pth --data val/ --ratios 0,0.3,0.6,0.9 --csv prune.csv --resume "
    "--plot prune.png",
)
PLOT = _examples(
    "infoprobe plot prune.csv --out prune.png",
    "infoprobe plot dynamics.csv",
)
