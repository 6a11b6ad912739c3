"""The row values that go to loggers and TensorBoard, and their names there."""

from __future__ import annotations

import math
import numbers

from infoprobe.schema import COLUMNS

__all__ = ["SCALAR_COLUMNS", "scalars"]

#: The row values written to loggers and TensorBoard, each as ``prefix + column``: the numbers
#: of an analyze row (:data:`~infoprobe.schema.COLUMNS`) from ``accuracy`` to ``mir_lower``,
#: without the top-k accuracies.
SCALAR_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in COLUMNS[COLUMNS.index("accuracy") : COLUMNS.index("mir_lower") + 1]
    if c not in ("accuracy_top5", "top1", "top5")
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
