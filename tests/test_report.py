"""Rendering rows: table cells, atomic files, CSV round trips and resume, JSON, plots."""

from __future__ import annotations

import io
import json
import math
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from infoprobe import paths, report
from infoprobe.api.outputs import RowsLog, by_point
from infoprobe.errors import InputError
from infoprobe.options import RunOptions
from infoprobe.paths import PathRegistry
from infoprobe.schema import COLUMNS, SWEEP_COLUMNS
from infoprobe.schema import TEXT_COLUMNS as TEXT

LMC_COLUMNS = SWEEP_COLUMNS["lmc"] + COLUMNS


def row(
    alpha: float = 0.0,
    *,
    checkpoint: str = "runs/a.safetensors",
    mir: float = 0.75,
    note: str = "",
    mir_err: float = math.nan,
    estimate: str = "exact",
) -> dict:
    """A complete lmc row with made-up numbers."""
    values = dict(
        alpha=alpha,
        checkpoint=checkpoint,
        model="test_resnet",
        param_count=0.375,
        img_size=16,
        n_samples=450,
        n_classes=10,
        classes_present=10,
        accuracy=0.9,
        accuracy_top5=1.0,
        top1=90.0,
        top5=100.0,
        loss=0.25 + alpha,
        h_z=3.0,
        h_w=2.25,
        h_zw=3.5,
        mi=1.75,
        mir=mir,
        hdr=0.25,
        mir_nc=0.9523507825397208,
        hdr_nc=0.0,
        nc1=0.5,
        nc2_equinorm=0.125,
        nc2_equiangular=0.0625,
        nc3=0.25,
        nc4=0.875,
        h_zw_err=mir_err * 2.25,
        mi_err=mir_err * 2.25,
        mir_err=mir_err,
        mir_lower=math.nan,
        estimate=estimate,
        n_used=450,
        n_batches=1,
        note=note,
    )
    return {c: values[c] for c in LMC_COLUMNS}


def render(rows, columns=LMC_COLUMNS, **kwargs) -> str:
    out = io.StringIO()
    report.render_rows(Console(file=out, width=200), rows, columns, **kwargs)
    return out.getvalue()


# ----------------------------------------------------------------------------- cells, tables


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        ("mir", 0.123456, "0.1235"),
        ("h_z", -0.0, "0.0000"),
        ("mir", math.nan, "nan"),
        ("n_samples", 450, "450"),
        ("step", 210, "210"),
        ("alpha", 0.25, "0.25"),
        ("ratio", 1 / 3, "0.333333"),
        ("checkpoint", "a.pt", "a.pt"),
        ("note", None, "nan"),
    ],
)
def test_format_value(column, value, text):
    assert report.format_value(column, value) == text


def test_short_names_are_distinct_and_drop_a_shared_suffix():
    assert report.short_names(["runs/a/last.pt", "runs/b/last.pt"]) == ["a/last", "b/last"]
    assert report.short_names(["x/ls0.0.safetensors", "y/ls0.1.safetensors"]) == ["ls0.0", "ls0.1"]
    assert report.short_names(["a.pt", "b.pth"]) == ["a.pt", "b.pth"]
    assert report.short_names(["same.pt", "same.pt"]) == ["same", "same"]


def test_table_moves_shared_values_to_the_caption_and_prints_notes():
    rows = [row(0.0), row(0.5, mir=math.nan, note="MIR is undefined (0/0)"), row(1.0)]
    text = render(rows, title="lmc", key="alpha")
    assert "n_samples=450" in text and "mir_nc=0.9524" in text and "estimate=exact" in text
    header = next(line for line in text.splitlines() if "accuracy" in line)
    assert "n_samples" not in header and "checkpoint" not in header and "note" not in header
    assert "nan" in text
    assert "note: alpha 0.5: MIR is undefined (0/0)" in text


def test_estimator_rows_show_mir_with_its_error_bar():
    slq = "slq(probes=8,steps=30,seed=0)"
    rows = [row(0.0), row(0.5, mir=0.8123, mir_err=0.0021, estimate=slq)]
    text = render(rows, title="lmc", key="alpha")
    assert "0.8123 ± 0.0021" in text and "0.7500 ±" not in text
    header = next(line for line in text.splitlines() if "accuracy" in line)
    assert "mir_err" not in header and "mir_lower" not in header and "n_used=450" in text


