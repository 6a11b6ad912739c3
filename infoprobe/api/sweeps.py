"""``lmc`` (one row per interpolation point) and ``prune`` (one row per pruning ratio)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pandas as pd

from infoprobe import checkpoints as ckpts
from infoprobe import probe
from infoprobe.api.common import (
    Log,
    OnRow,
    check_inputs,
    columns,
    eval_kwargs,
    frame,
    load_data,
    load_kwargs,
    measure_options,
    prepared,
    same_data,
    say,
)
from infoprobe.api.outputs import RowsLog, by_point, plot_title, write_outputs
from infoprobe.options import RunOptions
from infoprobe.paths import PathRegistry
from infoprobe.record import run_record
from infoprobe.report.text import format_value
from infoprobe.rows import model_columns
from infoprobe.sweeps import lmc as lmc_lib
from infoprobe.sweeps import prune as prune_lib
from infoprobe.sweeps.finetune import options_of

__all__ = ["lmc", "prune"]


class _Sweep:
    """What both sweeps share: the checked paths, the rows log (resumed rows kept), the one
    model and its data, and each new row logged as it finishes."""

    def __init__(
        self,
        command: str,
        opts: RunOptions,
        sources: list[str],
        key: str,
        progress: Any,
        log: Log | None,
        on_row: OnRow | None,
    ) -> None:
        check_inputs(sources, opts, allow_features=False)
        PathRegistry.of(command, opts, sources).check()
        record = run_record(command, opts, sources) if opts.csv not in (None, "-") else {}
        self.command, self.opts, self.key = command, opts, key
        self.progress, self.log, self.on_row = progress, log, on_row
        self.rows_log = RowsLog(
            opts, columns(command), by_point(key), key, record, lambda _: sources, log
        )
        self.done = list(self.rows_log.finished().values())
        self.loaded = ckpts.load_model(sources[0], **load_kwargs(opts))

    @property
    def skip(self) -> list[float]:
        return [float(row[self.key]) for row in self.done]

    def data(self, spec: str, split: str | None, max_samples: int | None) -> Any:
        """``spec`` read for the swept model."""
        return load_data(
            self.opts,
            spec,
            self.loaded.model,
            self.progress,
            split=split,
            max_samples=max_samples,
            log=self.log,
        )

    def collect(self, rows: Iterator[dict], dataset: Any, total: int) -> list[dict]:
        """Finished rows plus the new ones (with the swept model's columns), in order."""
        model = model_columns(self.loaded.arch, self.loaded.model, dataset.inputs)
        out = [dict(row) for row in self.done]
        for row in rows:
            row = {**row, **model}
            self.rows_log.add(row)
            out.append(row)
            if self.on_row is not None:
                self.on_row(row)
            say(self.log, _progress_line(row, self.key, len(out), total))
        out.sort(key=lambda row: float(row[self.key]))
        self.rows_log.rewrite(out)
        return out

    def finish(self, rows: list[dict], what: str, **attrs: Any) -> pd.DataFrame:
        record = self.rows_log.record or None
        write_outputs(
            self.command,
            rows,
            columns(self.command),
            self.opts,
            self.log,
            plot_title(rows, self.opts, what),
            options=record,
            data=self.opts.data,
            **attrs,
        )
        return frame(self.command, rows, data=self.opts.data, **attrs)


def _progress_line(row: dict, key: str, done: int, total: int) -> str:
    tuned = row.get("ft_accuracy")
    after = (
        ""
        if tuned is None or tuned != tuned
        else f"; fine-tuned: accuracy {tuned:.4f}, mir {format_value('mir', row['ft_mir'])}"
    )
    return (
        f"[{done}/{total}] {key} {format_value(key, row[key])}: accuracy "
        f"{row['accuracy']:.4f}, mir {format_value('mir', row['mir'])}{after}"
    )


def lmc(
    a: str | os.PathLike,
    b: str | os.PathLike,
    data: str | None = None,
    *,
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Linear mode connectivity ``theta(alpha) = (1-alpha) A + alpha B``: one row per alpha.

    ``options`` are lmc's :class:`~infoprobe.options.RunOptions` fields (``steps`` or
    ``alphas``, ``reset_bn`` with ``bn_data``...). ``attrs["barriers"]`` holds the loss and
    accuracy barriers (:func:`infoprobe.sweeps.lmc.barriers`). With ``csv`` and ``resume``
    the finished points are kept and the others computed.
    """
    a, b = os.fspath(a), os.fspath(b)
    opts = prepared("lmc", {"data": data, **options})
    points = lmc_lib.parse_alphas(opts.steps, opts.alphas)
    sweep = _Sweep("lmc", opts, [a, b], "alpha", progress, log, on_row)
    # A is read once: the sweep clones the model's own state (lmc_sweep handles aliasing)
    state_a = sweep.loaded.model.state_dict()
    state_b, _ = ckpts.read_state_dict(
        b, ema=opts.ema, strip_prefix=opts.strip_prefix, trust_checkpoint=opts.trust_checkpoint
    )
    lmc_lib.check_compatible(state_a, state_b, a, b)
    dataset = sweep.data(opts.data, opts.split, opts.max_samples)
    # K batches are all a reset reads, so decode no more than that
    limit = opts.bn_batches * opts.batch_size if opts.bn_batches else None
    bn_set = sweep.data(opts.bn_data, opts.bn_split, limit) if opts.reset_bn else None
    rows = sweep.collect(
        lmc_lib.lmc_sweep(
            sweep.loaded.model,
            state_a,
            state_b,
            dataset,
            points,
            name=f"{a}→{b}",
            eval_kwargs=eval_kwargs(opts),
            measure=measure_options(opts),
            bn_data=bn_set,
            bn_batches=opts.bn_batches,
            bn_seed=opts.seed,
            skip=sweep.skip,
            progress=progress,
        ),
        dataset,
        len(points),
    )
    return sweep.finish(
        rows,
        f"lmc {os.path.basename(a)} → {os.path.basename(b)}",
        transform=dataset.transform,
        a=a,
        b=b,
        reset_bn=opts.reset_bn,
        barriers=lmc_lib.barriers(rows),
    )


def prune(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    *,
    progress: probe.ProgressSink | None = None,
    log: Log | None = None,
    on_row: OnRow | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Unstructured pruning sweep: one row per ratio, fine-tuned with ``finetune_data``.

    ``options`` are prune's :class:`~infoprobe.options.RunOptions` fields (``ratios`` is
    required; ``finetune_data`` is read like ``data``, with ``finetune_split``).
    ``attrs["finetune"]`` holds the fine-tuning options used (with ``data``), None without
    fine-tuning. With ``csv`` and ``resume`` the finished ratios are kept.
    """
    checkpoint = os.fspath(checkpoint)
    opts = prepared("prune", {"data": data, **options})
    tune = options_of(opts)
    sweep = _Sweep("prune", opts, [checkpoint], "ratio", progress, log, on_row)
    dataset = sweep.data(opts.data, opts.split, opts.max_samples)
    train = _finetune_set(sweep) if tune is not None else None
    rows = sweep.collect(
        prune_lib.prune_sweep(
            sweep.loaded.model,
            dataset,
            opts.ratios,
            method=opts.method,
            include_head=opts.include_head,
            seed=opts.seed,
            iterative=opts.iterative,
            dense_metrics=opts.dense_metrics,
            name=checkpoint,
            eval_kwargs=eval_kwargs(opts),
            measure=measure_options(opts),
            finetune_data=train,
            finetune_options=tune,
            skip=sweep.skip,
            progress=progress,
        ),
        dataset,
        len(opts.ratios),
    )
    how = "no fine-tuning" if tune is None else f"fine-tuned {tune.epochs} epoch(s)"
    record = None if tune is None else {"data": opts.finetune_data, **tune.record()}
    return sweep.finish(
        rows,
        f"prune {os.path.basename(checkpoint)}: {opts.method}, {how}",
        transform=dataset.transform,
        method=opts.method,
        include_head=opts.include_head,
        iterative=opts.iterative,
        finetune=record,
    )


def _finetune_set(sweep: _Sweep) -> Any:
    """prune's ``--finetune-data``, all of it; a warning when it is the evaluation data."""
    opts = sweep.opts
    if same_data(opts.finetune_data, opts.finetune_split, opts.data, opts.split):
        say(
            sweep.log,
            "warning: --finetune-data is the evaluation data (--data): the fine-tuned rows are "
            "measured on the samples they were trained on",
        )
    return sweep.data(opts.finetune_data, opts.finetune_split, None)
