"""Rendering: progress on stderr; rows -> rich tables, CSV, JSON and plots.

This is the only formatting code; only this module and cli.py import rich. Output files are
written atomically (a temporary file in the same folder, then ``os.replace``); '-' means
standard output. A sweep's CSV is rewritten after every finished row (:class:`SweepCsv`), so
an interrupted sweep keeps its rows and ``--resume`` can skip them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from infoprobe.errors import InputError, unwritable
from infoprobe.rows import FT_COLUMNS, INT_COLUMNS, rows_frame

__all__ = [
    "STDOUT",
    "RichProgress",
    "SweepCsv",
    "atomic_write",
    "atomic_write_text",
    "check_output",
    "check_plot_path",
    "csv_text",
    "format_value",
    "json_text",
    "jsonable",
    "plot_lmc",
    "plot_prune",
    "plot_text",
    "plot_track",
    "printable",
    "read_csv_rows",
    "render_barriers",
    "render_rows",
    "require_matplotlib",
    "row_notes",
    "rows_frame",
    "short_names",
    "transform_caption",
    "run_payload",
    "write_csv",
    "write_json",
]


class RichProgress:
    """A :class:`infoprobe.probe.ProgressSink` drawing a transient rich bar on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal, so logs and pipes stay
    clean. One bar at a time: ``start`` opens it, ``advance`` moves it, ``stop`` removes it.
    Usable as a context manager, which guarantees ``stop``.
    """

    def __init__(self, *, enabled: bool | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, emoji=False)
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self.completed = 0
        self.total = 0

    def start(self, total: int, description: str) -> None:
        self.stop()
        self.completed, self.total = 0, int(total)
        self._progress = Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.enabled,
        )
        self._progress.start()
        self._task = self._progress.add_task(printable(description), total=self.total)

    def advance(self, n: int) -> None:
        self.completed += int(n)
        if self._progress is not None:
            self._progress.advance(self._task, int(n))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# =========================================================================================
# Rows -> rich tables, CSV, JSON and plots (the only formatting code; cli.py calls it)
# =========================================================================================

#: The file name that means standard output for --csv / --json.
STDOUT = "-"

#: Columns shown with four decimals in tables (CSV keeps full precision).
_INT_COLUMNS = INT_COLUMNS
_SHORT_FLOAT_COLUMNS = frozenset({"alpha", "ratio"})
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
)
#: ``note`` is printed under the table; error bars go into the cells they belong to
#: (``mir`` shows ``value ± mir_err``); top1/top5 are the percent copies of
#: accuracy/accuracy_top5. The CSV and JSON keep them all as columns.
_HIDDEN_COLUMNS = frozenset({"note", "h_zw_err", "mi_err", "mir_err", "mir_lower", "top1", "top5"})
_TEXT_COLUMNS = frozenset({"checkpoint", "name", "model"})
#: Columns a table keeps however narrow the console.
_KEPT_COLUMNS = frozenset(
    {"checkpoint", "model", "alpha", "ratio", "step", "class", "name", "accuracy", "mir", "hdr"}
)
#: Columns left out first, in this order, while a table is wider than the console.
_DROP_ORDER = (
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
)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def format_value(column: str, value: Any) -> str:
    """A cell for a human: ints plain, alpha/ratio short, other floats with 4 decimals."""
    if value is None or _is_nan(value):
        return "nan"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column in _INT_COLUMNS or isinstance(value, int):
        return f"{int(value)}"
    value = value + 0.0  # -0.0 -> 0.0: an entropy of -0 reads as a sign error
    if column in _SHORT_FLOAT_COLUMNS:
        return f"{value:.6g}"
    return f"{value:.4f}"


def row_notes(rows: Sequence[dict], label: str = "checkpoint") -> list[str]:
    """One line per distinct non-empty ``note``, naming the rows it applies to."""
    by_note: dict[str, list[str]] = {}
    names = (
        short_names([str(r.get(label)) for r in rows])
        if label == "checkpoint"
        else [f"{label} {format_value(label, r.get(label))}" for r in rows]
    )
    for row, name in zip(rows, names, strict=True):
        note = row.get("note") or ""
        if isinstance(note, str) and note:
            by_note.setdefault(note, []).append(name)
    return [f"{', '.join(where)}: {note}" for note, where in by_note.items()]


def _constant(rows: Sequence[dict], column: str) -> bool:
    values = [format_value(column, row.get(column)) for row in rows]
    return bool(values) and all(v == values[0] for v in values)


def short_names(paths: Sequence[str]) -> list[str]:
    """The shortest distinct trailing parts of ``paths``, without a suffix they all share.

    ``["runs/a/last.pt", "runs/b/last.pt"]`` -> ``["a/last", "b/last"]``: tables stay
    narrow while every row remains identifiable (the CSV keeps the full paths).
    """
    parts = [Path(str(p)).parts or (str(p),) for p in paths]
    suffixes = {Path(str(p)).suffix for p in paths}
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            break
    if len(suffixes) == 1 and suffixes != {""}:
        suffix = suffixes.pop()
        names = [n[: -len(suffix)] if n.endswith(suffix) else n for n in names]
    return names


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
    further caption line (the evaluation transform).
    """
    constant = [c for c in _CAPTION_COLUMNS if c in columns and _constant(rows, c)]
    if all(r.get("classes_present") == r.get("n_classes") for r in rows):
        constant = [c for c in constant if c != "classes_present"]  # nothing to report
        columns = [c for c in columns if c != "classes_present"]
    hidden = set(constant) | _HIDDEN_COLUMNS
    # a prune sweep without fine-tuning: its ft_* columns are empty, not worth a column each
    hidden |= {c for c in FT_COLUMNS if all(_is_nan(r.get(c, math.nan)) for r in rows)}
    if "checkpoint" in constant:
        constant.remove("checkpoint")  # the title names the one checkpoint of a sweep
        if key is None and len(rows) == 1:
            hidden.discard("checkpoint")  # a one-row table keeps its checkpoint in view
    shown = [c for c in columns if c not in hidden]
    if "name" in shown and all(str(r.get("name")) == str(r.get("class")) for r in rows):
        shown.remove("name")  # class names that are just the indices
    shared = ", ".join(f"{c}={format_value(c, rows[0][c])}" for c in constant)
    caption = "\n".join(printable(line) for line in filter(None, [shared, caption]))
    labels = [printable(label) for label in short_names([str(r.get("checkpoint")) for r in rows])]
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