def test_one_row_table_keeps_its_checkpoint():
    columns = COLUMNS
    one = {c: v for c, v in row().items() if c in columns}
    assert "checkpoint" in render([one], columns)
    two = [one, {**one, "checkpoint": "runs/b.safetensors"}]
    text = render(two, columns)
    assert " a " in text and " b " in text  # shortest distinct names


def test_barriers_line():
    out = io.StringIO()
    report.render_barriers(
        Console(file=out, width=200),
        {
            "loss_barrier": 0.5,
            "loss_barrier_alpha": 0.5,
            "accuracy_barrier": math.nan,
            "accuracy_barrier_alpha": math.nan,
            "note": "accuracy barrier is NaN",
        },
    )
    text = out.getvalue()
    assert "loss barrier 0.5000 at alpha 0.5" in text
    assert "accuracy barrier nan at alpha nan" in text and "note: accuracy barrier is NaN" in text


# ----------------------------------------------------------------------------- output paths


def _check_output(target, flag="--csv"):
    registry = PathRegistry()
    registry.add_output(flag, target)
    registry.check()


def test_output_check_accepts_writable_paths_and_changes_nothing(tmp_path):
    existing = tmp_path / "old.csv"
    existing.write_text("keep me")
    for target in (tmp_path / "new.csv", existing):
        assert _check_output(target) is None
    # the check only looks: it creates nothing and leaves an existing file as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]
    assert existing.read_text() == "keep me"


def test_output_check_rejects_bad_paths(tmp_path):
    with pytest.raises(InputError, match="--csv .*folder .* does not exist"):
        _check_output(tmp_path / "missing" / "out.csv")
    with pytest.raises(InputError, match="--json .*is a folder, not a regular file"):
        _check_output(tmp_path, "--json")


