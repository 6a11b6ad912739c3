"""Rows to figures (matplotlib, the optional ``plot`` extra), one per command."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infoprobe.errors import InputError
from infoprobe.report.files import atomic_write
from infoprobe.report.text import is_nan, plot_text


def require_matplotlib(flag: str = "--plot") -> None:
    """Raise :class:`InputError` when matplotlib (the optional ``plot`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"{flag} needs matplotlib: pip install 'infoprobe[plot]'") from None


def check_plot_path(path: str | os.PathLike, flag: str = "--plot") -> None:
    """Check matplotlib and the file type before any computation (the path registry checks
    where the file goes)."""
    require_matplotlib(flag)
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise InputError(
            f"{flag} {path}: unknown image type '.{suffix}'; use one of "
            f"{', '.join('.' + k for k in sorted(kinds))}"
        )


def _save_figure(figure: Any, path: str | os.PathLike) -> Path:
    fmt = Path(path).suffix.lower().lstrip(".")
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=120))


def _series(rows: Sequence[dict], x: str, y: str) -> tuple[list, list]:
    ordered = sorted(rows, key=lambda row: float(row[x]))
    return [row[x] for row in ordered], [row[y] for row in ordered]


def _undefined(row: dict, column: str) -> bool:
    """Whether ``row[column]`` was left empty because an entropy was at its noise floor
    (the degenerate-value rule: a ratio of noise, not a number)."""
    return is_nan(row.get(column, math.nan)) and "noise floor" in str(row.get("note") or "")


def _line(axis: Any, rows: Sequence[dict], x: str, column: str, style: str, **kw: Any) -> None:
    """``column`` against ``x`` as a line, and each undefined value (:func:`_undefined`) as
    an open marker of the same colour on the x axis, so that it is seen, never read as 0."""
    (line,) = axis.plot(*_series(rows, x, column), style, **kw)
    gaps = [row[x] for row in rows if _undefined(row, column)]
    if gaps:
        label = f"{kw.get('label', column)}: undefined (noise floor)"
        axis.plot(gaps, [0.0] * len(gaps), "x", color=line.get_color(), clip_on=False, label=label)


def _nc_reference(axis: Any, rows: Sequence[dict]) -> None:
    """Horizontal lines at the neural-collapse optimum (MIR_NC, and HDR = 0)."""
    mir_nc = [row["mir_nc"] for row in rows if not is_nan(row.get("mir_nc", math.nan))]
    if mir_nc:
        axis.axhline(
            mir_nc[0],
            color="C0",
            linestyle="--",
            linewidth=1,
            label=f"MIR at neural collapse ({mir_nc[0]:.3f})",
        )
        axis.axhline(0.0, color="C1", linestyle=":", linewidth=1, label="HDR at neural collapse")


def _legend(axis: Any, *others: Any) -> None:
    """One legend above ``axis`` (with the lines of twin axes ``others``), outside the
    plotting area, so that it never covers data."""
    handles, labels = axis.get_legend_handles_labels()
    for other in others:
        more = other.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axis.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.02),
        ncol=2,
        fontsize="small",
        frameon=False,
    )


def _title(fig: Any, title: str, default: str) -> None:
    """The figure's title; each line of ``title`` is shown literally."""
    fig.suptitle("\n".join(plot_text(line) for line in title.split("\n")) if title else default)


def track_figure(rows: Sequence[dict], title: str = "") -> Any:
    """MIR, HDR and accuracy against training step, with the NC optimum for reference."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for column, style in (("mir", "o-"), ("hdr", "s-"), ("accuracy", "^-")):
        label = column.upper() if column != "accuracy" else "accuracy"
        _line(ax, rows, "step", column, style, label=label)
    _nc_reference(ax, rows)
    ax.set_xlabel("training step")
    ax.set_ylabel("MIR, HDR, accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax)
    _title(fig, title, "information interplay over training")
    return fig


def plot_track(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`track_figure` saved to ``path``."""
    return _save_figure(track_figure(rows, title), path)


def lmc_figure(rows: Sequence[dict], title: str = "") -> Any:
    """Loss and accuracy against alpha (left), MIR and HDR against alpha (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(*_series(rows, "alpha", "loss"), "o-", color="C3", label="loss")
    left.set_ylabel("loss (nats)")
    twin = left.twinx()
    twin.plot(*_series(rows, "alpha", "accuracy"), "^-", color="C2", label="accuracy")
    twin.set_ylabel("accuracy")
    _legend(left, twin)
    _line(right, rows, "alpha", "mir", "o-", label="MIR")
    _line(right, rows, "alpha", "hdr", "s-", label="HDR")
    _nc_reference(right, rows)
    right.set_ylabel("MIR, HDR")
    _legend(right)
    for ax in (left, right):
        ax.set_xlabel("α (weight of B in (1-α)·A + α·B)")
        ax.grid(alpha=0.3)
    _title(fig, title, "linear mode connectivity")
    return fig


def plot_lmc(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`lmc_figure` saved to ``path``."""
    return _save_figure(lmc_figure(rows, title), path)


def prune_figure(rows: Sequence[dict], title: str = "") -> Any:
    """Accuracy, and MIR/HDR against the head and the dense features, vs measured sparsity.

    Rows of a fine-tuned sweep get a second line per quantity: solid before fine-tuning,
    dashed after (the ``ft_`` columns), with MIR/HDR vs the head and vs the dense features
    on two panels. Without fine-tuning: two panels, accuracy and all four ratios. The panel
    with MIR against the head has the neural-collapse optimum as reference.
    """
    from matplotlib.figure import Figure

    tuned = not all(is_nan(row.get("ft_accuracy", math.nan)) for row in rows)
    # the measured sparsity; the requested ratio for rows without it
    x = "sparsity" if all("sparsity" in row for row in rows) else "ratio"
    fig = Figure(figsize=(14 if tuned else 10, 4.6), layout="constrained")
    axes = fig.subplots(1, 3 if tuned else 2)
    groups = (
        [["accuracy"], ["mir", "hdr"], ["mir_dense", "hdr_dense"]]
        if tuned
        else [["accuracy"], ["mir", "hdr", "mir_dense", "hdr_dense"]]
    )
    styles = {
        "accuracy": ("^", "C2"),
        "mir": ("o", "C0"),
        "hdr": ("s", "C1"),
        "mir_dense": ("o", "C4"),
        "hdr_dense": ("s", "C3"),
    }
    for ax, columns in zip(axes, groups, strict=True):
        for column in columns:
            marker, color = styles[column]
            _line(ax, rows, x, column, marker + "-", color=color, label=column)
            if tuned:
                _line(
                    ax,
                    rows,
                    x,
                    f"ft_{column}",
                    marker + "--",
                    color=color,
                    mfc="none",
                    label=f"ft_{column} (fine-tuned)",
                )
        if "mir" in columns:
            _nc_reference(ax, rows)
        ax.set_xlabel(
            "sparsity (fraction of prunable weights zeroed)"
            if x == "sparsity"
            else "pruning ratio (requested sparsity)"
        )
        ax.set_ylabel("accuracy" if columns == ["accuracy"] else ", ".join(columns))
        ax.grid(alpha=0.3)
        _legend(ax)
    _title(
        fig,
        title,
        "unstructured pruning, before and after fine-tuning"
        if tuned
        else "unstructured pruning (no fine-tuning)",
    )
    return fig


def plot_prune(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`prune_figure` saved to ``path``."""
    return _save_figure(prune_figure(rows, title), path)


def analyze_figure(rows: Sequence[dict], title: str = "") -> Any:
    """MIR, HDR and accuracy of each checkpoint side by side, with the NC optimum."""
    from matplotlib.figure import Figure

    from infoprobe.report.text import short_names

    names = short_names([str(row["checkpoint"]) for row in rows])
    fig = Figure(figsize=(max(5.0, 1.2 * len(rows) + 3), 4.6), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(rows)))
    at = [{**row, "position": i} for i, row in enumerate(rows)]
    for column, style in (("mir", "o"), ("hdr", "s"), ("accuracy", "^")):
        label = column.upper() if column != "accuracy" else "accuracy"
        _line(ax, at, "position", column, style, label=label)
    _nc_reference(ax, rows)
    ax.set_xticks(x, [plot_text(n) for n in names], rotation=30 if len(rows) > 4 else 0)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("MIR, HDR, accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax)
    _title(fig, title, "information interplay per checkpoint")
    return fig


#: The figure of each command's rows.
FIGURES = {
    "analyze": analyze_figure,
    "track": track_figure,
    "lmc": lmc_figure,
    "prune": prune_figure,
}


def plot_rows(command: str, rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """``command``'s figure of ``rows`` saved to ``path`` (its suffix picks the format);
    layer rows (``--layers``) get the figures of :mod:`infoprobe.report.layer_plots`."""
    if rows and "layer" in rows[0]:
        from infoprobe.report.layer_plots import LAYER_FIGURES

        return _save_figure(LAYER_FIGURES[command](rows, title), path)
    return _save_figure(FIGURES[command](rows, title), path)
