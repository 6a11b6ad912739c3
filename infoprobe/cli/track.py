"""``infoprobe track``: one row per step of a training run."""

from __future__ import annotations

from infoprobe.cli import examples, output
from infoprobe.cli.options import argument, command

PATHS = argument(
    "paths",
    list[str],
    metavar="CKPT...|DIR",
    help="Checkpoints of one run, or folders holding them.",
)


@command("track", arguments=[PATHS], epilog=examples.TRACK)
def track(paths: list[str], options: dict) -> None:
    """Measure a checkpoint series (training dynamics, grokking): one row per step.

    Checkpoints are ordered by the step, global_step or epoch they record, else by the
    number in their file name, which also gives the step column.
    """
    from infoprobe import api  # loads torch: only when the command runs

    with output.progress() as progress:
        frame = api.track(paths, progress=progress, log=output.log, **options)
    output.show(frame, options, title="infoprobe track")
    output.check_failed(frame, options)
