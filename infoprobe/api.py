"""The Python API: each command as a function that returns a pandas DataFrame.

``analyze``, ``track``, ``lmc`` and ``prune`` take the command's arguments and options as
keyword arguments, with the command line's names in snake_case (``--max-samples`` is
``max_samples``, ``--amp-dtype`` is ``amp_dtype``), and return one row per checkpoint,
step, alpha or ratio in the column schema of :mod:`infoprobe.rows`. The command line calls
these same functions and only renders what they return, so the rows are the same.

Every function also takes

* ``progress``: a :class:`~infoprobe.probe.ProgressSink` (``start``/``advance``/``stop``);
* ``log``: a callable taking one line of text (what the command line prints on stderr);
* ``on_row``: a callable given each row (a dict) as soon as it is finished, so a caller can
  write it to a file before the next one starts;
* ``done``: rows already finished by an earlier run (as ``on_row`` got them, or read back
  from its CSV); they are kept and not computed again (``--resume``).

What the rows do not hold goes into ``DataFrame.attrs``: ``command``, ``data`` and the
command's settings, plus ``per_class`` (analyze), ``barriers`` (lmc) and ``failed``.
"""

from __future__ import annotations

import dataclasses
import filecmp
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from infoprobe import checkpoint, distributed, probe
from infoprobe import data as datasets
from infoprobe.errors import InfoprobeError, InputError
from infoprobe.info import DEFAULT_BATCH_SIZE
from infoprobe.rows import (
    COLUMNS,
    PER_CLASS_COLUMNS,
    SWEEP_COLUMNS,
    MeasureOptions,
    analysis_row,
    error_row,
    is_measured,
    model_columns,
    per_class_rows,
    rows_frame,
)
from infoprobe.slq import PROBES
from infoprobe.sweeps import lmc as lmc_lib
from infoprobe.sweeps import prune as prune_lib
from infoprobe.sweeps.finetune import FinetuneOptions

__all__ = [
    "FINETUNE_FLAGS",
    "RESUME_NEUTRAL",
    "RunOptions",
    "analyze",
    "columns",
    "finetune_options",
    "finetune_settings",
    "lmc",
    "prune",
    "records",
    "run_record",
    "track",
]

#: The evaluation batch size when none is given (``--batch-size``).

Log = Callable[[str], None]
OnRow = Callable[[dict], None]


