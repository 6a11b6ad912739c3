"""``analyze`` (one row per checkpoint) and ``track`` (one row per step of a run)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from infoprobe import checkpoints as ckpts
from infoprobe import distributed, features_file, parsing, probe
from infoprobe.api.common import (
    Failures,
    Log,
    OnRow,
    check_inputs,
    columns,
    evaluate_path,
    frame,
    measure_options,
    prepared,
    say,
    transform_of,
)
from infoprobe.api.outputs import (
    PerClassLog,
    RowsLog,
    by_checkpoint,
    by_checkpoint_and_layer,
    plot_title,
    write_outputs,
)
from infoprobe.errors import InfoprobeError
from infoprobe.evaluation import Evaluation
from infoprobe.options import RunOptions
from infoprobe.paths import PathRegistry, resolved
from infoprobe.record import run_record
from infoprobe.report.files import rows_frame
from infoprobe.rows import analysis_row, layer_rows, per_class_rows
from infoprobe.schema import PER_CLASS_COLUMNS

__all__ = ["analyze", "track"]


def _as_list(paths: str | os.PathLike | Sequence) -> list[str]:
    return (
        [os.fspath(paths)]
        if isinstance(paths, (str, os.PathLike))
        else [os.fspath(p) for p in paths]
    )


def _once(paths: list[str], log: Log | None) -> list[str]:
    """``paths`` with each file once (by resolved path); say which repeats are dropped."""
    seen: dict[Path, str] = {}
    for path in paths:
        key = resolved(path)
        if key in seen:
            say(log, f"{path} is {seen[key]} again: measured once")
        else:
            seen[key] = path
    return list(seen.values())


class _Measured:
    """The loop both commands share: each checkpoint evaluated and measured into a row
    (with ``layers``, one row per layer), finished rows of a resumed run kept, failures
    noted, every row logged as it ends."""

    def __init__(
        self,
        command: str,
        opts: RunOptions,
        paths: list[str],
        given: list[str],
        errors: str,
        total: int,
        progress: Any,
        log: Log | None,
        on_row: OnRow | None,
    ) -> None:
        self.command, self.opts, self.paths = command, opts, paths
        self.features = check_inputs(paths, opts, allow_features=True)
        PathRegistry.of(command, opts, paths, given).check()
        self.targets = parsing.features_targets(opts.save_features, paths)
        record = run_record(command, opts, paths) if opts.csv not in (None, "-") else {}
        self.layered = opts.layers is not None
        self.log_rows = RowsLog(
            opts,
            columns(command, self.layered),
            by_checkpoint_and_layer if self.layered else by_checkpoint,
            "checkpoint",
            record,
            lambda row: [str(row["checkpoint"])],
            log,
        )
        self.finished: dict[str, list[dict]] = {}
        for row in self.log_rows.finished().values():
            self.finished.setdefault(str(row["checkpoint"]), []).append(row)
        self.per_class = PerClassLog(opts, list(self.finished))
        self.failures = Failures(errors, total, log)
        self.measure = measure_options(opts)
        self.progress, self.log, self.on_row = progress, log, on_row
        self.used: dict[str, Any] = {}

    def rows(self, path: str, is_features: bool, position: str, extra: dict) -> list[dict]:
        """The checkpoint's row, or with ``layers`` its rows in depth order."""
        if path in self.finished:
            return self.finished[path]
        say(self.log, f"{position} {path}")
        try:
            evaluation, self.used[path], model = evaluate_path(
                path, is_features, self.opts, self.progress, self.log
            )
            self._save_features(path, evaluation)
            measured = (
                layer_rows(path, evaluation, self.measure, model)
                if self.layered
                else [analysis_row(path, evaluation, self.measure, model)]
            )
            rows = [{**extra, **row} for row in measured]
        except InfoprobeError as e:
            rows = [{**extra, **self.failures.row(path, e)}]
        else:
            if self.opts.per_class:
                data = self.used[path]
                self.per_class.add(per_class_rows(path, evaluation, data.classes if data else None))
        return self.done(*rows)

    def done(self, *rows: dict) -> list[dict]:
        self.log_rows.add(*rows)
        if self.on_row is not None:
            for row in rows:
                self.on_row(row)
        return list(rows)

    def _save_features(self, path: str, evaluation: Evaluation) -> None:
        if path in self.targets and distributed.is_main():  # under torchrun rank 0 writes
            features_file.save_features(self.targets[path], evaluation)
            say(self.log, f"wrote features {self.targets[path]}")

    def finish(self, rows: list[dict], what: str, **attrs: Any) -> pd.DataFrame:
        self.failures.warn(len(rows))
        self.log_rows.rewrite(rows)
        cols = columns(self.command, self.layered)
        extra = {"data": self.opts.data, "transform": transform_of(self.used), **attrs}
        if self.opts.per_class:
            extra["per_class"] = self.per_class.rows
        record = self.log_rows.record
        write_outputs(
            self.command,
            rows,
            cols,
            self.opts,
            self.log,
            plot_title(rows, self.opts, what),
            options=record or None,
            **extra,
        )
        if self.opts.per_class:
            extra["per_class"] = rows_frame(self.per_class.rows, PER_CLASS_COLUMNS)
        return frame(self.command, rows, self.layered, failed=self.failures.failed, **extra)


