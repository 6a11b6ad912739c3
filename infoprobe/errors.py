"""One exception family for every user-facing failure.

The CLI turns an :class:`InfoprobeError` into one line on stderr and exits with
``exit_code``: 2 for bad input (a file, flag or tensor the user can fix), 1 for a
runtime failure. Library callers catch :class:`InfoprobeError` or the subclasses.
"""

from __future__ import annotations


class InfoprobeError(Exception):
    """Base class: a failure whose message names what is wrong and how to fix it."""

    exit_code = 1


class InputError(InfoprobeError, ValueError):
    """Bad input: a file, option, checkpoint or tensor that the user must change."""

    exit_code = 2


class NonFiniteFeatures(InputError):
    """Features with NaN/Inf: bad weights or input normalisation (or a diverged training)."""


class RunFailure(InfoprobeError, RuntimeError):
    """A failure while running valid input (out of memory, a model that raises)."""

    exit_code = 1


def unwritable(path: object, err: OSError) -> RunFailure:
    """The error for an output that could not be written during the run (folder removed,
    permissions changed, disk full): named at the write that failed."""
    return RunFailure(
        f"cannot write {path}: {err.strerror or err} (it became unwritable during the run); "
        "any earlier version of the file is intact: fix the folder and rerun (sweeps: with "
        "--resume)"
    )


def short_list(items: list, n: int = 5) -> str:
    """The first ``n`` items, comma-separated, then ``+K more``: for one-line errors."""
    items = [str(i) for i in items]
    more = f", +{len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def bracketed(items: list, n: int = 5) -> str:
    """:func:`short_list` in brackets: ``[a, b, +3 more]``."""
    return "[" + short_list(items, n) + "]"
