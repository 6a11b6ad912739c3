"""Outputs never overwrite inputs: the check every command runs before any work.

An output (``--csv``, ``--json``, ``--plot``, each ``--save-features`` file) is refused when
it is an input of the run (a checkpoint, ``--data``, ``--bn-data``...) or lies inside an
input folder (where it would become a sample, or a checkpoint of the series, next time).
Paths are compared resolved (``~``, ``..`` and symbolic links followed), and files that
exist are also compared by identity, so a hard link is caught too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from infoprobe.errors import InputError

__all__ = ["refuse_overwrite"]

#: The name that means standard output for --csv / --json.
_STDOUT = "-"


def _resolved(path: str | os.PathLike) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a name too long or a symlink loop: checked elsewhere
        return None


def _clashes(output: Path, source: Path) -> bool:
    if output == source or (source.is_dir() and output.is_relative_to(source)):
        return True
    try:
        return output.exists() and source.exists() and os.path.samefile(output, source)
    except OSError:
        return False


def refuse_overwrite(
    outputs: Iterable[tuple[str, str | os.PathLike | None]],
    inputs: Iterable[tuple[str, str | os.PathLike | None]],
) -> None:
    """InputError naming the first output that is (or lies inside) an input.

    ``outputs`` and ``inputs`` are ``(what, path)`` pairs, e.g. ``("--csv", "a.csv")`` and
    ``("--data", "val/")``; None and '-' (standard output) are skipped.
    """
    sources = [(what, p, _resolved(p)) for what, p in inputs if p is not None]
    for flag, out in outputs:
        if out is None or str(out) == _STDOUT:
            continue
        target = _resolved(out)
        if target is None:
            continue
        for what, given, source in sources:
            if source is not None and _clashes(target, source):
                where = "is" if target == source or not source.is_dir() else "lies inside"
                raise InputError(
                    f"{flag} {out} {where} {what} {given}, an input of this run: writing it "
                    "would destroy or change the input; write the output elsewhere"
                )
