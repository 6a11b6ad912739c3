"""What the sweeps share: resume matching of points, one evaluated row, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.evaluation import Evaluation
from infoprobe.parsing import VALUE_TOL
from infoprobe.rows import MeasureOptions, analysis_row

#: The default measurement options (frozen, so one shared instance is safe).
DEFAULT_MEASURE = MeasureOptions()


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
) -> tuple[Evaluation, dict]:
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
