"""The row values that go to loggers and TensorBoard, and their names there."""

from __future__ import annotations

import math
import numbers

from infoprobe.schema import NC_COLUMNS

__all__ = ["SCALAR_COLUMNS", "scalars"]

#: The row values written to loggers and TensorBoard, each as ``prefix + column``.
SCALAR_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "loss",
    "h_z",
    "h_w",
    "h_zw",
    "mi",
    "mir",
    "hdr",
    "mir_nc",
    "hdr_nc",
    *NC_COLUMNS,
    "h_zw_err",
    "mi_err",
    "mir_err",
    "mir_lower",
)


def scalars(row: dict, prefix: str = "interplay/") -> dict[str, float]:
    """``{prefix + column: value}`` for the :data:`SCALAR_COLUMNS` of ``row`` that hold a
    finite number (a NaN is an undefined value: it is left out, as an empty CSV cell)."""
    found = {}
    for column in SCALAR_COLUMNS:
        value = row.get(column)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            found[prefix + column] = float(value)
    return found
