"""Rows as TensorBoard scalars (the optional extra: ``pip install 'infoprobe[tensorboard]'``).

:func:`write_rows` writes each row's values (the columns of
:data:`infoprobe.integrations.scalars.SCALAR_COLUMNS`) as scalars ``prefix + column`` at the
row's step, in one new event file, so the curves of ``infoprobe track --tensorboard DIR`` sit
beside a run's own curves when DIR is (a folder beside) the run's log folder. TensorBoard
stores scalars as float32.
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from infoprobe.errors import InputError, unwritable
from infoprobe.integrations.scalars import scalars

__all__ = ["check_log_dir", "summary_writer", "write_rows"]

_MISSING = "needs the tensorboard package: pip install 'infoprobe[tensorboard]'"


def summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``; InputError naming the extra without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(f"TensorBoard output {_MISSING}") from None
    return SummaryWriter


def check_log_dir(path: str | os.PathLike, flag: str = "--tensorboard") -> None:
    """InputError unless event files can be written in folder ``path`` (made when missing)
    and tensorboard is installed. Runs before any computation."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {p}: is a file; give a folder for the event files")
    existing = next(q for q in (p, *p.absolute().parents) if q.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {p}: folder {existing} is not writable")
    try:
        summary_writer()
    except InputError:
        raise InputError(f"{flag} {_MISSING}") from None


def write_rows(
    rows: Iterable[dict],
    log_dir: str | os.PathLike,
    *,
    step: str = "step",
    prefix: str = "interplay/",
) -> Path | None:
    """Each row's finite :data:`SCALAR_COLUMNS` values as scalars at ``row[step]``.

    Rows without a step (or without numbers, such as a failed checkpoint's) are skipped.
    The event file is written whole in a temporary folder, then moved into ``log_dir``
    (made when missing), so a reader never sees half of it. Returns its path, or None when
    no row had a value.
    """
    writer_class = summary_writer()
    target = Path(log_dir).expanduser()
    points = [(int(row[step]), scalars(row, prefix)) for row in rows if _has_step(row, step)]
    points = [(s, values) for s, values in points if values]
    if not points:
        return None
    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".infoprobe-", dir=target))
    except OSError as e:
        raise unwritable(target, e) from None
    try:
        writer = writer_class(log_dir=str(tmp))
        for at, values in points:
            for tag, value in values.items():
                writer.add_scalar(tag, value, at)
        writer.close()
        (event,) = tmp.iterdir()
        os.replace(event, target / event.name)
    except OSError as e:
        raise unwritable(target, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / event.name


def _has_step(row: dict, step: str) -> bool:
    value = row.get(step)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