def test_output_check_rejects_read_only_folder_and_file(tmp_path, monkeypatch):
    # os.access stands in for permissions: as root (CI) a chmod would not deny anything
    existing = tmp_path / "old.csv"
    existing.write_text("x")
    monkeypatch.setattr(paths.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(InputError, match="folder .* is not writable"):
        _check_output(tmp_path / "out.csv")
    monkeypatch.setattr(paths.os, "access", lambda path, mode: Path(path) != existing)
    with pytest.raises(InputError, match="exists and is not writable"):
        _check_output(existing)


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    report.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        report.atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- CSV


def test_csv_round_trip_is_exact_and_loads_in_pandas(tmp_path):
    rows = [row(0.0), row(1 / 3, mir=math.nan, note="MIR is undefined"), row(1.0)]
    path = tmp_path / "lmc.csv"
    report.write_csv(path, rows, LMC_COLUMNS)
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(LMC_COLUMNS)
    assert math.isnan(frame["mir"][1]) and frame["alpha"][1] == 1 / 3
    back = report.read_csv_rows(path, LMC_COLUMNS)
    for got, want in zip(back, rows, strict=True):
        assert got.keys() == want.keys()
        for c in LMC_COLUMNS:
            assert got[c] == want[c] or (math.isnan(got[c]) and math.isnan(want[c]))
    assert isinstance(back[0]["n_samples"], int)


def test_csv_to_stdout_stream():
    out = io.StringIO()
    report.write_csv("-", [row()], LMC_COLUMNS, stream=out)
    assert out.getvalue().splitlines()[0] == ",".join(LMC_COLUMNS)


def test_read_csv_rows_rejects_other_columns(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"ratio": [0.5]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="another command"):
        report.read_csv_rows(path, LMC_COLUMNS)


def _rows_log(path, resume=False):
    opts = RunOptions.of("lmc", {"csv": str(path), "resume": resume})
    return RowsLog(
        opts,
        LMC_COLUMNS,
        by_point("alpha"),
        "alpha",
        {"command": "lmc", "options": {}, "inputs": {}, "checkpoints": {}},
        lambda row: ["a", "b"],
        None,
    )


def test_rows_log_writes_every_row_and_resumes(tmp_path, monkeypatch):
    import infoprobe.api.outputs as outputs

    path = tmp_path / "sweep.csv"
    log = _rows_log(path)
    log.add(row(1.0))
    assert len(pd.read_csv(path)) == 1  # on disk after the first row
    assert json.loads((tmp_path / "sweep.csv.run.json").read_text())["command"] == "lmc"
    log.add(row(0.0))
    monkeypatch.setattr(outputs, "check_resumed", lambda recorded, *a, **k: recorded)
    resumed = _rows_log(path, resume=True)
    assert sorted(resumed.finished()) == [0, round(1.0 / 1e-6)]
    resumed.add(row(0.5))
    assert sorted(r["alpha"] for r in resumed.rows) == [0.0, 0.5, 1.0]
    assert len(pd.read_csv(path)) == 3
    fresh = _rows_log(path)  # no --resume: start over
    assert fresh.rows == [] and fresh.finished() == {}


def test_rows_log_in_memory_for_stdout():
    log = _rows_log("-")
    log.add(row())
    assert log.path is None and len(log.rows) == 1


# ----------------------------------------------------------------------------- JSON


def test_json_has_rows_metadata_and_no_nan_tokens(tmp_path):
    rows = [row(0.0), row(1.0, mir=math.nan)]
    payload = report.run_payload("lmc", rows, LMC_COLUMNS, barriers={"loss_barrier": math.nan})
    path = tmp_path / "out.json"
    report.write_json(path, payload)
    text = path.read_text()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["command"] == "lmc" and doc["estimate"] == "exact" and doc["n_samples"] == 450
    assert doc["columns"] == list(LMC_COLUMNS) and doc["rows"][1]["mir"] is None
    assert doc["barriers"] == {"loss_barrier": None}


def test_json_lists_values_that_differ_between_rows():
    rows = [row(), {**row(), "n_samples": 100}]
    assert report.run_payload("lmc", rows, LMC_COLUMNS)["n_samples"] == [450, 100]


def test_jsonable_converts_paths_and_scalars():
    import numpy as np
    import torch

    assert report.jsonable(
        {"p": Path("a/b"), "t": torch.tensor(2.5), "n": np.float64(1.0), "inf": math.inf}
    ) == {"p": "a/b", "t": 2.5, "n": 1.0, "inf": None}


# ----------------------------------------------------------------------------- plots


def test_plots_are_written(tmp_path):
    track_rows = [{**row(), "step": s, "mir": 0.5 + s / 1000} for s in (0, 10, 100)]
    lmc_rows = [row(a) for a in (0.0, 0.5, 1.0)]
    prune_rows = [
        {**row(), "ratio": r, "sparsity": r, "mir_dense": 1 - r, "hdr_dense": r} for r in (0, 0.5)
    ]
    for plot, rows, name in (
        (report.plot_track, track_rows, "t.png"),
        (report.plot_lmc, lmc_rows, "l.svg"),
        (report.plot_prune, prune_rows, "p.pdf"),
    ):
        path = tmp_path / name
        report.check_plot_path(path)
        plot(rows, path)
        assert path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.svg", "p.pdf", "t.png"]


def _figures():
    """Each plot's figure for made-up rows: (figure, x label it must have)."""
    track_rows = [{**row(), "step": s, "mir": 0.5 + s / 1000} for s in (0, 10, 100)]
    lmc_rows = [row(a, mir=0.9 - a / 4) for a in (0.0, 0.5, 1.0)]
    prune_rows = [
        {**row(), "ratio": r, "sparsity": r + 0.01, "mir_dense": 1 - r, "hdr_dense": r}
        for r in (0, 0.5, 0.9)
    ]
    tuned = [
        {**r, **{f"ft_{c}": r[c] / 2 for c in ("accuracy", "mir", "hdr", "mir_dense", "hdr_dense")}}
        for r in prune_rows
    ]
    title = "run\ntest_resnet on digits/test.safetensors"
    return [
        (report.track_figure(track_rows, title), "training step"),
        (report.lmc_figure(lmc_rows, title), "α"),
        (report.prune_figure(prune_rows, title), "sparsity"),
        (report.prune_figure(tuned, title), "sparsity"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_plots_read_well(index):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, xlabel = _figures()[index]
    FigureCanvasAgg(fig).draw()  # lays out the legends as a saved file has them
    assert fig.get_suptitle() == "run\ntest_resnet on digits/test.safetensors"
    axes = [ax for ax in fig.axes if ax.get_lines()]
    mir_panels = 0
    for ax in axes:
        if ax.get_xlabel():  # a twin axis shares its partner's x axis
            assert ax.get_xlabel().startswith(xlabel)
        labels = [line.get_label() for line in ax.get_lines()]
        if any(label.upper() == "MIR" for label in labels):
            mir_panels += 1
            # the neural-collapse optimum: a horizontal line at mir_nc
            nc = [line for line in ax.get_lines() if line.get_label().startswith("MIR at neural")]
            assert len(nc) == 1 and set(nc[0].get_ydata()) == {row()["mir_nc"]}
    assert mir_panels == 1
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y0 >= area.y1 - 1e-6, "the legend overlaps the plotting area"
    assert sum(ax.get_legend() is not None for ax in fig.axes) == len(
        [ax for ax in fig.axes if ax.get_xlabel()]
    )  # one legend per panel, twins included


def test_table_fits_80_columns_and_keeps_names_and_arch():
    columns = COLUMNS
    rows = [
        {
            **{c: v for c, v in row().items() if c in columns},
            "checkpoint": f"runs/resnet50-a1_in1k/checkpoint-epoch{e:03d}.pth.tar",
            "model": "resnet50",
        }
        for e in (10, 100)
    ]
    out = io.StringIO()
    report.render_rows(Console(file=out, width=80), rows, columns, title="infoprobe analyze")
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in ("checkpoint-epoch010", "checkpoint-epoch100"):
        assert name in text  # whole names: not folded over lines
    assert "model=resnet50" in text and "mir" in text and "accuracy" in text
    assert "left out to fit 80 columns" in text
    wide = io.StringIO()
    report.render_rows(Console(file=wide, width=200), rows, columns)
    assert "left out" not in wide.getvalue() and "h_zw" in wide.getvalue()


def test_plot_path_checks(tmp_path):
    with pytest.raises(InputError, match="unknown image type '.txt'"):
        report.check_plot_path(tmp_path / "plot.txt")
    with pytest.raises(InputError, match="does not exist"):  # the registry checks the folder
        _check_output(tmp_path / "no" / "plot.png", "--plot")


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(InputError, match=r"pip install 'infoprobe\[plot\]'"):
        report.require_matplotlib()


@pytest.mark.parametrize("command", ["track", "lmc", "prune", "analyze"])
def test_plots_mark_values_left_empty_at_the_noise_floor(command):
    """A ratio left NaN by the degenerate-value rule is drawn as a marker on the x axis,
    labelled undefined; a NaN for another reason (no logits, a failed row) is not."""
    pytest.importorskip("matplotlib")
    from infoprobe.report import plots

    x = {"track": "step", "lmc": "alpha", "prune": "sparsity", "analyze": None}[command]
    rows = []
    for i, note in enumerate(["", "MIR is undefined: h_z = 9.1e-12 (noise floor 6.7e-05)", ""]):
        row = {c: 0.5 for c in (*COLUMNS, "mir_dense", "hdr_dense") if c not in TEXT}
        row.update(checkpoint=f"c{i}", note=note, estimate="exact", mir_nc=0.95)
        if x is not None:
            row[x] = float(i)
        rows.append(row)
    rows[1]["mir"] = rows[1]["hdr"] = math.nan  # degenerate: the note names the floor
    rows[2]["mir"] = math.nan  # empty for another reason: no marker
    figure = plots.FIGURES[command](rows)
    marked = {
        line.get_label().lower(): list(line.get_xdata())
        for ax in figure.axes
        for line in ax.get_lines()
        if "undefined (noise floor)" in str(line.get_label())
    }
    assert {"mir: undefined (noise floor)", "hdr: undefined (noise floor)"} <= set(marked)
    assert all(xs == [1.0] or xs == [1] for xs in marked.values()), marked
