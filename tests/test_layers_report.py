"""Layer rows rendered: the depth plot, the layer x step heatmap and information plane, and
the table grouped by checkpoint and layer. The figures are read back from matplotlib's
objects (the plotted data, the heatmap's array, the tick labels)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from infoprobe.report import render_rows
from infoprobe.report.layer_plots import (
    layer_track_figure,
    layers_figure,
    plot_layer_track,
    plot_layers,
)
from infoprobe.schema import LAYER_COLUMNS

LAYERS = ["stem", "stage.1", "stage.2", "pre_logits"]


def _rows(checkpoint: str, step: int | None = None, shift: float = 0.0) -> list[dict]:
    rows = []
    for depth, layer in enumerate(LAYERS):
        row = {c: math.nan for c in LAYER_COLUMNS}
        row.update(
            checkpoint=checkpoint,
            layer=layer,
            layer_dim=8 * (depth + 1),
            pooling="head" if layer == "pre_logits" else "avg",
            model="m",
            estimate="exact",
            note="" if depth == 3 else "nc3 is undefined where layer_dim differs",
            n_samples=50,
            n_classes=10,
            classes_present=10,
            mir=0.2 + 0.2 * depth + shift,
            hdr=0.5 - 0.1 * depth,
            h_z=1.0 + depth + shift,
            mi_y=0.3 * depth + shift,
            h_y=math.log(10),
            mir_nc=0.952,
        )
        if step is not None:
            row["step"] = step
        rows.append(row)
    return rows


def test_depth_figure_plots_each_quantity_per_checkpoint():
    rows = _rows("runs/a.pt") + _rows("runs/b.pt", shift=0.05)
    fig = layers_figure(rows)
    axes = fig.axes
    assert [a.get_ylabel().split()[0] for a in axes] == ["MIR", "HDR", "mi_y"]
    for axis, column in zip(axes, ("mir", "hdr", "mi_y"), strict=True):
        lines = [line for line in axis.get_lines() if line.get_label() in ("a", "b")]
        assert [line.get_label() for line in lines] == ["a", "b"]
        for line, ckpt in zip(lines, ("runs/a.pt", "runs/b.pt"), strict=True):
            want = [r[column] for r in rows if r["checkpoint"] == ckpt]
            assert list(line.get_xdata()) == [0, 1, 2, 3]
            assert line.get_ydata() == pytest.approx(want)
        assert [t.get_text() for t in axis.get_xticklabels()] == LAYERS
    refs = [line.get_ydata()[0] for line in axes[0].get_lines() if "collapse" in line.get_label()]
    assert refs == [0.952]
    bound = [line for line in axes[2].get_lines() if "H(K_Y)" in line.get_label()]
    assert bound[0].get_ydata()[0] == pytest.approx(math.log(10))


def test_track_figure_holds_the_mir_grid_and_the_information_plane(tmp_path):
    rows = []
    for step, shift in ((0, 0.0), (100, 0.1), (10, 0.03)):  # out of order on purpose
        rows += _rows(f"ck{step}", step=step, shift=shift)
    rows = [r for r in rows if not (r["step"] == 10 and r["layer"] == "stem")]  # a gap
    fig = layer_track_figure(rows)
    heat, plane = fig.axes[0], fig.axes[1]
    grid = heat.get_images()[0].get_array()
    want = np.array([[0.2 + 0.2 * d + s for s in (0.0, 0.03, 0.1)] for d in range(4)])
    want[0, 1] = np.nan
    np.testing.assert_allclose(np.ma.filled(grid, np.nan), want)
    assert [t.get_text() for t in heat.get_yticklabels()] == LAYERS
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0", "10", "100"]
    paths = {line.get_label(): line for line in plane.get_lines() if line.get_label() in LAYERS}
    assert list(paths["stage.2"].get_xdata()) == pytest.approx([3.0, 3.03, 3.1])
    assert list(paths["stage.2"].get_ydata()) == pytest.approx([0.6, 0.63, 0.7])
    assert list(paths["stem"].get_xdata()) == pytest.approx([1.0, 1.1])  # the gap skipped
    assert plot_layer_track(rows, tmp_path / "t.png").stat().st_size > 0
    assert plot_layers(_rows("a"), tmp_path / "a.png").stat().st_size > 0


def test_names_from_files_are_literal_in_the_figures():
    fig = layers_figure(_rows("runs/$x$.pt"))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert r"\$x\$" in labels


def test_table_groups_rows_by_checkpoint_and_layer():
    rows = _rows("runs/a.pt") + _rows("runs/b.pt", shift=0.05)
    out = io.StringIO()
    render_rows(Console(file=out, width=200), rows, LAYER_COLUMNS)
    text = out.getvalue()
    lines = text.splitlines()
    body = [line for line in lines if any(f" {layer} " in f"{line} " for layer in LAYERS)]
    assert len(body) == 8
    assert [line.split()[0] for line in body] == ["a", *LAYERS[1:], "b", *LAYERS[1:]]
    # the checkpoints' groups are apart: an empty line between them, none within
    at = [lines.index(line) for line in body]
    gaps = [lines[i + 1 : j] for i, j in zip(at, at[1:], strict=False)]
    assert [len(g) for g in gaps] == [0, 0, 0, 1, 0, 0, 0] and not gaps[3][0].strip()
    assert "h_y=2.3026" in text  # shared by every row: in the caption
    assert "note: stem, stage.1, stage.2: nc3 is undefined" in text
