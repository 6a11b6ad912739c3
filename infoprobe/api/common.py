"""What every command does before and around its measurements: check the options and the
paths, read the checkpoints and the data, evaluate one checkpoint, build the frame."""

from __future__ import annotations

import filecmp
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from infoprobe import checkpoints as ckpts
from infoprobe import data as datasets
from infoprobe import distributed, features_file, parsing, probe, versions
from infoprobe.defaults import DEFAULT_BATCH_SIZE, PROBES
from infoprobe.errors import InfoprobeError, InputError
from infoprobe.evaluation import Evaluation
from infoprobe.options import RunOptions
from infoprobe.report.files import rows_frame
from infoprobe.rows import MeasureOptions, error_row
from infoprobe.schema import COLUMNS, LAYER_COLUMNS, SWEEP_COLUMNS

Log = Callable[[str], None]
OnRow = Callable[[dict], None]

#: Options that load or build a model, which a features file does not need.
_MODEL_OPTIONS = (
    "arch",
    "num_classes",
    "in_chans",
    "model_kwargs",
    "ema",
    "strip_prefix",
    "head",
    "amp",
    "amp_dtype",
    "channels_last",
)
#: Options of the evaluation transform of image folders.
_IMAGE_OPTIONS = ("input_size", "crop_pct", "interpolation")


def columns(command: str, layers: bool = False) -> tuple[str, ...]:
    """The columns of ``command``'s rows, in order (``layers``: one row per layer)."""
    return SWEEP_COLUMNS[command] + (LAYER_COLUMNS if layers else COLUMNS)


def records(frame: pd.DataFrame) -> list[dict]:
    """A frame's rows as dicts of Python values (missing integers become None)."""
    return frame.to_dict("records")


