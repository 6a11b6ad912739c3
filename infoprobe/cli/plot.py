"""``infoprobe plot``: a command's figure redrawn from the CSV it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infoprobe.cli import examples
from infoprobe.cli.app import app
from infoprobe.cli.errors import failures
from infoprobe.cli.output import log
from infoprobe.errors import InputError
from infoprobe.schema import COLUMNS, LAYER_COLUMNS, SWEEP_COLUMNS


def command_of(header: list[str], path: str) -> str:
    """The command whose CSV has this header (its layer rows' header too)."""
    for command, extra in SWEEP_COLUMNS.items():
        if header in ([*extra, *COLUMNS], [*extra, *LAYER_COLUMNS]):
            return command
    raise InputError(
        f"{path} is not a CSV written by infoprobe analyze, track, lmc or prune "
        f"(its columns start {', '.join(header[:4])})"
    )


@app.command("plot", epilog=examples.PLOT)
def plot(
    csv: Annotated[str, typer.Argument(metavar="FILE.csv", help="A CSV infoprobe wrote.")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE.png",
            help="Where the figure goes (its suffix picks the format).  [default: FILE.png]",
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option("--title", help="The figure's title.  [default: the command and the model]"),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Redraw a command's figure from its CSV: track, lmc and prune as their --plot draws
    them, analyze as one point per checkpoint."""
    with failures(debug):
        _plot(csv, out or str(Path(csv).with_suffix(".png")), title)


def _plot(csv: str, out: str, title: str | None) -> None:
    import pandas as pd

    from infoprobe.paths import PathRegistry
    from infoprobe.report.files import read_csv_rows
    from infoprobe.report.plots import check_plot_path, plot_rows

    check_plot_path(out, "--out")
    registry = PathRegistry()
    registry.add_input("FILE.csv", csv)
    registry.add_output("--out", out)
    registry.check()
    if not Path(csv).expanduser().is_file():
        raise InputError(f"{csv} does not exist or is not a file; check the path")
    header = list(pd.read_csv(Path(csv).expanduser(), nrows=0).columns)
    command = command_of(header, csv)
    rows = read_csv_rows(csv, header)
    if not rows:
        raise InputError(f"{csv} holds no rows to plot")
    model = next((r["model"] for r in rows if r.get("model")), "model")
    plot_rows(command, rows, out, title=title if title is not None else f"{command}: {model}")
    log(f"wrote {out}")
