"""Rows to rich tables that fit the terminal, with their notes and barriers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infoprobe.report.text import format_value, is_nan, printable, short_names
from infoprobe.schema import FT_COLUMNS

#: Columns that move from the table into its caption when every row holds the same value.
_CAPTION_COLUMNS = (
    "checkpoint",
    "model",
    "param_count",
    "img_size",
    "n_samples",
    "n_classes",
    "classes_present",
    "estimate",
    "n_used",
    "n_batches",
    "mir_nc",
    "hdr_nc",
    "h_y",
)


#: ``note`` is printed under the table; error bars go into the cells they belong to
#: (``mir`` shows ``value ± mir_err``); top1/top5 are the percent copies of
#: accuracy/accuracy_top5. The CSV and JSON keep them all as columns.
_HIDDEN_COLUMNS = frozenset({"note", "h_zw_err", "mi_err", "mir_err", "mir_lower", "top1", "top5"})


_TEXT_COLUMNS = frozenset({"checkpoint", "name", "model", "layer", "pooling"})


#: Columns a table keeps however narrow the console: the names, the sweep's point, and the
#: values a command exists for (accuracy, MIR, HDR; after fine-tuning; NC4 of the NC table).
_KEPT_COLUMNS = frozenset(
    {
        "checkpoint",
        "model",
        "alpha",
        "ratio",
        "step",
        "class",
        "name",
        "layer",
        "accuracy",
        "mir",
        "hdr",
        "ft_accuracy",
        "ft_mir",
        "ft_hdr",
        "nc4",
    }
)


#: Columns left out first, in this order, while a table is wider than the console.
_DROP_ORDER = (
    "pooling",
    "param_count",
    "img_size",
    "accuracy_top5",
    "h_zw",
    "mi",
    "nc4",
    "nc3",
    "nc2_equiangular",
    "nc2_equinorm",
    "h_w",
    "h_z",
    "estimate",
    "n_used",
    "n_batches",
    "mir_dense",
    "hdr_dense",
    "loss",
    "h_z_max",
    "n_samples",
    "layer_dim",
    "h_y",
)


def _checkpoint_names(rows: Sequence[dict]) -> list[str]:
    """Each row's checkpoint by its shortest distinct name (a checkpoint's layer rows share
    one)."""
    paths = [str(r.get("checkpoint")) for r in rows]
    distinct = list(dict.fromkeys(paths))
    short = dict(zip(distinct, short_names(distinct), strict=True))
    return [short[p] for p in paths]


def row_notes(rows: Sequence[dict], label: str = "checkpoint") -> list[str]:
    """One line per distinct non-empty ``note``, naming the rows it applies to (layer rows:
    the layers, once for all checkpoints when the note holds for that layer in each)."""
    by_note: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        note = row.get("note") or ""
        if isinstance(note, str) and note:
            by_note.setdefault(note, []).append(i)
    names = (
        _checkpoint_names(rows)
        if label == "checkpoint"
        else [f"{label} {format_value(label, r.get(label))}" for r in rows]
    )
    layered = bool(rows) and all("layer" in r for r in rows)
    lines = []
    for note, where in by_note.items():
        named = _layer_names(rows, where, names) if layered else ", ".join(names[i] for i in where)
        lines.append(f"{named}: {note}")
    return lines


def _layer_names(rows: Sequence[dict], where: list[int], names: list[str]) -> str:
    """The layers of rows ``where``, without the checkpoint when every checkpoint has the
    note at that layer; a row without a layer (a checkpoint that failed) by its checkpoint."""
    layer = [r.get("layer") for r in rows]
    named = [i for i in where if isinstance(layer[i], str) and layer[i]]
    checkpoints = {str(r.get("checkpoint")) for r in rows}
    found: dict[str, set[str]] = {}
    for i in named:
        found.setdefault(layer[i], set()).add(str(rows[i].get("checkpoint")))
    if named and len(named) == len(where) and all(c == checkpoints for c in found.values()):
        return ", ".join(found)
    return ", ".join(f"{names[i]} {layer[i]}" if i in named else names[i] for i in where)


def _constant(rows: Sequence[dict], column: str) -> bool:
    values = [format_value(column, row.get(column)) for row in rows]
    return bool(values) and all(v == values[0] for v in values)


def render_rows(
    console: Console,
    rows: Sequence[dict],
    columns: Sequence[str],
    *,
    title: str | None = None,
    key: str | None = None,
    caption: str | None = None,
) -> None:
    """Print ``rows`` as a rich table, then the notes that explain NaN cells.

    Values that every row shares (model, sample count, class count, estimate, NC optimum)
    go into the caption (``classes_present`` only when some class has no sample), one
    checkpoint shared by all rows (a sweep, a per-class table) is left to the title,
    checkpoints are shown by their shortest distinct names, and the percent copies of the
    accuracies (``top1``/``top5``) stay in the files. When the table is still wider than the
    console, the columns of :data:`_DROP_ORDER` are left out one by one (a note names them)
    rather than folding the checkpoint names; the CSV and JSON keep every column in full.
    ``key`` names the sweep column (alpha, ratio), which labels the notes. ``caption`` is a
    further caption line (the evaluation transform). Layer rows (a ``layer`` column) are
    grouped by checkpoint: its name on the first of its rows, a line between checkpoints.
    """
    shown, constant = _layout(rows, columns, key)
    shared = ", ".join(f"{c}={format_value(c, rows[0][c])}" for c in constant)
    caption = "\n".join(printable(line) for line in filter(None, [shared, caption]))
    labels = [printable(label) for label in _checkpoint_names(rows)]
    dropped = []
    table = _table(rows, shown, labels, title, caption)
    # then any other column, right to left, but the names and the paper's two ratios
    order = [*_DROP_ORDER, *(c for c in reversed(shown) if c not in _KEPT_COLUMNS)]
    for column in order:
        if _min_width(console, table) <= console.width:
            break
        if column in shown:
            shown.remove(column)
            dropped.append(column)
            table = _table(rows, shown, labels, title, caption)
    console.print(table)
    if dropped:
        console.print(
            f"note: left out to fit {console.width} columns: {', '.join(dropped)} "
            "(--csv/--json have every column)",
            style="dim",
            highlight=False,
            markup=False,
        )
    label = key if key is not None else "checkpoint"
    for line in row_notes(rows, label):
        console.print(f"note: {printable(line)}", style="yellow", highlight=False, markup=False)


def _layout(
    rows: Sequence[dict], columns: Sequence[str], key: str | None
) -> tuple[list[str], list[str]]:
    """(the columns a table shows, the columns every row shares, for its caption)."""
    constant = [c for c in _CAPTION_COLUMNS if c in columns and _constant(rows, c)]
    if all(r.get("classes_present") == r.get("n_classes") for r in rows):
        constant = [c for c in constant if c != "classes_present"]  # nothing to report
        columns = [c for c in columns if c != "classes_present"]
    hidden = set(constant) | _HIDDEN_COLUMNS
    # a prune sweep without fine-tuning: its ft_* columns are empty, not worth a column each
    hidden |= {c for c in FT_COLUMNS if all(is_nan(r.get(c, math.nan)) for r in rows)}
    if "checkpoint" in constant:
        constant.remove("checkpoint")  # the title names the one checkpoint of a sweep
        if key is None and len(rows) == 1:
            hidden.discard("checkpoint")  # a one-row table keeps its checkpoint in view
    shown = [c for c in columns if c not in hidden]
    if "name" in shown and all(str(r.get("name")) == str(r.get("class")) for r in rows):
        shown.remove("name")  # class names that are just the indices
    return shown, constant


def _table(
    rows: Sequence[dict],
    shown: Sequence[str],
    labels: Sequence[str],
    title: str | None,
    caption: str,
) -> Table:
    # Text, not str: a '[' in a path is not rich markup, and control characters are escaped
    table = Table(
        title=Text(printable(title)) if title else None,
        caption=Text(caption) if caption else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in shown:
        text = column in _TEXT_COLUMNS
        # names are never folded: a too-wide table loses columns instead (render_rows)
        table.add_column(
            column,
            justify="left" if text else "right",
            no_wrap=True,
            min_width=None if text else len(column),
        )
    grouped = "layer" in shown
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        first = i == 0 or rows[i - 1].get("checkpoint") != row.get("checkpoint")
        last = i + 1 == len(rows) or rows[i + 1].get("checkpoint") != row.get("checkpoint")
        name = Text(label if first or not grouped else "")
        table.add_row(
            *(name if c == "checkpoint" else _cell(c, row.get(c), row) for c in shown),
            end_section=grouped and last,
        )
    return table


def _min_width(console: Console, table: Table) -> int:
    """The width ``table`` needs with no cell folded."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=10**4), table).maximum


def _cell(column: str, value: Any, row: dict | None = None) -> Text:
    text = format_value(column, value)
    err = (row or {}).get(f"{column}_err")
    if isinstance(err, float) and not math.isnan(err) and text != "nan":
        text = f"{text} ± {format_value(column, err)}"
    return Text(printable(text), style="dim" if text == "nan" else "")


def render_barriers(console: Console, barriers: dict[str, Any]) -> None:
    """The LMC barriers under the table: value and alpha of each, then their note."""
    parts = [
        f"{what} barrier {format_value(what, barriers[f'{what}_barrier'])} at alpha "
        f"{format_value('alpha', barriers[f'{what}_barrier_alpha'])}"
        for what in ("loss", "accuracy")
    ]
    console.print("barriers: " + "; ".join(parts), highlight=False, markup=False)
    if barriers.get("note"):
        console.print(f"note: {barriers['note']}", style="yellow", highlight=False, markup=False)
