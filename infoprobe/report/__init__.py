"""Rendering: progress on stderr; rows -> rich tables, CSV, JSON and plots.

The only formatting code. ``tables`` and ``progress`` draw with rich (for the command
line); ``files`` (CSV, JSON), ``plots`` (matplotlib) and ``text`` import neither rich nor
typer, so the library writes its files through them. The names below
load their module on first use, so ``import infoprobe.report.files`` does not load rich.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "RichProgress": "progress",
    "STDOUT": "files",
    "SweepCsv": "files",
    "atomic_write": "files",
    "atomic_write_text": "files",
    "check_output": "files",
    "check_plot_path": "plots",
    "csv_text": "files",
    "format_value": "text",
    "json_text": "files",
    "jsonable": "files",
    "lmc_figure": "plots",
    "plot_lmc": "plots",
    "plot_prune": "plots",
    "plot_text": "text",
    "plot_track": "plots",
    "printable": "text",
    "prune_figure": "plots",
    "read_csv_rows": "files",
    "render_barriers": "tables",
    "render_rows": "tables",
    "require_matplotlib": "plots",
    "row_notes": "tables",
    "run_payload": "files",
    "short_names": "text",
    "track_figure": "plots",
    "transform_caption": "text",
    "write_csv": "files",
    "write_json": "files",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"infoprobe.report.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infoprobe.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