def say(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


def prepared(command: str, options: Mapping[str, Any]) -> RunOptions:
    """``command``'s options checked (each, and across each other) and :func:`settled`;
    first, the installed torch and timm are checked against their safe floors."""
    versions.check_dependencies()
    opts = RunOptions.of(command, options)
    check_options(command, opts)
    return settled(opts)


def check_options(command: str, opts: RunOptions) -> None:
    """Every check across options that needs no model or data (InputError, before work)."""
    probe.resolve_device(opts.device)
    if opts.arch and ckpts.is_custom_arch(opts.arch) and not opts.trust_code:
        raise ckpts.code_refusal(opts.arch)
    if opts.csv == "-" and opts.json_out == "-":
        raise InputError("--csv - and --json - both write to stdout; send one to a file")
    if opts.resume and opts.csv in (None, "-"):
        raise InputError("--resume continues the rows in --csv FILE; give --csv FILE")
    _only_with(opts, "amp_dtype", opts.amp, "--amp")
    _only_with(opts, "estimate_batch_size", opts.estimate == "batch", "--estimate batch")
    _only_with(opts, "probes", opts.estimate in ("auto", "slq"), "--estimate auto or slq")
    _only_with(
        opts, "max_exact_dim", opts.estimate in ("auto", "exact"), "--estimate auto or exact"
    )
    if opts.plot is not None:
        from infoprobe.report.plots import check_plot_path

        check_plot_path(opts.plot)
    if opts.tensorboard is not None:
        from infoprobe.integrations.tensorboard import check_log_dir

        check_log_dir(opts.tensorboard)
    if command == "lmc":
        _check_lmc(opts)
    if command == "prune":
        _check_prune(opts)


def _check_lmc(opts: RunOptions) -> None:
    if opts.steps is not None and opts.alphas is not None:
        raise InputError("conflicting options --steps and --alphas: give one of them")
    if opts.reset_bn and opts.bn_data is None:
        raise InputError("--reset-bn needs --bn-data (usually the training set)")
    for name in ("bn_data", "bn_batches", "bn_split", "bn_on_eval_data"):
        _only_with(opts, name, opts.reset_bn, "--reset-bn")
    if opts.bn_data is not None and not Path(opts.bn_data).expanduser().exists():
        raise InputError(f"--bn-data {opts.bn_data} does not exist; check the path")
    if (
        opts.bn_data is not None
        and not opts.bn_on_eval_data
        and same_data(opts.bn_data, opts.bn_split, opts.data, opts.split)
    ):
        raise InputError(
            f"--bn-data {opts.bn_data} is the evaluation data (--data): --reset-bn would "
            "estimate BatchNorm on the samples it then measures; give the training set, or "
            "pass --bn-on-eval-data to do it anyway"
        )


def _check_prune(opts: RunOptions) -> None:
    if opts.ratios is None:
        raise InputError(
            "--ratios is required: give the fractions to prune, e.g. --ratios 0,0.5,0.9"
        )
    for name in (
        "finetune_split",
        "finetune_epochs",
        "lr",
        "finetune_batch_size",
        "optimizer",
        "momentum",
        "weight_decay",
    ):
        _only_with(opts, name, opts.finetune_data is not None, "--finetune-data DATA")
    if opts.optimizer == "adamw" and opts.momentum is not None:
        raise InputError("--momentum applies to --optimizer sgd only; AdamW has none")
    if opts.finetune_data is not None and not Path(opts.finetune_data).expanduser().exists():
        raise InputError(f"--finetune-data {opts.finetune_data} does not exist; check the path")


def same_data(a: str, split_a: str | None, b: str | None, split_b: str | None) -> bool:
    """Whether ``a`` and ``b`` (with their splits) are one file or folder, or two files with
    the same bytes."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser() if b is not None else None
    if pb is None or not pb.exists() or split_a != split_b:
        return False
    if pa.is_file() and pb.is_file():
        return filecmp.cmp(pa, pb, shallow=False)
    return os.path.samefile(pa, pb)


def _only_with(opts: RunOptions, name: str, applies: bool, condition: str) -> None:
    if opts.given(name) and not applies:
        raise InputError(f"{opts.spec(name).flag} applies only with {condition}; drop it")


def check_inputs(paths: Sequence[str], opts: RunOptions, *, allow_features: bool) -> list[bool]:
    """Which inputs are features files. InputError for a missing file, a missing ``--data``,
    and options that apply to none of the inputs (never ignored silently)."""
    for p in paths:
        if not Path(p).expanduser().exists():
            raise InputError(f"{p} does not exist; check the path")
    features = [features_file.is_features_file(p) for p in paths]
    if any(features) and not allow_features:
        first = paths[features.index(True)]
        raise InputError(f"{first} is a features file; this command needs checkpoints")
    if any(features) and opts.layers is not None:
        first = paths[features.index(True)]
        raise InputError(
            f"--layers needs checkpoints: {first} is a features file, which holds the "
            "penultimate features only; drop --layers or give the checkpoint"
        )
    if paths and all(features):
        _refuse(
            opts,
            _MODEL_OPTIONS + _IMAGE_OPTIONS + ("data", "split", "mean", "std"),
            "a features file holds the features already",
        )
        if opts.class_map is not None:
            raise InputError(
                "--class-map maps image folders; a features file's labels are the "
                "model's classes already (use --valid-labels for a subset)"
            )
        _read_label_files(opts)
        return features
    if not paths:
        return features
    if opts.data is None:
        first = paths[features.index(False)]
        raise InputError(
            f"--data is required to evaluate checkpoint {first} (only features files need none)"
        )
    if not Path(opts.data).expanduser().exists():
        raise InputError(f"--data {opts.data} does not exist; check the path")
    if Path(opts.data).expanduser().is_file():
        _refuse(opts, _IMAGE_OPTIONS + ("split",), f"--data {opts.data} is a tensor file")
    _read_label_files(opts)
    return features


def _read_label_files(opts: RunOptions) -> None:
    """Read the label files now: a malformed one stops the run before any work."""
    if opts.class_map is not None:
        parsing.read_class_map(opts.class_map)
    if isinstance(opts.valid_labels, str):
        parsing.read_valid_labels(opts.valid_labels)


def _refuse(opts: RunOptions, names: Sequence[str], why: str) -> None:
    given = [opts.spec(n).flag for n in names if opts.given(n)]
    if given:
        verb, pronoun = ("does", "it") if len(given) == 1 else ("do", "them")
        raise InputError(f"{', '.join(given)} {verb} not apply here: {why}; drop {pronoun}")


def settled(opts: RunOptions) -> RunOptions:
    """``opts`` with the defaults that depend on other options filled in, so that a default
    and the same value given explicitly are one run (for the resume record): the slq
    probes, the mini-batch size, the autocast dtype and the fine-tuning settings."""
    from infoprobe.sweeps.finetune import finetune_settings

    changes: dict[str, Any] = {
        "probes": (opts.probes or PROBES) if opts.estimate in ("auto", "slq") else None,
        "estimate_batch_size": (opts.estimate_batch_size or DEFAULT_BATCH_SIZE)
        if opts.estimate == "batch"
        else None,
        "amp_dtype": (opts.amp_dtype or "bf16") if opts.amp else None,
    }
    if opts.finetune_data is not None:
        changes.update(finetune_settings(opts))  # also checks their values
    return opts.replace(**changes)


def measure_options(opts: RunOptions) -> MeasureOptions:
    """How the information quantities of the rows are computed."""
    return MeasureOptions(
        estimate=opts.estimate,
        batch_size=opts.estimate_batch_size or DEFAULT_BATCH_SIZE,
        seed=opts.seed,
        drop_zero_rows=opts.drop_zero_rows,
        max_exact_dim=opts.max_exact_dim,  # None follows the device, 0 is no limit
        device=str(probe.resolve_device(opts.device)),
        probes=opts.probes or PROBES,
    )


def load_kwargs(opts: RunOptions) -> dict[str, Any]:
    """Keyword arguments of :func:`infoprobe.checkpoints.load_model`."""
    return dict(
        arch=opts.arch,
        num_classes=opts.num_classes,
        in_chans=opts.in_chans,
        model_kwargs=dict(opts.model_kwargs or {}),
        ema=opts.ema,
        strip_prefix=opts.strip_prefix,
        trust_checkpoint=opts.trust_checkpoint,
        trust_code=opts.trust_code,
    )


def valid_labels(opts: RunOptions) -> tuple[int, ...] | None:
    value = opts.valid_labels
    return parsing.read_valid_labels(value) if isinstance(value, str) else value


def eval_kwargs(opts: RunOptions) -> dict[str, Any]:
    """Keyword arguments of :func:`infoprobe.probe.evaluate` (less the progress sink)."""
    return dict(
        valid_labels=valid_labels(opts),
        head=opts.head,
        device=opts.device,
        batch_size=opts.batch_size,
        amp=(opts.amp_dtype or "bf16") if opts.amp else False,
        channels_last=opts.channels_last,
        layers=opts.layers,
    )


def load_data(
    opts: RunOptions,
    spec: str,
    model: Any,
    progress: Any,
    *,
    split: str | None,
    max_samples: int | None,
    log: Log | None = None,
) -> datasets.Dataset:
    """``spec`` loaded for ``model`` (decoded once per process, see infoprobe.data)."""
    loaded = datasets.load_data(
        spec,
        model=model,
        split=split,
        max_samples=max_samples,
        seed=opts.seed,
        workers=opts.workers,
        class_map=opts.class_map,
        progress=progress,
        input_size=opts.input_size,
        mean=opts.mean,
        std=opts.std,
        crop_pct=opts.crop_pct,
        interpolation=opts.interpolation,
    )
    _report_missing_classes(loaded, log)
    _report_tensor_inputs(loaded, model, log)
    return loaded


def _report_tensor_inputs(data: datasets.Dataset, model: Any, log: Log | None) -> None:
    """Say how tensor inputs were scaled, and warn about float images far outside the range
    the model's normalisation gives [0, 1] pixels."""
    record = data.transform or {}
    if record.get("kind") == "tensor":
        scale = "scaled by 1/255, then " if record["scale"] != 1 else ""
        say(
            log,
            f"{data.source}: inputs {scale}normalised with mean {_short(record['mean'])} "
            f"and std {_short(record['std'])}",
        )
    elif record == {} and isinstance(data, datasets.LabelledTensors):
        seen = datasets.looks_unnormalised(data.inputs, model)
        if seen is not None:
            say(
                log,
                f"warning: {data.source}: inputs range over [{seen[0]:.4g}, {seen[1]:.4g}], "
                "far outside what the model's normalisation gives images; store uint8 pixels "
                "(scaled as timm scales images) or pass --mean/--std",
            )


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _report_missing_classes(data: datasets.Dataset, log: Log | None) -> None:
    """Say which named classes have no sample: their indices stay reserved."""
    if not data.classes or log is None:
        return
    counts = data.labels.bincount(minlength=len(data.classes))
    missing = [f"{name} (index {i})" for i, name in enumerate(data.classes) if counts[i] == 0]
    if missing:
        log(
            f"{data.source}: no samples of class {', '.join(missing)}; the other classes "
            "keep their indices"
        )


def evaluate_path(
    path: str, is_features: bool, opts: RunOptions, progress: Any, log: Log | None
) -> tuple[Evaluation, datasets.Dataset | None, dict | None]:
    """(evaluation, dataset, model columns) of a checkpoint on ``--data``; a features file
    gives (evaluation, None, None), subsampled and restricted to ``--valid-labels`` exactly
    as a checkpoint's evaluation would be."""
    from infoprobe.rows import model_columns

    if is_features:
        return (
            features_file.load_features(
                path, max_samples=opts.max_samples, seed=opts.seed, valid_labels=valid_labels(opts)
            ),
            None,
            None,
        )
    loaded = ckpts.load_model(path, **load_kwargs(opts))
    dataset = load_data(
        opts,
        opts.data,
        loaded.model,
        progress,
        split=opts.split,
        max_samples=opts.max_samples,
        log=log,
    )
    evaluation = probe.evaluate(loaded.model, dataset, **eval_kwargs(opts), progress=progress)
    return evaluation, dataset, model_columns(loaded.arch, loaded.model, dataset.inputs)


def transform_of(datasets_by_path: Mapping[str, datasets.Dataset | None]) -> Any:
    """The evaluation transform of a run: one dict when every checkpoint's images went
    through the same one, else a dict by checkpoint; None for tensor data."""
    found = {p: d.transform for p, d in datasets_by_path.items() if d is not None}
    values = [t for t in found.values() if t is not None]
    if not values:
        return None
    return values[0] if all(t == values[0] for t in found.values()) else found


def frame(command: str, rows: Sequence[dict], layers: bool = False, **attrs: Any) -> pd.DataFrame:
    out = rows_frame(rows, columns(command, layers))
    out.attrs.update(command=command, **attrs)
    return out


class Failures:
    """Checkpoints that failed in a run of several: each gets an error row and the run goes
    on (``errors="note"``), or the first error propagates (``errors="raise"``)."""

    def __init__(self, errors: str, total: int, log: Log | None) -> None:
        if errors not in ("note", "raise"):
            raise InputError(f"errors={errors!r}: use 'note' (an error row, go on) or 'raise'")
        # one checkpoint: nothing else to keep going for
        self.errors = errors if total > 1 else "raise"
        self.log = log
        self.failed: list[dict] = []

    def row(self, path: str, error: InfoprobeError) -> dict:
        """The error row of ``path`` (or raise ``error``)."""
        if self.errors == "raise":
            raise error
        message = " ".join(str(error).split())
        say(self.log, f"{path}: error: {message}")
        self.failed.append({"checkpoint": path, "error": message, "exit_code": error.exit_code})
        return error_row(path, error)

    def warn(self, total: int) -> None:
        """A library caller without ``log`` hears of failed checkpoints through a warning."""
        if self.failed and self.log is None:
            names = ", ".join(f["checkpoint"] for f in self.failed[:3])
            warnings.warn(
                f"{len(self.failed)} of {total} checkpoints failed ({names}); their "
                "rows hold the error in 'note' and attrs['failed'] lists them",
                stacklevel=4,
            )


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0 under torchrun)."""
    return distributed.is_main()


def nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