def printable(text: str) -> str:
    """``text`` with every non-printable character (terminal escapes, carriage returns,
    bidirectional overrides) written as its Python escape, e.g. ESC as ``\\x1b``: names
    from files (paths, class names, a recorded architecture) cannot rewrite the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def plot_text(text: str) -> str:
    """``text`` for a matplotlib title: '$' is literal, not the start of mathtext."""
    return printable(text).replace("$", r"\$")


def transform_caption(transform: dict | None) -> str | None:
    """``transform: 3x224x224, crop_pct=0.95 (center), bicubic, mean=(..), std=(..)`` for a
    ``data.transform_record``, one line per checkpoint for a dict of them; None for None."""
    if not transform:
        return None

    def line(t: dict) -> str:
        def numbers(values: Sequence[float]) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        return (
            f"{'x'.join(str(v) for v in t['input_size'])}, crop_pct={t['crop_pct']:g} "
            f"({t['crop_mode']}), {t['interpolation']}, mean={numbers(t['mean'])}, "
            f"std={numbers(t['std'])}"
        )

    if "input_size" in transform:
        return f"transform: {line(transform)}"
    return "\n".join(
        f"transform of {path}: {line(t)}" for path, t in transform.items() if t is not None
    )


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
    for row, label in zip(rows, labels, strict=True):
        table.add_row(
            *(Text(label) if c == "checkpoint" else _cell(c, row.get(c), row) for c in shown)
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


# ----------------------------------------------------------------------- output paths


def check_output(path: str | os.PathLike | None, flag: str) -> None:
    """Raise :class:`InputError` unless ``path`` can be written ('-' and None pass).

    Called before any computation, so that a typo in an output path costs nothing.
    """
    if path is None or str(path) == STDOUT:
        return
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{flag} {p}: is a directory; give a file name")
    if not parent.is_dir():
        raise InputError(f"{flag} {p}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {p}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{flag} {p}: the file exists and is not writable")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    Readers never see a half-written file, and an interrupted write leaves the previous
    file intact: the temporary file lives in the same folder, so ``os.replace`` is atomic.
    An output that became unwritable during the run (folder removed, permissions, disk
    full) raises :class:`RunFailure` naming the file, at the write that failed.
    """
    p = Path(path).expanduser()
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, p)
    except OSError as e:
        raise unwritable(p, e) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the folder may be gone
                tmp.unlink(missing_ok=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------- CSV


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header of ``columns``; floats round-trip exactly, NaN is an empty cell."""
    return rows_frame(rows, columns).to_csv(index=False, lineterminator="\n")


def write_csv(
    target: str | os.PathLike,
    rows: Sequence[dict],
    columns: Sequence[str],
    stream: TextIO | None = None,
) -> None:
    """Write rows to ``target`` atomically, or to ``stream`` (stdout) when target is '-'."""
    text = csv_text(rows, columns)
    if str(target) == STDOUT:
        (stream or sys.stdout).write(text)
    else:
        atomic_write_text(target, text)


def read_csv_rows(path: str | os.PathLike, columns: Sequence[str]) -> list[dict]:
    """Rows of a CSV written by :func:`write_csv` with the same ``columns``.

    Raises :class:`InputError` when the file has other columns (another command's output,
    or not infoprobe's). Empty notes come back as '' and integer columns as ints.
    """
    p = Path(path).expanduser()
    try:
        frame = pd.read_csv(p, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return []
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p} to resume ({e}); remove it or drop --resume") from None
    if list(frame.columns) != list(columns):
        raise InputError(
            f"{p} has columns {list(frame.columns)[:6]}..., not this command's "
            f"{list(columns)[:6]}...: it was written by another command; remove it or drop "
            "--resume"
        )
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [_typed(row) for row in records]


def _typed(row: dict) -> dict:
    out = {}
    for column, value in row.items():
        if column in ("note", "checkpoint", "estimate", "model") and value is None:
            value = ""
        elif value is None:
            value = math.nan
        elif column in _INT_COLUMNS and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[column] = value
    return out


class SweepCsv:
    """The CSV of a sweep, rewritten atomically after every finished row.

    An interrupted sweep thus keeps its finished rows, and ``resume=True`` starts from the
    rows already in the file: :attr:`done` holds their ``key`` values (alpha, ratio) so
    the sweep can skip them. ``path=None`` or '-' keeps the rows in memory only.

    ``run`` is what decides the rows' numbers (:func:`infoprobe.api.run_record`). It is
    written beside the CSV as ``FILE.run.json`` with the first row, and a resumed CSV is
    accepted only when that file holds the same record, so rows of another run (another
    method, seed, data...) are never merged. A resumed CSV that holds one point twice is
    refused before any work.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        columns: Sequence[str],
        key: str,
        *,
        resume: bool = False,
        run: dict | None = None,
    ) -> None:
        self.path = None if path is None or str(path) == STDOUT else Path(path).expanduser()
        self.columns = tuple(columns)
        self.key = key
        self.run = run
        self.rows: list[dict] = []
        self._recorded = False
        if resume and self.path is not None and self.path.exists():
            self.rows = read_csv_rows(self.path, self.columns)
            _check_unique(self.rows, key, self.path)
            if self.rows and run is not None:
                _check_same_run(self.run_path, run, self.path)
                self._recorded = True

    @property
    def run_path(self) -> Path | None:
        """``FILE.run.json``, the record of the options that wrote ``FILE``."""
        return None if self.path is None else self.path.with_name(self.path.name + ".run.json")

    @property
    def done(self) -> tuple[float, ...]:
        """The key values of the finished rows."""
        return tuple(float(row[self.key]) for row in self.rows)

    def add(self, row: dict) -> None:
        """Record one finished row and rewrite the file (the run record first, once). A row
        for a key already present replaces it (a resumed run measuring a failed one again)."""
        self.rows = [r for r in self.rows if r[self.key] != row[self.key]]
        self.rows.append({c: row.get(c) for c in self.columns})
        if self.path is None:
            return
        if self.run is not None and not self._recorded:
            atomic_write_text(self.run_path, json_text(self.run))
            self._recorded = True
        write_csv(self.path, self.rows, self.columns)

    def sorted_rows(self) -> list[dict]:
        """The rows ordered by their key (resumed rows interleave with new ones)."""
        return sorted(self.rows, key=lambda row: float(row[self.key]))


def _check_unique(rows: Sequence[dict], key: str, path: Path) -> None:
    """InputError when two rows hold one point (numbers within VALUE_TOL are one point)."""
    from infoprobe.sweeps import VALUE_TOL

    values = [row[key] for row in rows]
    if all(isinstance(v, (int, float)) for v in values):
        ordered = sorted(float(v) for v in values)
        twice = [b for a, b in zip(ordered, ordered[1:], strict=False) if b - a <= VALUE_TOL]
    else:
        twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise InputError(
            f"--resume: {path} holds {key} {format_value(key, twice[0])} twice: it was edited "
            "or merged from two runs; keep one row per point or write to another --csv"
        )


def _check_same_run(record_path: Path, run: dict, path: Path) -> None:
    """InputError unless ``record_path`` holds ``run``, naming the options that differ."""
    try:
        recorded = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"--resume: {record_path.name}, which records the options of the run that wrote "
            f"{path}, is missing, so its rows cannot be checked; remove {path} or write to "
            "another --csv"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"--resume: cannot read {record_path} ({e}); remove it and "
            f"{path}, or write to another --csv"
        ) from None
    want = jsonable(run)
    if not isinstance(recorded, dict):
        recorded = {}
    differ = [k for k in sorted(set(want) | set(recorded)) if want.get(k) != recorded.get(k)]
    if differ:
        shown = "; ".join(
            f"{_flag(k)} {_option_text(want.get(k))} now, "
            f"{_option_text(recorded.get(k))} in {path.name}"
            for k in differ[:4]
        )
        raise InputError(
            f"--resume: the rows in {path} come from another run, with other options ({shown}); "
            "rerun with the same options, or write to another --csv"
        )


