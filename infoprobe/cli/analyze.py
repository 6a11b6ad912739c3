"""``infoprobe analyze``: one row per checkpoint."""

from __future__ import annotations

from rich.console import Console

from infoprobe.cli import examples, output
from infoprobe.cli.options import argument, command
from infoprobe.report.tables import render_rows
from infoprobe.schema import PER_CLASS_COLUMNS

CHECKPOINTS = argument(
    "checkpoints",
    list[str],
    metavar="CKPT...",
    help="Checkpoints (or features .safetensors files) to compare.",
)


@command("analyze", arguments=[CHECKPOINTS], epilog=examples.ANALYZE)
def analyze(checkpoints: list[str], options: dict) -> None:
    """Measure checkpoints on one dataset: one row per checkpoint."""
    from infoprobe import api  # loads torch: only when the command runs

    with output.progress() as progress:
        frame = api.analyze(checkpoints, progress=progress, log=output.log, **options)
    per_class = frame.attrs.get("per_class")

    def per_class_tables(console: Console) -> None:
        rows = per_class.to_dict("records")
        for path in dict.fromkeys(frame["checkpoint"]):
            mine = [r for r in rows if r["checkpoint"] == path]
            render_rows(console, mine, PER_CLASS_COLUMNS, title=f"per class: {path}")

    output.show(
        frame,
        options,
        title="infoprobe analyze",
        after=per_class_tables if per_class is not None else None,
    )
    output.check_failed(frame, options)
