"""Where a run's rows go: the CSV as rows finish (with the resume record beside it), the
per-class CSV, the JSON document and the figure. Under torchrun only rank 0 writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infoprobe.api.common import Log, is_main, say
from infoprobe.errors import InputError
from infoprobe.options import RunOptions
from infoprobe.parsing import VALUE_TOL, per_class_csv
from infoprobe.record import check_resumed, read_record
from infoprobe.report.files import (
    STDOUT,
    atomic_write_text,
    json_text,
    read_csv_rows,
    run_payload,
    write_csv,
    write_json,
)
from infoprobe.report.text import format_value
from infoprobe.rows import is_measured
from infoprobe.schema import PER_CLASS_COLUMNS

Key = Callable[[Mapping], Any]


def by_checkpoint(row: Mapping) -> Any:
    return str(row["checkpoint"])


def by_checkpoint_and_layer(row: Mapping) -> Any:
    """Layer rows: one per checkpoint and layer (a failed checkpoint's row has none)."""
    layer = row.get("layer")
    return str(row["checkpoint"]), "" if layer is None or layer != layer else str(layer)


def by_point(column: str) -> Key:
    """Rows of a sweep are one point when their ``column`` values are within VALUE_TOL."""
    return lambda row: round(float(row[column]) / VALUE_TOL)


class RowsLog:
    """The rows of a run, kept in ``--csv FILE`` as they finish.

    The file is rewritten atomically after every row, so an interrupted run keeps its
    finished rows; the run record (:mod:`infoprobe.record`) is written beside it as
    ``FILE.run.json`` with the first row. With ``resume`` the rows already in the file are
    read back (a file holding one point twice, or rows of another run, is refused before
    any work) and :meth:`finished` lists those that hold numbers; ``sources(row)`` names the
    checkpoints a row was measured on, whose identity must not have changed. Without a file
    the rows stay in memory.
    """

    def __init__(
        self,
        opts: RunOptions,
        columns: Sequence[str],
        key: Key,
        name: str,
        record: dict,
        sources: Callable[[Mapping], list[str]],
        log: Log | None,
    ) -> None:
        csv = opts.csv
        self.path = None if csv in (None, STDOUT) else Path(csv).expanduser()
        self.columns, self.key, self.record = tuple(columns), key, record
        self.rows: list[dict] = []
        self._recorded = False
        if opts.resume and self.path is not None and self.path.exists():
            self.rows = read_csv_rows(self.path, self.columns)
            _check_unique(self.rows, key, name, self.path)
            finished = {c for r in self.rows if is_measured(r) for c in sources(r)}
            if self.rows:
                recorded = read_record(self.record_path)
                self.record = check_resumed(
                    recorded,
                    record,
                    finished,
                    str(csv),
                    completes=key in (by_checkpoint, by_checkpoint_and_layer),
                )
            if self.finished():
                say(log, f"resuming: {len(self.finished())} finished rows in {csv}")
        if not is_main():
            self.path = None  # every process reads the finished rows; rank 0 writes

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + ".run.json")

    def finished(self) -> dict[Any, dict]:
        """The rows that hold numbers, by key (error rows are measured again)."""
        return {self.key(r): r for r in self.rows if is_measured(r)}

    def add(self, *rows: dict) -> None:
        """Record finished rows (each replacing an earlier one with its key) and rewrite the
        file once, the run record first: a checkpoint's layer rows are written together."""
        keys = {self.key(row) for row in rows}
        self.rows = [r for r in self.rows if self.key(r) not in keys]
        self.rows += [{c: row.get(c) for c in self.columns} for row in rows]
        if self.path is None:
            return
        if not self._recorded:
            atomic_write_text(self.record_path, json_text(self.record))
            self._recorded = True
        write_csv(self.path, self.rows, self.columns)

    def rewrite(self, rows: Sequence[dict]) -> None:
        """Write the rows in their final order (the run's order, resumed rows included)."""
        self.rows = [{c: row.get(c) for c in self.columns} for row in rows]
        if self.path is not None and self.rows:
            write_csv(self.path, self.rows, self.columns)


def _check_unique(rows: Sequence[dict], key: Key, name: str, path: Path) -> None:
    seen: dict[Any, dict] = {}
    for row in rows:
        k = key(row)
        if k in seen:
            raise InputError(
                f"--resume: {path} holds {name} {format_value(name, row.get(name))} twice: it "
                "was edited or merged from two runs; keep one row per point or write to "
                "another --csv"
            )
        seen[k] = row


class PerClassLog:
    """analyze's per-class rows in ``FILE.per_class.csv``, written with each checkpoint
    (before its row joins the main CSV, so every finished checkpoint has them); on
    ``--resume`` the rows of finished checkpoints are kept."""

    def __init__(self, opts: RunOptions, finished: Sequence[str]) -> None:
        self.path = None
        self.rows: list[dict] = []
        if opts.per_class and opts.csv not in (None, STDOUT) and is_main():
            self.path = Path(per_class_csv(opts.csv)).expanduser()
        if opts.per_class and opts.resume and opts.csv not in (None, STDOUT):
            target = Path(per_class_csv(opts.csv)).expanduser()
            if finished and not target.exists():
                raise InputError(
                    f"--resume --per-class: {target} is missing, so the finished checkpoints "
                    "have no per-class rows; remove the CSV or write to another --csv"
                )
            kept = read_csv_rows(target, PER_CLASS_COLUMNS) if target.exists() else []
            self.rows = [r for r in kept if str(r["checkpoint"]) in set(finished)]

    def add(self, rows: Sequence[dict]) -> None:
        self.rows += rows
        if self.path is not None:
            write_csv(self.path, self.rows, PER_CLASS_COLUMNS)


def plot_title(rows: Sequence[dict], opts: RunOptions, what: str) -> str:
    """A figure's title: what was measured, the model (arch) and the data."""
    model = next((r["model"] for r in rows if r.get("model")), None) or "model"
    data = "/".join(Path(str(opts.data)).parts[-2:]) if opts.data else "features files"
    return f"{what}\n{model} on {data}"


def write_outputs(
    command: str,
    rows: Sequence[dict],
    columns: Sequence[str],
    opts: RunOptions,
    log: Log | None,
    title: str,
    **extra: Any,
) -> None:
    """The JSON document and the figure of a finished run (rank 0); the CSV to stdout."""
    if not is_main():
        return
    if opts.csv == STDOUT:
        write_csv(STDOUT, rows, columns)
    if opts.json_out is not None:
        write_json(opts.json_out, run_payload(command, rows, columns, **extra))
    if opts.plot is not None and rows:
        from infoprobe.report.plots import plot_rows

        plot_rows(command, rows, opts.plot, title=title)
    for target in (opts.csv, opts.json_out, opts.plot):
        if target not in (None, STDOUT):
            say(log, f"wrote {target}")
