"""Rows to files: CSV and JSON, written atomically, and a sweep's CSV kept row by row.

Output files are written atomically (a temporary file in the same folder, then
``os.replace``); '-' means standard output. A sweep's CSV is rewritten after every finished
row (:class:`SweepCsv`), so an interrupted sweep keeps its rows and ``--resume`` can skip them.
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

from infoprobe.errors import InputError, unwritable
from infoprobe.report.text import format_value, from_spreadsheet_cell, spreadsheet_cell
from infoprobe.rows import INT_COLUMNS, rows_frame

#: The file name that means standard output for --csv / --json.
STDOUT = "-"
#: Columns whose text comes from files (paths, recorded names, class names, notes quoting
#: them): their CSV cells are kept from spreadsheet formulas (:func:`spreadsheet_cell`).
UNTRUSTED_TEXT = ("checkpoint", "model", "name", "note", "layer")


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


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header of ``columns``; floats round-trip exactly, NaN is an empty cell,
    and text from files cannot start a spreadsheet formula (:data:`UNTRUSTED_TEXT`). Lines
    end in CRLF (RFC 4180), so that a cell holding a bare CR is quoted, not a row break."""
    frame = rows_frame(rows, columns)
    for column in frame.columns.intersection(UNTRUSTED_TEXT):
        frame[column] = [spreadsheet_cell(v) if isinstance(v, str) else v for v in frame[column]]
    return frame.to_csv(index=False, lineterminator="\r\n")


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
        elif column in UNTRUSTED_TEXT and isinstance(value, str):
            value = from_spreadsheet_cell(value)
        elif value is None:
            value = math.nan
        elif column in INT_COLUMNS and isinstance(value, float) and value.is_integer():
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
