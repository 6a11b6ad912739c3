"""Failures as one line on stderr and an exit code: 2 bad input, 1 runtime failure, 130
after Ctrl-C. No traceback unless ``--debug`` (which keeps the exit code)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors

from infoprobe.errors import InfoprobeError, InputError
from infoprobe.report.text import printable

__all__ = ["INTERRUPTED", "PROG", "click_errors", "failures", "say_error"]

PROG = "infoprobe"
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def say_error(message: str) -> None:
    """Print ``infoprobe: error: MESSAGE`` on one line of stderr."""
    one_line = printable(" ".join(str(message).split()))
    Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
        f"{PROG}: error: {one_line}", markup=False
    )


def _traceback(debug: bool) -> None:
    if debug:
        Console(stderr=True).print_exception(show_locals=False)


@contextmanager
def failures(debug: bool, resumable: bool = False) -> Iterator[None]:
    """Map the exception family to exit codes. Under torchrun the error is reported once,
    by rank 0, for failures every process shares (bad input), else with a ``rank K:``
    prefix. ``resumable``: the command has --resume, which an interrupted run is pointed to."""
    from infoprobe import distributed  # imports torch: only once a command runs

    try:
        yield
    except (typer.Exit, typer.Abort, click_errors.ClickException):
        raise
    except InfoprobeError as e:
        _traceback(debug)
        shared = getattr(e, "shared", False) or isinstance(e, InputError)
        if distributed.is_main():
            say_error(str(e))
        elif not shared:
            say_error(f"rank {distributed.rank()}: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        say_error(
            "interrupted (finished rows stay in --csv FILE; rerun with --resume to compute the "
            "rest)"
            if resumable
            else "interrupted"
        )
        raise typer.Exit(INTERRUPTED) from None
    except Exception as e:
        _traceback(debug)
        where = "" if distributed.is_main() else f"rank {distributed.rank()}: "
        hint = "" if debug or where else " (rerun with --debug for the traceback)"
        say_error(f"{where}unexpected {type(e).__name__}: {e}{hint}")
        raise typer.Exit(1) from None
