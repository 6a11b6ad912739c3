"""``infoprobe lmc``: one row per point of the linear path between two checkpoints."""

from __future__ import annotations

from rich.console import Console

from infoprobe.cli import examples, output
from infoprobe.cli.options import argument, command
from infoprobe.report.tables import render_barriers

A = argument("a", str, metavar="A", help="Checkpoint at alpha = 0.")
B = argument("b", str, metavar="B", help="Checkpoint at alpha = 1.")


@command("lmc", arguments=[A, B], epilog=examples.LMC)
def lmc(a: str, b: str, options: dict) -> None:
    """Linear mode connectivity: theta(alpha) = (1-alpha) A + alpha B, one row per alpha.

    The loss and accuracy barriers are printed under the table and written to the JSON.
    Each finished row is written to --csv at once, so an interrupted sweep keeps it.
    """
    from infoprobe import api  # loads torch: only when the command runs

    with output.progress() as progress:
        frame = api.lmc(a, b, progress=progress, log=output.log, **options)

    def barriers(console: Console) -> None:
        render_barriers(console, frame.attrs["barriers"])

    output.show(frame, options, title=f"infoprobe lmc {a}→{b}", key="alpha", after=barriers)
