"""Progress on stderr: a transient rich bar (only when stderr is a terminal)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from infoprobe.report.text import printable


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
