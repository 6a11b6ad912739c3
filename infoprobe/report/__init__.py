"""Rendering: progress on stderr; rows -> rich tables, CSV, JSON and plots.

This package is the only formatting code; only it and the command line import rich.
"""

from infoprobe.report.files import (
    STDOUT,
    SweepCsv,
    atomic_write,
    atomic_write_text,
    check_output,
    csv_text,
    json_text,
    jsonable,
    read_csv_rows,
    run_payload,
    write_csv,
    write_json,
)
from infoprobe.report.plots import (
    check_plot_path,
    lmc_figure,
    plot_lmc,
    plot_prune,
    plot_track,
    prune_figure,
    require_matplotlib,
    track_figure,
)
from infoprobe.report.progress import RichProgress
from infoprobe.report.tables import render_barriers, render_rows, row_notes
from infoprobe.report.text import (
    format_value,
    plot_text,
    printable,
    short_names,
    transform_caption,
)

__all__ = [
    "STDOUT",
    "RichProgress",
    "SweepCsv",
    "atomic_write",
    "atomic_write_text",
    "check_output",
    "check_plot_path",
    "csv_text",
    "format_value",
    "json_text",
    "jsonable",
    "lmc_figure",
    "plot_lmc",
    "plot_prune",
    "plot_text",
    "plot_track",
    "printable",
    "prune_figure",
    "read_csv_rows",
    "render_barriers",
    "render_rows",
    "require_matplotlib",
    "row_notes",
    "run_payload",
    "short_names",
    "track_figure",
    "transform_caption",
    "write_csv",
    "write_json",
]
