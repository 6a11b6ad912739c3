"""What a command prints: progress and log lines on stderr, the tables on stdout (unless
CSV or JSON go there), and the exit status of a run in which some checkpoints failed."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pandas as pd
from rich.console import Console

from infoprobe.errors import InputError, RunFailure
from infoprobe.report.progress import RichProgress
from infoprobe.report.tables import render_rows
from infoprobe.report.text import printable, transform_caption
from infoprobe.schema import NC_COLUMNS, SWEEP_COLUMNS

__all__ = ["check_failed", "log", "progress", "show"]

#: The table width when stdout is not a terminal and COLUMNS is not set.
_PIPE_WIDTH = 160


def _is_main() -> bool:
    from infoprobe import distributed

    return distributed.is_main()


def stdout() -> Console:
    """The console of the tables: a terminal keeps its width; a pipe or file gets
    ``COLUMNS`` when set, else wide tables rather than folded cells."""
    width = None if sys.stdout.isatty() else _PIPE_WIDTH
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    return Console(highlight=False, emoji=False, width=width)


def log(message: str) -> None:
    """One log line on stderr (rank 0 only), however narrow the terminal."""
    if not _is_main():
        return
    Console(stderr=True, highlight=False, emoji=False, soft_wrap=True).print(
        printable(message), style="dim", markup=False
    )


def progress() -> RichProgress:
    return RichProgress(enabled=None if _is_main() else False)


def show(
    frame: pd.DataFrame,
    options: dict,
    *,
    title: str,
    key: str | None = None,
    after: Callable[[Console], None] | None = None,
) -> None:
    """The rows as two tables that fit the terminal, the information measures and then
    NC1-NC4 (each row named by its checkpoint and sweep point; the notes come once), unless
    ``--csv -`` or ``--json -`` write to stdout."""
    if not _is_main() or "-" in (options.get("csv"), options.get("json_out")):
        return
    command = frame.attrs["command"]
    rows = frame.to_dict("records")
    columns = list(frame.columns)  # the command's, with the layer columns under --layers
    console = stdout()
    caption = transform_caption(frame.attrs.get("transform"))
    render_rows(
        console,
        rows,
        [c for c in columns if c not in NC_COLUMNS],
        title=title,
        key=key,
        caption=caption,
    )
    point = list(SWEEP_COLUMNS[command][:1])
    layer = ["layer"] if "layer" in columns else []
    render_rows(
        console,
        [{**r, "note": ""} for r in rows],
        [*point, "checkpoint", *layer, *NC_COLUMNS],
        title="neural collapse",
        key=key,
    )
    if after is not None:
        after(console)


def check_failed(frame: pd.DataFrame, options: dict) -> None:
    """After the output is written: exit non-zero when a checkpoint failed (2 when any failed
    for bad input, else 1), naming the first and how to finish the run."""
    failed = frame.attrs.get("failed") or []
    if not failed:
        return
    csv = options.get("csv")
    kept = csv not in (None, "-")
    how = (
        f"the other rows are in {csv}; fix the checkpoint and rerun with --resume to measure "
        "only the failed ones"
        if kept
        else "with --csv FILE the other rows are kept and --resume measures only the failed ones"
    )
    first = failed[0]
    kind = InputError if max(f["exit_code"] for f in failed) == 2 else RunFailure
    error = kind(
        f"{len(failed)} of {len(frame)} checkpoints failed ({first['checkpoint']}: "
        f"{first['error']}); {how}"
    )
    error.shared = True  # every process holds the same rows: rank 0 alone reports it
    raise error
