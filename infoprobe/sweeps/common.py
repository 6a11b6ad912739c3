"""What the sweeps share: point values, resume matching, one evaluated row, progress."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.rows import MeasureOptions, analysis_row

#: Two point values closer than this are the same point (duplicates, resume matching).
#: Values read back from a CSV written with full precision match exactly; the tolerance
#: absorbs CSVs written with 6 significant digits (1/3 -> 0.333333).
VALUE_TOL = 1e-6

#: The default measurement options (frozen, so one shared instance is safe).
DEFAULT_MEASURE = MeasureOptions()


def parse_values(
    spec: str | Iterable[float], *, flag: str, what: str, closed: bool, example: str
) -> list[float]:
    """Point values from ``"0,0.25,1"`` (commas and/or spaces) or a sequence of numbers,
    sorted ascending.

    Every value must be finite and lie in [0, 1] (``closed``) or [0, 1); no two may be
    within :data:`VALUE_TOL`. Raises :class:`InputError` naming the offending value and
    ``flag``; ``example`` is shown when the list is empty.
    """
    items = re.split(r"[,\s]+", spec.strip()) if isinstance(spec, str) else list(spec)
    if not items or items == [""]:
        raise InputError(f"{flag} is empty: give comma-separated {what}s, e.g. {flag} {example}")
    values = [_as_value(item, flag, what) for item in items]
    top = "1]" if closed else "1)"
    for v in values:
        if not (0.0 <= v <= 1.0) or (v == 1.0 and not closed):
            raise InputError(f"{flag}: {what} {v:g} is outside [0, {top}; use values in [0, {top}")
    values.sort()
    for low, high in zip(values, values[1:], strict=False):
        if high - low <= VALUE_TOL:
            raise InputError(f"{flag}: {what} {high:g} is given twice; list each {what} once")
    return values


def _as_value(item: object, flag: str, what: str) -> float:
    try:
        value = float(item)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{flag}: {item!r} is not a number; give {what}s like 0,0.5") from None
    if not math.isfinite(value):
        raise InputError(f"{flag}: {what} {item!r} is not finite; use values in [0, 1]")
    return value


def is_done(value: float, skip: Iterable[float]) -> bool:
    """Whether ``value`` is one of ``skip`` (within :data:`VALUE_TOL`)."""
    return any(abs(value - float(s)) <= VALUE_TOL for s in skip)


def pending(values: Sequence[float], skip: Iterable[float]) -> list[float]:
    """``values`` less those already done; ``skip`` is read once."""
    done = [float(s) for s in skip]
    return [v for v in values if not is_done(v, done)]


def evaluate_row(
    model: nn.Module,
    data: LabelledTensors,
    name: str,
    eval_kwargs: dict,
    measure: MeasureOptions,
) -> tuple[probe.Evaluation, dict]:
    """One pass of ``model`` over ``data`` and its :func:`~infoprobe.rows.analysis_row`.

    ``probe.evaluate`` is looked up at call time so that benchmarks and tests can wrap it.
    """
    evaluation = probe.evaluate(model, data, **eval_kwargs)
    return evaluation, analysis_row(name, evaluation, measure)


@contextmanager
def sweep_progress(
    progress: probe.ProgressSink | None, total: int, description: str
) -> Iterator[Callable[[], None]]:
    """A ``step()`` callable advancing ``progress`` by one; the bar stops on exit.

    Held across ``yield`` in a sweep generator, so closing the generator early also stops it.
    """
    if progress is None:
        yield lambda: None
        return
    progress.start(total, description)
    try:
        yield lambda: progress.advance(1)
    finally:
        progress.stop()
