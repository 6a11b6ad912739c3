"""The path registry: every input and output of a run, resolved and checked before any work.

Each case is one a hostile or careless user found: two outputs of one run onto one file,
outputs onto inputs the old list of flags did not know, special files replaced by the
atomic rename. Every refusal is exit 2 with one line naming both sides, and nothing is
computed or written.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_cli import DATA, FAST, FIX, A, B, one_line_error, run

from infoprobe import probe
from infoprobe.errors import InputError
from infoprobe.options import RunOptions
from infoprobe.paths import PathRegistry


@pytest.fixture
def no_work(monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "evaluate", lambda *a, **k: calls.append(1))
    return calls


def _refused(no_work, *args, words=()):
    result = run(*args, code=2)
    one_line_error(result, *words)
    assert no_work == []
    return result


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "outputs,words",
    [
        (["--csv", "{o}/x", "--json", "{o}/x"], ["--json", "is also --csv"]),
        (
            ["--csv", "{o}/r.csv", "--per-class", "--json", "{o}/r.per_class.csv"],
            ["--json", "per-class rows"],
        ),
        (["--csv", "{o}/r.csv", "--json", "{o}/r.csv.run.json"], ["--json", "run record"]),
        (["--csv", "{o}/r.png", "--plot", "{o}/r.png"], ["--plot", "is also --csv"]),
        (
            ["--csv", "{o}/f.safetensors", "--save-features", "{o}/f.safetensors"],
            ["--save-features", "--csv"],
        ),
    ],
)
def test_two_outputs_of_one_run_are_never_one_file(tmp_path, no_work, outputs, words):
    args = [a.replace("{o}", str(tmp_path)) for a in outputs]
    _refused(no_work, "analyze", A, *FAST, *args, words=words)
    assert list(tmp_path.iterdir()) == []


def test_a_toy_field_is_checked_everywhere_with_no_other_change(tmp_path):
    """A new option is one field: its flag, API check, path check and resume record follow."""
    import dataclasses

    from infoprobe import options as options_module
    from infoprobe.cli.options import parameters
    from infoprobe.record import run_record

    option, role = options_module._option, options_module.Role
    twin = lambda value, opts, ckpts: [("--toy-out's twin", f"{value}.twin")]  # noqa: E731
    toy_out = option(
        None,
        "--toy-out",
        kind="str",
        panel="Output",
        role=role.OUTPUT,
        help="a toy output",
        derived=twin,
        commands=frozenset({"analyze"}),
    )
    toy_value = option(
        3, "--toy-value", kind="int", low=1, panel="Measure", role=role.VALUE, help="a toy value"
    )
    toy = dataclasses.make_dataclass(
        "ToyOptions",
        [("toy_out", str | None, toy_out), ("toy_value", int, toy_value)],
        bases=(RunOptions,),
        frozen=True,
    )
    saved = options_module.RunOptions
    options_module.RunOptions = toy
    try:
        opts = toy.of("analyze", {"toy_out": str(A), "data": str(DATA)})
        with pytest.raises(InputError, match="--toy-out .* is checkpoint"):
            PathRegistry.of("analyze", opts, [str(A)]).check()
        csv = tmp_path / "x.csv"
        opts = toy.of("analyze", {"toy_out": str(csv), "csv": f"{csv}.twin"})
        with pytest.raises(InputError, match="twin"):
            PathRegistry.of("analyze", opts, [str(A)]).check()
        with pytest.raises(InputError, match="toy_out"):
            toy.of("analyze", {"toy_out": 3})
        with pytest.raises(InputError, match="--toy-value 0"):
            toy.of("lmc", {"toy_value": 0})
        with pytest.raises(TypeError, match="toy_out"):
            toy.of("lmc", {"toy_out": "x"})  # analyze's only
        built = {p.name: p for p in parameters("analyze")}["toy_out"]
        info = built.annotation.__metadata__[0]  # typer keeps the first flag as "default"
        assert "--toy-out" in (info.default, *info.param_decls)
        assert "toy_out" not in {p.name for p in parameters("lmc")}
        record = run_record("analyze", toy.of("analyze", {"toy_value": 5}), [str(A)])
        assert record["options"]["toy_value"] == 5 and "toy_out" not in record["options"]
    finally:
        options_module.RunOptions = saved


# ----------------------------------------------------------------------------- inputs


@pytest.fixture
def labelled(tmp_path):
    """A copy of the digits data, a class map and a label list, as files of this test."""
    class_map = tmp_path / "classes.txt"
    class_map.write_text("".join(f"c{i}\n" for i in range(10)))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}\n" for i in range(10)))
    return class_map, labels


@pytest.mark.parametrize("which", ["--class-map", "--valid-labels"])
def test_label_files_are_inputs(tmp_path, no_work, labelled, which):
    class_map, labels = labelled
    target = class_map if which == "--class-map" else labels
    before = target.read_bytes()
    _refused(no_work, "analyze", A, *FAST, which, target, "--csv", target, words=["--csv", which])
    assert target.read_bytes() == before


def test_a_typed_model_file_is_an_input(tmp_path, no_work):
    model = tmp_path / "model.py"
    model.write_text("def make(num_classes=10, in_chans=1):\n    raise SystemExit\n")
    _refused(
        no_work,
        "analyze",
        A,
        *FAST,
        "--arch",
        f"{model}:make",
        "--trust-code",
        "--json",
        model,
        words=["--json", "model file"],
    )
    assert "SystemExit" in model.read_text()


def test_a_save_for_hf_config_and_a_local_dir_are_inputs(tmp_path, no_work):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(load_file(A), folder / "model.safetensors")
    (folder / "config.json").write_text('{"architecture": "test_resnet"}')
    _refused(
        no_work,
        "analyze",
        folder / "model.safetensors",
        *FAST,
        "--csv",
        folder / "config.json",
        words=["--csv", "config"],
    )
    _refused(
        no_work,
        "analyze",
        A,
        *FAST,
        "--arch",
        f"local-dir:{folder}",
        "--json",
        folder / "config.json",
        words=["--json", "local-dir"],
    )


def test_a_checkpoint_named_like_a_derived_file_is_protected(tmp_path, no_work):
    ckpt = shutil.copy(A, tmp_path / "r.per_class.csv")
    _refused(
        no_work,
        "analyze",
        ckpt,
        *FAST,
        "--arch",
        "test_resnet",
        "--per-class",
        "--csv",
        tmp_path / "r.csv",
        words=["per-class", "is checkpoint"],
    )


def test_a_hard_link_to_an_input_is_that_input(tmp_path, no_work):
    link = tmp_path / "link.csv"
    os.link(shutil.copy(DATA, tmp_path / "d.safetensors"), link)
    fast = [a if a != str(DATA) else str(tmp_path / "d.safetensors") for a in FAST]
    _refused(no_work, "analyze", A, *fast, "--csv", link, words=["--csv", "--data"])


def test_an_output_inside_an_input_folder_reached_through_a_symlink(tmp_path, no_work):
    series = tmp_path / "series"
    shutil.copytree(FIX / "series", series)
    alias = tmp_path / "alias"
    alias.symlink_to(series)
    _refused(
        no_work,
        "track",
        series,
        *FAST,
        "--csv",
        alias / "out.csv",
        words=["lies inside checkpoint"],
    )
    assert not (series / "out.csv").exists()


# ----------------------------------------------------------------------------- special files


def test_a_device_node_is_never_replaced(no_work):
    before = os.stat("/dev/null")
    _refused(
        no_work,
        "analyze",
        A,
        *FAST,
        "--csv",
        "/dev/null",
        words=["character device", "not a regular file"],
    )
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_a_fifo_and_a_socket_are_refused(tmp_path, no_work):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _refused(no_work, "analyze", A, *FAST, "--json", fifo, words=["FIFO"])
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        _refused(no_work, "analyze", A, *FAST, "--json", sock_path, words=["socket"])


def test_a_symlink_to_a_special_file_is_refused_and_stays(tmp_path, no_work):
    link = tmp_path / "out.csv"
    link.symlink_to("/dev/null")  # as /dev/stdout is, on a terminal
    _refused(no_work, "lmc", A, B, *FAST, "--csv", link, words=["not a regular file"])
    assert link.is_symlink()


def test_stdout_dash_stays_the_way_to_write_to_stdout():
    result = run("analyze", A, *FAST, "--csv", "-")
    assert result.stdout.startswith("checkpoint,")


def test_an_output_folder_for_a_file_is_refused(tmp_path, no_work):
    _refused(no_work, "lmc", A, B, *FAST, "--json", tmp_path, words=["is a folder"])


def test_a_registry_refuses_nothing_in_a_clean_run(tmp_path):
    opts = RunOptions.of(
        "analyze",
        {"data": str(DATA), "csv": str(tmp_path / "a.csv"), "json_out": str(tmp_path / "a.json")},
    )
    registry = PathRegistry.of("analyze", opts, [str(A)])
    registry.check()
    assert Path(tmp_path / "a.csv.run.json") in [e.path for e in registry.outputs]


def test_a_write_never_replaces_a_path_that_became_special(tmp_path):
    """Defence in depth: the atomic write itself refuses a target that is no regular file."""
    from infoprobe.errors import RunFailure
    from infoprobe.report.files import atomic_write_text

    fifo = tmp_path / "late"
    os.mkfifo(fifo)
    with pytest.raises(RunFailure, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert fifo.exists() and not fifo.is_file()
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    atomic_write_text(link, "new")  # a link to a regular file is written through
    assert link.is_symlink() and real.read_text() == "new"
