"""The ``infoprobe`` command line: parse, call the API, render.

One module per concern: :mod:`~infoprobe.cli.app` (the command group, usage errors,
``--version``), :mod:`~infoprobe.cli.errors` (failures to exit codes),
:mod:`~infoprobe.cli.options` (every option built from
:class:`~infoprobe.options.RunOptions`), :mod:`~infoprobe.cli.output` (tables, logs,
progress), and one module per command. The commands are thin: each calls the Python API
(:mod:`infoprobe.api`, the same functions a notebook calls, which also write the files)
and renders the DataFrame it returns. Nothing here imports torch until a command runs.
"""

from infoprobe.cli import analyze, lmc, plot, prune, track  # noqa: F401 - registers them
from infoprobe.cli.app import app, main

__all__ = ["app", "main"]