@dataclass(frozen=True)
class RunOptions:
    """The options every command shares, with the command line's defaults.

    ``input_size`` is N or (C, H, W); ``mean`` and ``std`` are one value per channel; each
    may also be given as the command line's text (``"3,224,224"`` or ``"3 224 224"``).
    ``class_map`` is timm's class-map text file for image folders; ``valid_labels`` the
    model class indices the data's labels 0..k-1 stand for, or a text file listing them
    one per line (timm validate.py's ``--class-map`` / ``--valid-labels``). ``model_kwargs`` is a
    dict or the command line's ``["key=value", ...]``. ``amp`` turns autocast on with
    ``amp_dtype`` (``"bf16"`` or ``"fp16"``). ``max_exact_dim`` None follows the device
    (:func:`infoprobe.info.default_max_exact_dim`), 0 means no limit.
    """

    # model
    arch: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    model_kwargs: Mapping[str, Any] | Sequence[str] | None = None
    ema: bool = False
    strip_prefix: str | None = None
    trust_checkpoint: bool = False
    head: str | None = None
    # data
    split: str | None = None
    max_samples: int | None = None
    seed: int = 0
    input_size: int | Sequence[int] | str | None = None
    mean: Sequence[float] | str | None = None
    std: Sequence[float] | str | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    workers: int = 0
    class_map: str | None = None
    valid_labels: str | Sequence[int] | None = None
    # compute
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    amp: bool = False
    amp_dtype: str = "bf16"
    channels_last: bool = False
    # measure
    estimate: str = "auto"
    estimate_batch_size: int = DEFAULT_BATCH_SIZE
    drop_zero_rows: bool = False
    max_exact_dim: int | None = None
    probes: int = PROBES

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> RunOptions:
        """``RunOptions`` from keyword options; enum values become their value."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {sorted(names)}")
        return cls(**{k: v.value if isinstance(v, Enum) else v for k, v in options.items()})

    def check(self) -> None:
        """Every check that needs no model or data: InputError for a bad value."""
        probe.resolve_device(self.device)
        self.load_kwargs()
        self.transform_kwargs()
        self.eval_kwargs()
        if self.class_map is not None:
            datasets.read_class_map(self.class_map)

    def measure(self) -> MeasureOptions:
        return MeasureOptions(
            estimate=self.estimate,
            batch_size=self.estimate_batch_size,
            seed=self.seed,
            drop_zero_rows=self.drop_zero_rows,
            max_exact_dim=self.max_exact_dim,
            device=str(probe.resolve_device(self.device)),
            probes=self.probes,
        )

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`infoprobe.checkpoint.load_model`."""
        kwargs = self.model_kwargs
        if kwargs is None or not isinstance(kwargs, Mapping):
            kwargs = checkpoint.parse_model_kwargs(list(kwargs) if kwargs else None)
        return dict(
            arch=self.arch,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            model_kwargs=dict(kwargs),
            ema=self.ema,
            strip_prefix=self.strip_prefix,
            trust_checkpoint=self.trust_checkpoint,
        )

    def eval_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`infoprobe.probe.evaluate` (less the progress sink)."""
        return dict(
            valid_labels=_valid_labels(self.valid_labels),
            head=self.head,
            device=self.device,
            batch_size=self.batch_size,
            amp=self.amp_dtype if self.amp else False,
            channels_last=self.channels_last,
        )

    def transform_kwargs(self) -> dict[str, Any]:
        return dict(
            input_size=_input_size(self.input_size),
            mean=_numbers(self.mean, "--mean", float),
            std=_numbers(self.std, "--std", float),
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
        )

    def load_data(
        self, spec: str, model: Any, progress: Any, max_samples: int | None, log: Log | None = None
    ) -> datasets.LabelledTensors:
        """``spec`` loaded for ``model`` (decoded once per process, see data.py)."""
        loaded = datasets.load_data(
            spec,
            model=model,
            split=self.split,
            max_samples=max_samples,
            seed=self.seed,
            workers=self.workers,
            class_map=self.class_map,
            progress=progress,
            **self.transform_kwargs(),
        )
        _report_missing_classes(loaded, log)
        return loaded


def _report_missing_classes(data: datasets.LabelledTensors, log: Log | None) -> None:
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


def _numbers(value: Any, flag: str, kind: type) -> tuple | None:
    """``"0.5,0.5,0.5"`` or a sequence -> ``(0.5, 0.5, 0.5)``; InputError naming ``flag``."""
    if value is None:
        return None
    items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
    try:
        values = tuple(kind(v) for v in items if v != "")
    except (TypeError, ValueError):
        raise InputError(
            f"{flag} {value!r}: expected numbers separated by spaces or commas"
        ) from None
    if not values:
        raise InputError(f"{flag} {value!r}: expected numbers separated by spaces or commas")
    return values


def _input_size(value: Any) -> int | tuple[int, ...] | None:
    values = _numbers([value] if isinstance(value, int) else value, "--input-size", int)
    if values is None:
        return None
    if len(values) not in (1, 3) or min(values) < 1:
        raise InputError(f"--input-size {value!r}: give N or C H W with positive integers")
    return values[0] if len(values) == 1 else values


def _valid_labels(value: str | Sequence[int] | None) -> list[int] | None:
    """Model class indices: a list, or a text file with one per line (as timm reads it)."""
    if value is None or not isinstance(value, (str, os.PathLike)):
        return None if value is None else [int(v) for v in value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"--valid-labels {path} does not exist; check the path")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    try:
        return [int(line) for line in lines if line]
    except ValueError:
        raise InputError(f"--valid-labels {path}: expected one class index per line") from None


# ----------------------------------------------------------------------------- shared steps


#: Options that leave every number of a row unchanged (where it runs, how many processes
#: decode, how much is trusted) and the points of a sweep (a resumed sweep may add points).
#: Every other option is recorded by :func:`run_record`; ``max_exact_dim`` is, since it
#: chooses between the exact and the slq route under ``--estimate auto``.
RESUME_NEUTRAL = frozenset(
    {
        "device",
        "workers",
        "trust_checkpoint",
        "debug",
        "steps",
        "alphas",
        "ratios",
    }
)


def run_record(command: str, data: str | None, **options: Any) -> dict[str, Any]:
    """What decides the numbers of ``command``'s rows: every option but
    :data:`RESUME_NEUTRAL`, as JSON values (enums as their value, ``model_kwargs`` as a
    dict, ``data`` and every other ``*data`` path resolved), plus ``command``.

    A resumed run must produce the same record as the run that wrote the finished rows
    (``--resume`` refuses otherwise). A command that gains an option records it at once,
    unless the option joins :data:`RESUME_NEUTRAL`.
    """
    values = {"command": command, "data": data, **options}
    record: dict[str, Any] = {}
    for key in sorted(values):
        value = values[key]
        if key in RESUME_NEUTRAL:
            continue
        if isinstance(value, Enum):
            value = value.value
        if key == "model_kwargs" and value is not None and not isinstance(value, Mapping):
            value = checkpoint.parse_model_kwargs(list(value))
        if key.endswith("data") and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())
        if isinstance(value, tuple):
            value = list(value)
        record[key] = value
    return record


def columns(command: str) -> tuple[str, ...]:
    """The columns of ``command``'s rows, in order."""
    return SWEEP_COLUMNS[command] + COLUMNS


