"""Several processes (torchrun's environment, gloo on CPU) give one process's numbers.

Two processes are started with torch.multiprocessing on a free port of 127.0.0.1, join one
gloo group, and run the same ``infoprobe`` commands (analyze, lmc, prune, and an analyze
whose failure exists on rank 1 only). The rows must equal a single-process run of the same
commands to 1e-9, only rank 0 may print or write, and the failure must reach both.
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from infoprobe import cli, distributed
from infoprobe.errors import InputError
from infoprobe.report import read_csv_rows
from infoprobe.schema import COLUMNS, SWEEP_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
DATA = FIX / "digits" / "test.safetensors"
A = FIX / "lmc" / "same_init_a.safetensors"
B = FIX / "lmc" / "same_init_b.safetensors"
LS1 = FIX / "label_smoothing" / "ls0.1.safetensors"
# 200 samples: 7 batches of 32 (the last one short), split 3 + 4 between two processes
BASE = ["--data", str(DATA), "--max-samples", "200", "--device", "cpu", "--batch-size", "32"]


def _commands(out: Path) -> dict[str, list[str]]:
    return {
        "analyze": [
            "analyze",
            str(A),
            str(LS1),
            *BASE,
            "--csv",
            str(out / "analyze.csv"),
            "--json",
            str(out / "analyze.json"),
            "--save-features",
            str(out / "f-{name}.safetensors"),
        ],
        "lmc": ["lmc", str(A), str(B), *BASE, "--steps", "3", "--csv", str(out / "lmc.csv")],
        "prune": ["prune", str(A), *BASE, "--ratios", "0,0.6", "--csv", str(out / "prune.csv")],
        # samples 150.. overflow to Inf features: only rank 1 (samples 96..199) sees them
        "broken": [
            "analyze",
            str(A),
            "--data",
            str(out.parent / "big.safetensors"),
            "--device",
            "cpu",
            "--batch-size",
            "32",
        ],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun-like process: its stdout/stderr go to files, exit codes to JSON."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    out_dir = Path(out)
    with open(out_dir / f"rank{rank}.out", "w") as o, open(out_dir / f"rank{rank}.err", "w") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
        # one group for all commands (as torchrun gives one per process); each command's
        # setup() then joins nothing and its teardown() leaves this group alone
        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
        assert distributed.setup("cpu") and distributed.world_size() == world
        codes = {}
        for name, args in _commands(out_dir / f"rank{rank}-files").items():
            try:
                cli.app(args=args, prog_name="infoprobe")
            except SystemExit as stop:
                codes[name] = stop.code
        assert distributed.active()
        torch.distributed.destroy_process_group()
    (out_dir / f"rank{rank}.codes").write_text(json.dumps(codes))
    # everything is checked above; skip interpreter teardown, where a gloo worker thread
    # sometimes aborts the spawned process ("terminate called without an active exception")
    os._exit(0)


def _same_rows(got: list[dict], want: list[dict], columns: list[str]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for c in columns:
            if isinstance(w[c], (int, float)) and not isinstance(w[c], bool):
                a, b = float(g[c]), float(w[c])
                assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (c, a, b)
            else:
                assert g[c] == w[c], c


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    x = {k: v[:200].clone() for k, v in load_file(str(DATA)).items()}
    x["x"][150:] = 3e38
    save_file(x, str(tmp_path / "big.safetensors"))
    single, multi = tmp_path / "single", tmp_path / "rank0-files"
    for d in (single, multi, tmp_path / "rank1-files"):
        d.mkdir()

    # the same commands in this one process, on one thread as each worker runs: float32
    # kernels sum in another order on more threads, which would differ by ~1e-8
    runner = CliRunner()
    want_codes = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, args in _commands(single).items():
            result = runner.invoke(cli.app, args)
            want_codes[name] = result.exit_code
    finally:
        torch.set_num_threads(threads)
    assert want_codes == {"analyze": 0, "lmc": 0, "prune": 0, "broken": 2}

    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    for rank in (0, 1):
        codes = json.loads((tmp_path / f"rank{rank}.codes").read_text())
        assert codes == want_codes, (rank, codes)

    # only rank 0 prints and writes; rank 1 wrote nothing at all
    assert not list((tmp_path / "rank1-files").iterdir())
    assert (tmp_path / "rank1.out").read_text() == ""
    assert (tmp_path / "rank1.err").read_text() == ""
    out0, err0 = (tmp_path / "rank0.out").read_text(), (tmp_path / "rank0.err").read_text()
    assert out0.count("infoprobe analyze") == 1 and "infoprobe lmc" in out0

    # the failure lives on rank 1 only; rank 0 reports it once, with the global index
    errors = [line for line in err0.splitlines() if "error" in line]
    assert errors == [
        "infoprobe: error: rank 1: features of 50 samples of "
        f"{tmp_path / 'big.safetensors'} are NaN/Inf (first: sample 150); "
        "check the checkpoint's weights and the input normalisation "
        "(--mean/--std)"
    ]

    for name, command in (("analyze", "analyze"), ("lmc", "lmc"), ("prune", "prune")):
        columns = list(SWEEP_COLUMNS[command] + COLUMNS)
        _same_rows(
            read_csv_rows(multi / f"{name}.csv", columns),
            read_csv_rows(single / f"{name}.csv", columns),
            columns,
        )
    saved = sorted(p.name for p in single.glob("f-*.safetensors"))
    assert len(saved) == 2 and sorted(p.name for p in multi.glob("f-*")) == saved
    for name in saved:
        got, want = load_file(str(multi / name)), load_file(str(single / name))
        assert got.keys() == want.keys()
        for k in want:  # same batches as one process: bitwise the same features
            assert torch.equal(got[k], want[k]), (name, k)


@pytest.mark.parametrize(
    "n,bs,world", [(450, 64, 2), (450, 64, 3), (10, 2, 5), (7, 3, 3), (5, 1, 5)]
)
def test_shards_cover_every_sample_once_in_whole_batches(n, bs, world):
    shards = [distributed._shard_of(r, world, n, bs) for r in range(world)]
    covered = [i for lo, hi in shards for i in range(lo, hi)]
    assert covered == list(range(n))  # in order, no padding, nothing twice
    assert all(lo % bs == 0 for lo, hi in shards if hi > lo)
    sizes = [-(-(hi - lo) // bs) for lo, hi in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_fewer_batches_than_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(InputError, match="2 batches of --batch-size 4 for 3 processes"):
        distributed.shard(8, 4)


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.setup("cpu") and not distributed.active()
    assert distributed.shard(450, 64) == (0, 450) and distributed.is_main()
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t, 3, 64) is t
    with pytest.raises(ValueError, match="plain"), distributed.agreed():
        raise ValueError("plain")


def test_torchrun_device_checks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exception, match="cuda:LOCAL_RANK"):
        distributed.setup("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(Exception, match="WORLD_SIZE"):
        distributed.setup("cpu")
