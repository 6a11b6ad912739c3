"""Layer rows to figures: MIR, HDR and label information against depth (``analyze
--layers``), and the layer x step heatmap with the information plane (``track --layers``).

Rows are those of :func:`infoprobe.rows.layer_rows`, one per checkpoint and layer, each
checkpoint's layers in depth order (``pre_logits``, the head's input, last).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infoprobe.layers import PRE_LOGITS
from infoprobe.report.plots import _save_figure, _title
from infoprobe.report.text import is_nan, plot_text, short_names


def _by_checkpoint(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows grouped by checkpoint, in the order they first appear (layers kept in order)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row["checkpoint"]), []).append(row)
    return groups


def _value(row: dict, column: str) -> float:
    value = row.get(column, math.nan)
    return math.nan if value is None or is_nan(value) else float(value)


def _depth_axis(axis: Any, names: list[str] | None, count: int) -> None:
    """Ticks at each layer, named when every checkpoint has the same layers."""
    axis.set_xticks(range(count))
    if names is None:
        axis.set_xlabel("layer (depth order)")
        return
    axis.set_xticklabels([plot_text(n) for n in names], rotation=60, ha="right", fontsize="small")
    axis.set_xlabel("layer")


def layers_figure(rows: Sequence[dict], title: str = "") -> Any:
    """MIR, HDR and ``mi_y`` against depth, one line per checkpoint (one legend for all).

    References, dashed: the neural-collapse optimum of MIR and HDR (0), and ``h_y`` =
    H(K_Y), the upper bound of ``mi_y``.
    """
    from matplotlib.figure import Figure

    groups = _by_checkpoint(rows)
    layer_lists = [[str(r["layer"]) for r in group] for group in groups.values()]
    same = all(names == layer_lists[0] for names in layer_lists)
    count = max(len(names) for names in layer_lists)
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    panels = (
        ("mir", "MIR (features vs head)"),
        ("hdr", "HDR (features vs head)"),
        ("mi_y", "mi_y = I(K_Z; K_Y), nats"),
    )
    labels = short_names(list(groups))
    for k, (group, label) in enumerate(zip(groups.values(), labels, strict=True)):
        for axis, (column, _) in zip(axes, panels, strict=True):
            axis.plot(
                range(len(group)),
                [_value(r, column) for r in group],
                "o-",
                color=f"C{k % 10}",
                label=plot_text(label),
            )
    handles = axes[0].get_legend_handles_labels()
    _references(axes, rows)
    for axis, (_, ylabel) in zip(axes, panels, strict=True):
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        _depth_axis(axis, layer_lists[0] if same else None, count)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(bottom=0)
    fig.legend(*handles, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    _title(fig, title, "information interplay by layer")
    return fig


def _references(axes: Any, rows: Sequence[dict]) -> None:
    """Dashed reference lines, each named in a legend above its panel."""
    mir_nc = [_value(r, "mir_nc") for r in rows if not math.isnan(_value(r, "mir_nc"))]
    h_y = [_value(r, "h_y") for r in rows if not math.isnan(_value(r, "h_y"))]
    lines = [
        (axes[0], mir_nc, "MIR at neural collapse"),
        (axes[1], [0.0] if mir_nc else [], "HDR at neural collapse"),
        (axes[2], [max(h_y)] if h_y else [], "h_y = H(K_Y), the bound"),
    ]
    for axis, values, label in lines:
        if values:
            axis.axhline(
                values[0], color="gray", linestyle="--", lw=1, label=f"{label} ({values[0]:.3f})"
            )
            handles, names = axis.get_legend_handles_labels()
            axis.legend(
                handles[-1:],
                names[-1:],
                loc="lower center",
                bbox_to_anchor=(0.5, 1.0),
                fontsize="small",
                frameon=False,
            )


def plot_layers(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`layers_figure` saved to ``path``."""
    return _save_figure(layers_figure(rows, title), path)


def _steps_and_layers(rows: Sequence[dict]) -> tuple[list, list[str]]:
    steps = sorted({r["step"] for r in rows if not is_nan(r.get("step", math.nan))}, key=float)
    layers: list[str] = []
    for row in rows:
        if str(row["layer"]) not in layers:
            layers.append(str(row["layer"]))
    return steps, layers


def layer_track_figure(rows: Sequence[dict], title: str = "") -> Any:
    """Left: MIR per layer (rows, depth downwards) and training step (columns, in order;
    empty cells where a row has no number). Right: the information plane, ``mi_y`` against
    ``h_z`` of each layer over training, from an open circle (first step) to a filled one
    (last), coloured by depth."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    steps, layers = _steps_and_layers(rows)
    cell = {(str(r["layer"]), r["step"]): r for r in rows}
    grid = [[_value(cell.get((layer, s), {}), "mir") for s in steps] for layer in layers]
    fig = Figure(figsize=(13, 1.2 + 0.32 * max(len(layers), 8)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.15, 1))
    image = left.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="none")
    fig.colorbar(image, ax=left, label="MIR", shrink=0.9)
    left.set_yticks(range(len(layers)), [plot_text(n) for n in layers], fontsize="small")
    shown = range(0, len(steps), max(1, math.ceil(len(steps) / 12)))
    left.set_xticks(list(shown), [str(int(steps[i])) for i in shown], rotation=45)
    left.set_xlabel("training step")
    left.set_title("MIR by layer and step", fontsize="medium")
    if len(steps) * len(layers) <= 120:  # few cells: their values are readable
        for i, line in enumerate(grid):
            for j, mir in enumerate(line):
                if not math.isnan(mir):
                    shade = "black" if mir > 0.6 else "white"
                    left.text(j, i, f"{mir:.2f}", ha="center", va="center", fontsize=7, color=shade)
    colours = colormaps["viridis"]
    for k, layer in enumerate(layers):
        path = [cell[(layer, s)] for s in steps if (layer, s) in cell]
        x, y = [_value(r, "h_z") for r in path], [_value(r, "mi_y") for r in path]
        colour = colours(k / max(len(layers) - 1, 1))
        style = ".--" if layer == PRE_LOGITS else ".-"  # dashed: it may be the last tap itself
        right.plot(x, y, style, color=colour, alpha=0.8, ms=4, label=plot_text(layer))
        right.plot(x[:1], y[:1], "o", mfc="none", color=colour)
        right.plot(x[-1:], y[-1:], "o", color=colour)
    right.set_xlabel("h_z = H(K_Z), nats")
    right.set_ylabel("mi_y = I(K_Z; K_Y), nats")
    right.set_title("information plane (open: first step, filled: last)", fontsize="medium")
    right.grid(alpha=0.3)
    right.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _title(fig, title, "layer-wise dynamics over training")
    return fig


def plot_layer_track(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`layer_track_figure` saved to ``path``."""
    return _save_figure(layer_track_figure(rows, title), path)


#: The figure of each command's layer rows.
LAYER_FIGURES = {"analyze": layers_figure, "track": layer_track_figure}