def records(frame: pd.DataFrame) -> list[dict]:
    """A frame's rows as dicts of Python values (missing integers become None)."""
    return frame.to_dict("records")


def check_inputs(paths: Sequence[str], data: str | None, *, allow_features: bool) -> list[bool]:
    """Which inputs are features files; InputError for missing files or a missing ``data``."""
    for p in paths:
        if not Path(p).expanduser().exists():
            raise InputError(f"{p} does not exist; check the path")
    features = [probe.is_features_file(p) for p in paths]
    if any(features) and not allow_features:
        first = paths[features.index(True)]
        raise InputError(f"{first} is a features file; this command needs checkpoints")
    if not all(features):
        if data is None:
            first = paths[features.index(False)]
            raise InputError(
                f"--data is required to evaluate checkpoint {first} (only features files need none)"
            )
        if not Path(data).expanduser().exists():
            raise InputError(f"--data {data} does not exist; check the path")
    return features


def _say(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


def _evaluate(
    path: str, is_features: bool, data: str | None, opts: RunOptions, progress: Any, log: Log | None
) -> tuple[probe.Evaluation, datasets.LabelledTensors | None, dict | None]:
    """(evaluation, dataset, model columns) for a checkpoint on ``data``; (evaluation, None,
    None) for a features file."""
    if is_features:
        return probe.load_features(path), None, None
    loaded = checkpoint.load_model(path, **opts.load_kwargs())
    dataset = opts.load_data(data, loaded.model, progress, opts.max_samples, log)
    evaluation = probe.evaluate(loaded.model, dataset, **opts.eval_kwargs(), progress=progress)
    return evaluation, dataset, model_columns(loaded.arch, loaded.model, dataset.inputs)


def _transform(datasets_by_path: Mapping[str, datasets.LabelledTensors | None]) -> Any:
    """The evaluation transform of a run (``data.transform_record``): one dict when every
    checkpoint's images went through the same one, else a dict by checkpoint; None for
    tensor data, which goes in as it is."""
    found = {p: d.transform for p, d in datasets_by_path.items() if d is not None}
    values = [t for t in found.values() if t is not None]
    if not values:
        return None
    return values[0] if all(t == values[0] for t in found.values()) else found


def features_targets(template: str | None, paths: Sequence[str]) -> dict[str, str]:
    """Each checkpoint's ``save_features`` file: ``{name}`` is its file name without the
    checkpoint suffix (``ls0.1.safetensors`` -> ``ls0.1``). InputError when two checkpoints
    would write one file, so that no output of the run overwrites another."""
    if template is None:
        return {}
    targets = {p: template.replace("{name}", checkpoint.checkpoint_stem(p)) for p in paths}
    seen: dict[str, str] = {}
    for path, target in targets.items():
        if target in seen:
            raise InputError(
                f"--save-features {template}: {seen[target]} and {path} would both write "
                f"{target}; give checkpoints with distinct file names"
            )
        seen[target] = path
    return targets


def _save_features(targets: dict[str, str], path: str, evaluation: Any, log: Log | None) -> None:
    if path not in targets or not distributed.is_main():  # under torchrun rank 0 writes
        return
    probe.save_features(targets[path], evaluation)
    _say(log, f"wrote features {targets[path]}")


def _frame(command: str, rows: Sequence[dict], **attrs: Any) -> pd.DataFrame:
    frame = rows_frame(rows, columns(command))
    frame.attrs.update(command=command, **attrs)
    return frame


def _finish(row: dict, on_row: OnRow | None) -> dict:
    if on_row is not None:
        on_row(row)
    return row


# ----------------------------------------------------------------------------- analyze, track


def analyze(
    checkpoints: str | Sequence[str],
    data: str | None = None,
    *,
    per_class: bool = False,
    save_features: str | None = None,
    errors: str = "note",
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    done: Iterable[Mapping] = (),
    **options: Any,
) -> pd.DataFrame:
    """Measure checkpoints (or features files) on ``data``: one row per checkpoint.

    ``options`` are :class:`RunOptions` fields. With ``per_class``, ``attrs["per_class"]``
    holds the per-class rows (:data:`~infoprobe.rows.PER_CLASS_COLUMNS`) of the checkpoints
    measured in this call, as a DataFrame. Of several checkpoints, one that fails (an
    :class:`~infoprobe.errors.InfoprobeError`: corrupt, wrong architecture...) gets an
    :func:`~infoprobe.rows.error_row` and the others go on (``errors="raise"``, or a single
    checkpoint: the error propagates); ``attrs["failed"]`` lists them. Rows of ``done``
    that hold numbers are kept and their checkpoints not measured again; failed ones are
    measured again.
    """
    paths = [checkpoints] if isinstance(checkpoints, str) else [str(p) for p in checkpoints]
    opts = RunOptions.of(options)
    opts.check()
    _check_errors(errors)
    check_inputs(paths, data, allow_features=True)
    # a folder of checkpoints is measured file by file (a save_for_hf folder is one)
    paths = [str(p) for p in checkpoint.checkpoint_files(paths)]
    features = check_inputs(paths, data, allow_features=True)
    targets = features_targets(save_features, paths)
    errors = errors if len(paths) > 1 else "raise"  # one checkpoint: nothing else to keep
    finished = _finished(done, log)
    measure = opts.measure()
    rows, classes_rows, used, failed = [], [], {}, []
    for i, (path, is_features) in enumerate(zip(paths, features, strict=True)):
        if path in finished:
            rows.append(finished[path])
            continue
        _say(log, f"[{i + 1}/{len(paths)}] {path}")
        try:
            evaluation, used[path], model = _evaluate(path, is_features, data, opts, progress, log)
            _save_features(targets, path, evaluation, log)
            row = analysis_row(path, evaluation, measure, model)
        except InfoprobeError as e:
            row = _failed(path, e, errors, failed, log)
        else:
            if per_class:
                classes = used[path].classes if used[path] is not None else None
                classes_rows += per_class_rows(path, evaluation, classes)
        rows.append(_finish(row, on_row))
    _warn(failed, len(rows), log)
    extra = {"per_class": rows_frame(classes_rows, PER_CLASS_COLUMNS)} if per_class else {}
    return _frame("analyze", rows, data=data, transform=_transform(used), failed=failed, **extra)


_ERRORS = ("note", "raise")


def _check_errors(errors: str) -> None:
    if errors not in _ERRORS:
        raise InputError(f"errors={errors!r}: use 'note' (an error row, go on) or 'raise'")


def _finished(done: Iterable[Mapping], log: Log | None) -> dict[str, dict]:
    """The rows of ``done`` that hold numbers, by checkpoint (failed ones are redone)."""
    finished = {str(row["checkpoint"]): dict(row) for row in done if is_measured(row)}
    if finished:
        _say(log, f"resuming: {len(finished)} finished rows")
    return finished


def _failed(
    path: str, error: InfoprobeError, errors: str, failed: list[dict], log: Log | None
) -> dict:
    """The error row of a checkpoint that failed, recorded in ``failed`` (or ``raise``)."""
    if errors == "raise":
        raise error
    message = " ".join(str(error).split())
    _say(log, f"{path}: error: {message}")
    failed.append({"checkpoint": path, "error": message, "exit_code": error.exit_code})
    return error_row(path, error)


def _warn(failed: list[dict], total: int, log: Log | None) -> None:
    """A library caller without ``log`` hears of failed checkpoints through a warning."""
    if failed and log is None:
        names = ", ".join(f["checkpoint"] for f in failed[:3])
        warnings.warn(
            f"{len(failed)} of {total} checkpoints failed ({names}); their rows "
            "hold the error in 'note' and attrs['failed'] lists them",
            stacklevel=3,
        )


def _series(
    paths: list[str], opts: RunOptions, log: Log | None
) -> tuple[list[tuple[Path, int]], list[tuple[Path, InfoprobeError]]]:
    """The run's checkpoints with their steps, and those whose step cannot be read; say
    which aliases are skipped and why."""
    plan = checkpoint.series_plan(paths, trust_checkpoint=opts.trust_checkpoint)
    for path, why in plan.skipped:
        _say(log, f"skipping {path}: {why}")
    if plan.note:
        _say(log, f"note: {plan.note}")
    return plan.steps, plan.unreadable


def track(
    paths: str | Sequence[str],
    data: str | None = None,
    *,
    save_features: str | None = None,
    errors: str = "note",
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    done: Iterable[Mapping] = (),
    **options: Any,
) -> pd.DataFrame:
    """Measure a checkpoint series ordered by step: one row per checkpoint, with ``step``.

    ``paths`` are checkpoints of one run or folders holding them; steps are read as
    :func:`infoprobe.checkpoint.series_plan` reads them (aliases of a step left out).
    Failures, ``errors`` and ``done`` as for :func:`analyze`; a checkpoint whose step
    cannot be read comes last, with the number in its file name as its step (if any).
    """
    paths = [paths] if isinstance(paths, str) else [str(p) for p in paths]
    opts = RunOptions.of(options)
    opts.check()
    _check_errors(errors)
    series, unreadable = _series(paths, opts, log)
    features = check_inputs([str(p) for p, _ in series], data, allow_features=True)
    targets = features_targets(save_features, [str(p) for p, _ in series])
    errors = errors if len(series) + len(unreadable) > 1 else "raise"
    finished = _finished(done, log)
    measure = opts.measure()
    rows, used, failed = [], {}, []
    for i, ((path, step), is_features) in enumerate(zip(series, features, strict=True)):
        path = str(path)
        if path in finished:
            rows.append(finished[path])
            continue
        _say(log, f"[{i + 1}/{len(series)}] step {step}: {path}")
        try:
            evaluation, used[path], model = _evaluate(path, is_features, data, opts, progress, log)
            _save_features(targets, path, evaluation, log)
            row = analysis_row(path, evaluation, measure, model)
        except InfoprobeError as e:
            row = _failed(path, e, errors, failed, log)
        rows.append(_finish({"step": step, **row}, on_row))
    for path, error in unreadable:
        row = _failed(str(path), error, errors, failed, log)
        rows.append(_finish({"step": checkpoint.name_number(path), **row}, on_row))
    _warn(failed, len(rows), log)
    return _frame("track", rows, data=data, transform=_transform(used), failed=failed)


# ----------------------------------------------------------------------------- sweeps


def _check_resumed(
    done: Sequence[Mapping], name: str, n_samples: int, measure: MeasureOptions, log: Log | None
) -> None:
    """InputError unless the finished rows come from the same run (name, estimate, samples)."""
    for row in done:
        # with drop_zero_rows the count depends on the weights, so it cannot be compared
        samples_differ = row["n_samples"] != n_samples and not measure.drop_zero_rows
        if row["checkpoint"] != name or not measure.matches(row["estimate"]) or samples_differ:
            raise InputError(
                f"--resume: the finished rows hold another run ({row['checkpoint']}, "
                f"{row['estimate']}, {row['n_samples']} samples; this run: {name}, "
                f"--estimate {measure.estimate}, {n_samples} samples); remove the --csv file or "
                "write to another one"
            )
    if done:
        _say(log, f"resuming: {len(done)} finished rows")


def _sweep(
    rows: Iterator[dict], done: Sequence[Mapping], key: str, on_row: OnRow | None, model: dict
) -> list[dict]:
    """Finished rows plus the new ones, with the swept ``model``'s columns
    (:func:`~infoprobe.rows.model_columns`), as they come, ordered by ``key``."""
    out = [dict(row) for row in done]
    out += [_finish({**row, **model}, on_row) for row in rows]
    return sorted(out, key=lambda row: float(row[key]))


def lmc(
    a: str,
    b: str,
    data: str | None = None,
    *,
    steps: int | None = None,
    alphas: str | Iterable[float] | None = None,
    reset_bn: bool = False,
    bn_data: str | None = None,
    bn_batches: int | None = None,
    bn_on_eval_data: bool = False,
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    done: Iterable[Mapping] = (),
    **options: Any,
) -> pd.DataFrame:
    """Linear mode connectivity ``theta(alpha) = (1-alpha) A + alpha B``: one row per alpha.

    ``attrs["barriers"]`` holds the loss and accuracy barriers
    (:func:`infoprobe.sweeps.lmc.barriers`).
    """
    sweep = _LmcSweep(steps, alphas, reset_bn, bn_data, bn_batches, bn_on_eval_data)
    sweep.check(data)
    opts = RunOptions.of(options)
    opts.check()
    check_inputs([a, b], data, allow_features=False)
    points = lmc_lib.parse_alphas(steps, alphas)
    measure = opts.measure()
    name = f"{a}→{b}"
    done = list(done)
    loaded = checkpoint.load_model(a, **opts.load_kwargs())
    # A is read once: the sweep clones the model's own state (lmc_sweep handles aliasing)
    state_a = loaded.model.state_dict()
    state_b, _ = checkpoint.read_state_dict(
        b, ema=opts.ema, strip_prefix=opts.strip_prefix, trust_checkpoint=opts.trust_checkpoint
    )
    lmc_lib.check_compatible(state_a, state_b, a, b)
    dataset = opts.load_data(data, loaded.model, progress, opts.max_samples, log)
    _check_resumed(done, name, len(dataset), measure, log)
    bn_set = None
    if reset_bn:
        # K batches are all a reset reads, so decode no more than that
        limit = bn_batches * opts.batch_size if bn_batches else None
        bn_set = opts.load_data(bn_data, loaded.model, progress, limit, log)
    rows = _sweep(
        lmc_lib.lmc_sweep(
            loaded.model,
            state_a,
            state_b,
            dataset,
            points,
            name=name,
            eval_kwargs=opts.eval_kwargs(),
            measure=measure,
            bn_data=bn_set,
            bn_batches=bn_batches,
            bn_seed=opts.seed,
            skip=[float(r["alpha"]) for r in done],
            progress=progress,
        ),
        done,
        "alpha",
        on_row,
        model_columns(loaded.arch, loaded.model, dataset.inputs),
    )
    return _frame(
        "lmc",
        rows,
        data=data,
        transform=dataset.transform,
        a=a,
        b=b,
        reset_bn=reset_bn,
        barriers=lmc_lib.barriers(rows),
    )


@dataclass(frozen=True)
class _LmcSweep:
    steps: int | None
    alphas: Any
    reset_bn: bool
    bn_data: str | None
    bn_batches: int | None
    bn_on_eval_data: bool = False

    def check(self, data: str | None) -> None:
        """Conflicting or incomplete sweep options (InputError before any work)."""
        lmc_lib.parse_alphas(self.steps, self.alphas)  # conflicts and bad values
        if self.reset_bn and self.bn_data is None:
            raise InputError("--reset-bn needs --bn-data (usually the training set)")
        if not self.reset_bn and (self.bn_data is not None or self.bn_batches is not None):
            raise InputError("--bn-data and --bn-batches only apply with --reset-bn")
        if self.bn_data is not None and not Path(self.bn_data).expanduser().exists():
            raise InputError(f"--bn-data {self.bn_data} does not exist; check the path")
        if self.bn_data is not None and not self.bn_on_eval_data and _same_data(self.bn_data, data):
            raise InputError(
                f"--bn-data {self.bn_data} is the evaluation data (--data): --reset-bn would "
                "estimate BatchNorm on the samples it then measures; give the training set, "
                "or pass --bn-on-eval-data to do it anyway"
            )


def _same_data(a: str, b: str | None) -> bool:
    """Whether ``a`` and ``b`` are one file or folder, or two files with the same bytes."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser() if b is not None else None
    if pb is None or not pb.exists():
        return False
    if pa.is_file() and pb.is_file():
        return filecmp.cmp(pa, pb, shallow=False)
    return os.path.samefile(pa, pb)


#: prune's fine-tuning options (keyword names) with their command-line flags.
FINETUNE_FLAGS: dict[str, str] = {
    "finetune_epochs": "--finetune-epochs",
    "lr": "--lr",
    "finetune_batch_size": "--finetune-batch-size",
    "optimizer": "--optimizer",
    "momentum": "--momentum",
    "weight_decay": "--weight-decay",
}


def finetune_options(
    finetune_data: str | None, *, seed: int = 0, **values: Any
) -> FinetuneOptions | None:
    """prune's fine-tuning options (:data:`FINETUNE_FLAGS`, None: the default) as
    :class:`~infoprobe.sweeps.finetune.FinetuneOptions`; None without ``finetune_data``.

    InputError for options given without ``finetune_data``, ``momentum`` with AdamW, a
    missing ``finetune_data`` path and values out of range.
    """
    unknown = sorted(set(values) - set(FINETUNE_FLAGS))
    if unknown:
        raise TypeError(f"unknown fine-tuning option(s) {', '.join(unknown)}")
    given = {k: v.value if isinstance(v, Enum) else v for k, v in values.items() if v is not None}
    if finetune_data is None:
        if given:
            raise InputError(
                f"{', '.join(FINETUNE_FLAGS[k] for k in given)} only apply with "
                "--finetune-data DATA (the training data to fine-tune on)"
            )
        return None
    if given.get("optimizer") == "adamw" and "momentum" in given:
        raise InputError("--momentum applies to --optimizer sgd only; AdamW has none")
    if not Path(finetune_data).expanduser().exists():
        raise InputError(f"--finetune-data {finetune_data} does not exist; check the path")
    names = {"finetune_epochs": "epochs", "finetune_batch_size": "batch_size"}
    return FinetuneOptions(seed=seed, **{names.get(k, k): v for k, v in given.items()})


def finetune_settings(finetune_data: str | None, *, seed: int = 0, **values: Any) -> dict[str, Any]:
    """The fine-tuning options with their defaults filled in (all None without
    ``finetune_data``; ``momentum`` None with AdamW): what a run record holds, so that a
    default and the same value given explicitly are one run."""
    tune = finetune_options(finetune_data, seed=seed, **values)
    if tune is None:
        return dict.fromkeys(FINETUNE_FLAGS)
    return {
        "finetune_epochs": tune.epochs,
        "lr": tune.lr,
        "finetune_batch_size": tune.batch_size,
        "optimizer": tune.optimizer,
        "momentum": tune.momentum if tune.optimizer == "sgd" else None,
        "weight_decay": tune.weight_decay,
    }


def _check_resumed_finetune(done: Sequence[Mapping], tune: FinetuneOptions | None) -> None:
    """InputError when finished rows were fine-tuned and this run is not, or the reverse
    (a diverged ratio has empty ft_ columns and a note, and counts as fine-tuned)."""
    for row in done:
        value = row.get("ft_accuracy")
        tuned = not (value is None or math.isnan(float(value))) or (
            tune is not None and "fine-tuning diverged" in str(row.get("note") or "")
        )
        if tuned != (tune is not None):
            this = "fine-tunes" if tune else "does not fine-tune"
            raise InputError(
                f"--resume: the finished rows hold another run (ratio {float(row['ratio']):g} "
                f"{'was' if tuned else 'was not'} fine-tuned; this run {this}); remove the "
                "--csv file or write to another one"
            )


def prune(
    checkpoint_path: str,
    data: str | None = None,
    *,
    ratios: str | Iterable[float],
    method: str = "global-magnitude",
    include_head: bool = False,
    iterative: bool = False,
    dense_metrics: bool = True,
    finetune_data: str | None = None,
    finetune_epochs: int | None = None,
    lr: float | None = None,
    finetune_batch_size: int | None = None,
    optimizer: str | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    done: Iterable[Mapping] = (),
    **options: Any,
) -> pd.DataFrame:
    """Unstructured pruning sweep: one row per ratio, fine-tuned with ``finetune_data``.

    ``finetune_data`` is read like ``data`` (all its samples); the other fine-tuning
    options are :func:`finetune_options`'s (None: the default). ``attrs["finetune"]`` holds
    the fine-tuning options used (with ``data``), None without fine-tuning.
    """
    method = method.value if isinstance(method, Enum) else method
    points = prune_lib.parse_ratios(ratios)
    opts = RunOptions.of(options)
    opts.check()
    tune = finetune_options(
        finetune_data,
        seed=opts.seed,
        finetune_epochs=finetune_epochs,
        lr=lr,
        finetune_batch_size=finetune_batch_size,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    check_inputs([checkpoint_path], data, allow_features=False)
    measure = opts.measure()
    done = list(done)
    _check_resumed_finetune(done, tune)
    loaded = checkpoint.load_model(checkpoint_path, **opts.load_kwargs())
    dataset = opts.load_data(data, loaded.model, progress, opts.max_samples, log)
    _check_resumed(done, checkpoint_path, len(dataset), measure, log)
    train = None
    if tune is not None:
        if _same_data(finetune_data, data):
            _say(
                log,
                "warning: --finetune-data is the evaluation data (--data): the "
                "fine-tuned rows are measured on the samples they were trained on",
            )
        train = opts.load_data(finetune_data, loaded.model, progress, None, log)
    rows = _sweep(
        prune_lib.prune_sweep(
            loaded.model,
            dataset,
            points,
            method=method,
            include_head=include_head,
            seed=opts.seed,
            iterative=iterative,
            dense_metrics=dense_metrics,
            name=checkpoint_path,
            eval_kwargs=opts.eval_kwargs(),
            measure=measure,
            finetune_data=train,
            finetune_options=tune,
            skip=[float(r["ratio"]) for r in done],
            progress=progress,
        ),
        done,
        "ratio",
        on_row,
        model_columns(loaded.arch, loaded.model, dataset.inputs),
    )
    record = None if tune is None else {"data": finetune_data, **tune.record()}
    return _frame(
        "prune",
        rows,
        data=data,
        transform=dataset.transform,
        method=method,
        include_head=include_head,
        iterative=iterative,
        finetune=record,
    )