def analyze(
    checkpoints: str | os.PathLike | Sequence,
    data: str | None = None,
    *,
    errors: str = "note",
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Measure checkpoints (or features files) on ``data``: one row per checkpoint.

    ``options`` are the command's :class:`~infoprobe.options.RunOptions` fields (the command
    line's names in snake_case). A folder of checkpoints is measured file by file (a
    ``save_for_hf`` folder is one checkpoint). Of several checkpoints, one that fails (an
    :class:`~infoprobe.errors.InfoprobeError`: corrupt, wrong architecture...) gets an
    :func:`~infoprobe.rows.error_row` and the others go on (``errors="raise"``, or a single
    checkpoint: the error propagates); ``attrs["failed"]`` lists them. With ``per_class``,
    ``attrs["per_class"]`` holds the per-class rows. ``csv``, ``json_out``, ``plot``,
    ``save_features`` write files as the command line does; with ``resume``, finished rows
    of ``csv`` are kept and their checkpoints not measured again. With ``layers``
    (``"stages"``, ``"all"``, or names and tap indices: :func:`infoprobe.layers.select_layers`)
    each checkpoint gives one row per layer from the same forward pass, in depth order and
    ending with the head's input ``pre_logits`` (:func:`infoprobe.rows.layer_rows`); the pass
    keeps ``4 n sum_l d_l`` bytes of pooled features (``max_samples`` bounds n).
    """
    given = _as_list(checkpoints)
    opts = prepared("analyze", {"data": data, **options})
    check_inputs(given, opts, allow_features=True)  # before expanding: a missing path
    paths = _once([str(p) for p in ckpts.checkpoint_files(given)], log)
    run = _Measured("analyze", opts, paths, given, errors, len(paths), progress, log, on_row)
    rows = [
        row
        for i, (path, is_features) in enumerate(zip(paths, run.features, strict=True))
        for row in run.rows(path, is_features, f"[{i + 1}/{len(paths)}]", {})
    ]
    return run.finish(rows, "checkpoints")


def track(
    paths: str | os.PathLike | Sequence,
    data: str | None = None,
    *,
    errors: str = "note",
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Measure a checkpoint series ordered by step: one row per checkpoint, with ``step``.

    ``paths`` are checkpoints of one run or folders holding them; steps are read as
    :func:`infoprobe.checkpoints.series_plan` reads them (aliases of a step left out).
    Failures, outputs, ``layers`` and ``resume`` as for :func:`analyze`; a checkpoint whose
    step cannot be read comes last, with the number in its file name as its step (if any).
    """
    given = _as_list(paths)
    opts = prepared("track", {"data": data, **options})
    plan = ckpts.series_plan(given, trust_checkpoint=opts.trust_checkpoint)
    for path, why in plan.skipped:
        say(log, f"skipping {path}: {why}")
    if plan.note:
        say(log, f"note: {plan.note}")
    series = [(str(p), step) for p, step in plan.steps]
    unreadable = [(str(p), e) for p, e in plan.unreadable]
    run = _Measured(
        "track",
        opts,
        [p for p, _ in series],
        given,
        errors,
        len(series) + len(unreadable),
        progress,
        log,
        on_row,
    )
    rows = [
        row
        for i, ((path, step), is_features) in enumerate(zip(series, run.features, strict=True))
        for row in run.rows(
            path, is_features, f"[{i + 1}/{len(series)}] step {step}:", {"step": step}
        )
    ]
    for path, error in unreadable:
        step = ckpts.name_number(Path(path))
        rows += run.done({"step": step, **run.failures.row(path, error)})
    return run.finish(rows, "training run")
