"""Rows to files: CSV and JSON, written atomically, and read back.

Output files are written atomically (a temporary file in the same folder, then
``os.replace``); '-' means standard output.
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
from infoprobe.report.text import from_spreadsheet_cell, spreadsheet_cell
from infoprobe.schema import INT_COLUMNS, TEXT_COLUMNS

#: The file name that means standard output for --csv / --json.
STDOUT = "-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    Readers never see a half-written file, and an interrupted write leaves the previous
    file intact: the temporary file lives in the same folder, so ``os.replace`` is atomic.
    An output that became unwritable during the run (folder removed, permissions, disk
    full) raises :class:`RunFailure` naming the file, at the write that failed.
    """
    # a symbolic link to a regular file is written through; anything else is refused
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_file():
        raise unwritable(p, OSError(0, "it is not a regular file any more"))
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


def rows_frame(rows: Sequence[dict], columns: Sequence[str]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly ``columns``, in order (missing values are NaN/NA).

    Integer columns use pandas' nullable ``Int64``, so a missing count stays an empty cell
    in CSV rather than turning the column into floats.
    """
    frame = pd.DataFrame.from_records(list(rows), columns=list(columns))
    for column in INT_COLUMNS.intersection(frame.columns):
        frame[column] = frame[column].astype("Int64")
    return frame


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header of ``columns``; floats round-trip exactly, NaN is an empty cell.
    Text (names from files) cannot start a spreadsheet formula (:func:`spreadsheet_cell`),
    and lines end in CRLF (RFC 4180), so that a cell holding a CR is quoted, not a row break."""
    frame = rows_frame(rows, columns)
    for column in frame.columns.intersection(TEXT_COLUMNS):
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

    Text columns (:data:`~infoprobe.rows.TEXT_COLUMNS`) come back as the strings written,
    whatever they hold (a checkpoint named ``NA`` or ``nan`` stays that name, ``'=x`` is
    ``=x`` again: :func:`from_spreadsheet_cell`); other cells are
    numbers, empty ones NaN, integer columns ints. InputError for another command's CSV or
    a cell that is not a number where one belongs (an edited file).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--resume: {p} is not a regular file; write to another --csv")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
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
    return [_typed(row, i + 2, p) for i, row in enumerate(frame.to_dict("records"))]


def _typed(row: dict, line: int, path: Path) -> dict:
    out: dict[str, Any] = {}
    for column, text in row.items():
        if column in TEXT_COLUMNS:
            out[column] = from_spreadsheet_cell(text)
            continue
        try:
            value = float(text) if text != "" else math.nan
        except ValueError:
            raise InputError(
                f"--resume: {path} line {line}: {column} is {text[:40]!r}, not a number: the "
                "file was edited; remove it or write to another --csv"
            ) from None
        if column in INT_COLUMNS and value.is_integer():
            value = int(value)
        out[column] = value
    return out


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