def _flag(key: str) -> str:
    positional = ("command", "a", "b", "checkpoint", "checkpoints", "paths")
    return key if key in positional else "--" + key.replace("_", "-")


def _option_text(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


# ----------------------------------------------------------------------- JSON


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None (valid JSON), paths as str, tensors/numpy as Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(payload: dict) -> str:
    """Pretty, strict JSON (no NaN tokens) ending in a newline."""
    return json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"


def write_json(target: str | os.PathLike, payload: dict, stream: TextIO | None = None) -> None:
    """Write ``payload`` to ``target`` atomically, or to ``stream`` (stdout) for '-'."""
    text = json_text(payload)
    if str(target) == STDOUT:
        (stream or sys.stdout).write(text)
    else:
        atomic_write_text(target, text)


def run_payload(command: str, rows: Sequence[dict], columns: Sequence[str], **extra: Any) -> dict:
    """The JSON document of a run: command, estimate, n_samples, columns, rows, ``extra``.

    ``estimate`` and ``n_samples`` are single values when every row shares them, else lists.
    """

    def shared(column: str) -> Any:
        values = [row.get(column) for row in rows]
        return values[0] if values and all(v == values[0] for v in values) else values

    from infoprobe import __version__

    return {
        "command": command,
        "infoprobe_version": __version__,
        "estimate": shared("estimate"),
        "n_samples": shared("n_samples"),
        "columns": list(columns),
        "rows": [{c: row.get(c) for c in columns} for row in rows],
        **extra,
    }


# ----------------------------------------------------------------------- plots


def require_matplotlib(flag: str = "--plot") -> None:
    """Raise :class:`InputError` when matplotlib (the optional ``plot`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"{flag} needs matplotlib: pip install 'infoprobe[plot]'") from None


def check_plot_path(path: str | os.PathLike, flag: str = "--plot") -> None:
    """Check matplotlib, the file type and the folder before any computation."""
    require_matplotlib(flag)
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise InputError(
            f"{flag} {path}: unknown image type '.{suffix}'; use one of "
            f"{', '.join('.' + k for k in sorted(kinds))}"
        )
    check_output(path, flag)


def _save_figure(figure: Any, path: str | os.PathLike) -> Path:
    fmt = Path(path).suffix.lower().lstrip(".")
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=120))


def _series(rows: Sequence[dict], x: str, y: str) -> tuple[list, list]:
    ordered = sorted(rows, key=lambda row: float(row[x]))
    return [row[x] for row in ordered], [row[y] for row in ordered]


def _nc_reference(axis: Any, rows: Sequence[dict]) -> None:
    """Horizontal lines at the neural-collapse optimum (MIR_NC, and HDR = 0)."""
    mir_nc = [row["mir_nc"] for row in rows if not _is_nan(row.get("mir_nc", math.nan))]
    if mir_nc:
        axis.axhline(
            mir_nc[0],
            color="C0",
            linestyle="--",
            linewidth=1,
            label=f"MIR at neural collapse ({mir_nc[0]:.3f})",
        )
        axis.axhline(0.0, color="C1", linestyle=":", linewidth=1, label="HDR at neural collapse")


def _legend(axis: Any, *others: Any) -> None:
    """One legend above ``axis`` (with the lines of twin axes ``others``), outside the
    plotting area, so that it never covers data."""
    handles, labels = axis.get_legend_handles_labels()
    for other in others:
        more = other.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axis.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.02),
        ncol=2,
        fontsize="small",
        frameon=False,
    )


def _title(fig: Any, title: str, default: str) -> None:
    """The figure's title; each line of ``title`` is shown literally."""
    fig.suptitle("\n".join(plot_text(line) for line in title.split("\n")) if title else default)


def track_figure(rows: Sequence[dict], title: str = "") -> Any:
    """MIR, HDR and accuracy against training step, with the NC optimum for reference."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for column, style in (("mir", "o-"), ("hdr", "s-"), ("accuracy", "^-")):
        ax.plot(
            *_series(rows, "step", column),
            style,
            label=column.upper() if column != "accuracy" else "accuracy",
        )
    _nc_reference(ax, rows)
    ax.set_xlabel("training step")
    ax.set_ylabel("MIR, HDR, accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax)
    _title(fig, title, "information interplay over training")
    return fig


def plot_track(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`track_figure` saved to ``path``."""
    return _save_figure(track_figure(rows, title), path)


def lmc_figure(rows: Sequence[dict], title: str = "") -> Any:
    """Loss and accuracy against alpha (left), MIR and HDR against alpha (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(*_series(rows, "alpha", "loss"), "o-", color="C3", label="loss")
    left.set_ylabel("loss (nats)")
    twin = left.twinx()
    twin.plot(*_series(rows, "alpha", "accuracy"), "^-", color="C2", label="accuracy")
    twin.set_ylabel("accuracy")
    _legend(left, twin)
    right.plot(*_series(rows, "alpha", "mir"), "o-", label="MIR")
    right.plot(*_series(rows, "alpha", "hdr"), "s-", label="HDR")
    _nc_reference(right, rows)
    right.set_ylabel("MIR, HDR")
    _legend(right)
    for ax in (left, right):
        ax.set_xlabel("α (weight of B in (1-α)·A + α·B)")
        ax.grid(alpha=0.3)
    _title(fig, title, "linear mode connectivity")
    return fig


def plot_lmc(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`lmc_figure` saved to ``path``."""
    return _save_figure(lmc_figure(rows, title), path)


def prune_figure(rows: Sequence[dict], title: str = "") -> Any:
    """Accuracy, and MIR/HDR against the head and the dense features, vs measured sparsity.

    Rows of a fine-tuned sweep get a second line per quantity: solid before fine-tuning,
    dashed after (the ``ft_`` columns), with MIR/HDR vs the head and vs the dense features
    on two panels. Without fine-tuning: two panels, accuracy and all four ratios. The panel
    with MIR against the head has the neural-collapse optimum as reference.
    """
    from matplotlib.figure import Figure

    tuned = not all(_is_nan(row.get("ft_accuracy", math.nan)) for row in rows)
    # the measured sparsity; the requested ratio for rows without it
    x = "sparsity" if all("sparsity" in row for row in rows) else "ratio"
    fig = Figure(figsize=(14 if tuned else 10, 4.6), layout="constrained")
    axes = fig.subplots(1, 3 if tuned else 2)
    groups = (
        [["accuracy"], ["mir", "hdr"], ["mir_dense", "hdr_dense"]]
        if tuned
        else [["accuracy"], ["mir", "hdr", "mir_dense", "hdr_dense"]]
    )
    styles = {
        "accuracy": ("^", "C2"),
        "mir": ("o", "C0"),
        "hdr": ("s", "C1"),
        "mir_dense": ("o", "C4"),
        "hdr_dense": ("s", "C3"),
    }
    for ax, columns in zip(axes, groups, strict=True):
        for column in columns:
            marker, color = styles[column]
            ax.plot(*_series(rows, x, column), marker + "-", color=color, label=column)
            if tuned:
                ax.plot(
                    *_series(rows, x, f"ft_{column}"),
                    marker + "--",
                    color=color,
                    mfc="none",
                    label=f"ft_{column} (fine-tuned)",
                )
        if "mir" in columns:
            _nc_reference(ax, rows)
        ax.set_xlabel(
            "sparsity (fraction of prunable weights zeroed)"
            if x == "sparsity"
            else "pruning ratio (requested sparsity)"
        )
        ax.set_ylabel("accuracy" if columns == ["accuracy"] else ", ".join(columns))
        ax.grid(alpha=0.3)
        _legend(ax)
    _title(
        fig,
        title,
        "unstructured pruning, before and after fine-tuning"
        if tuned
        else "unstructured pruning (no fine-tuning)",
    )
    return fig


def plot_prune(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`prune_figure` saved to ``path``."""
    return _save_figure(prune_figure(rows, title), path)
