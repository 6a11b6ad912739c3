"""Text for people: numbers as cells, short checkpoint names, and names from files made
harmless (terminal escapes written out, '$' literal in plots, formulas in CSV cells kept
as text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infoprobe.schema import INT_COLUMNS

#: Columns shown with four decimals in tables (CSV keeps full precision).


_SHORT_FLOAT_COLUMNS = frozenset({"alpha", "ratio"})


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def format_value(column: str, value: Any) -> str:
    """A cell for a human: ints plain, alpha/ratio short, other floats with 4 decimals."""
    if value is None or is_nan(value):
        return "nan"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column in INT_COLUMNS or isinstance(value, int):
        return f"{int(value)}"
    value = value + 0.0  # -0.0 -> 0.0: an entropy of -0 reads as a sign error
    if column in _SHORT_FLOAT_COLUMNS:
        return f"{value:.6g}"
    return f"{value:.4f}"


def short_names(paths: Sequence[str]) -> list[str]:
    """The shortest distinct trailing parts of ``paths``, without a suffix they all share.

    ``["runs/a/last.pt", "runs/b/last.pt"]`` -> ``["a/last", "b/last"]``: tables stay
    narrow while every row remains identifiable (the CSV keeps the full paths).
    """
    parts = [Path(str(p)).parts or (str(p),) for p in paths]
    suffixes = {Path(str(p)).suffix for p in paths}
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            break
    if len(suffixes) == 1 and suffixes != {""}:
        suffix = suffixes.pop()
        names = [n[: -len(suffix)] if n.endswith(suffix) else n for n in names]
    return names


def printable(text: str) -> str:
    """``text`` with every non-printable character (terminal escapes, carriage returns,
    bidirectional overrides) written as its Python escape, e.g. ESC as ``\\x1b``: names
    from files (paths, class names, a recorded architecture) cannot rewrite the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """``text`` for a CSV cell that a spreadsheet shows as text, never runs: a ``'`` before
    a first character that starts a formula (``= + - @``, tab, CR: OWASP's advice), and
    before a first ``'`` too, so that :func:`from_spreadsheet_cell` gives ``text`` back
    exactly (``=1+1`` -> ``'=1+1``, ``'x`` -> ``''x``, ``a-b`` unchanged)."""
    return "'" + text if text.startswith((*_FORMULA_STARTS, "'")) else text


def from_spreadsheet_cell(cell: str) -> str:
    """The text :func:`spreadsheet_cell` made ``cell`` from (its inverse)."""
    return cell[1:] if cell[:1] == "'" and cell[1:].startswith((*_FORMULA_STARTS, "'")) else cell


def plot_text(text: str) -> str:
    """``text`` for a matplotlib title: '$' is literal, not the start of mathtext."""
    return printable(text).replace("$", r"\$")


def transform_caption(transform: dict | None) -> str | None:
    """``transform: 3x224x224, crop_pct=0.95 (center), bicubic, mean=(..), std=(..)`` for a
    ``data.transform_record``, one line per checkpoint for a dict of them; None for None."""
    if not transform:
        return None

    def line(t: dict) -> str:
        def numbers(values: Sequence[float]) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        if t.get("kind") == "tensor":  # tensor inputs (data.transforms.tensor_transform)
            scaled = "x / 255, " if t["scale"] != 1 else ""
            return f"tensor inputs, {scaled}mean={numbers(t['mean'])}, std={numbers(t['std'])}"
        return (
            f"{'x'.join(str(v) for v in t['input_size'])}, crop_pct={t['crop_pct']:g} "
            f"({t['crop_mode']}), {t['interpolation']}, mean={numbers(t['mean'])}, "
            f"std={numbers(t['std'])}"
        )

    if "input_size" in transform or transform.get("kind") == "tensor":
        return f"transform: {line(transform)}"
    return "\n".join(
        f"transform of {path}: {line(t)}" for path, t in transform.items() if t is not None
    )
