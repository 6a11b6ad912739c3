"""Project text points only at the project's own docs; shared defaults live in one place."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

from infoprobe import info, probe, rows
from infoprobe.api.common import settled
from infoprobe.defaults import DEFAULT_BATCH_SIZE
from infoprobe.options import RunOptions
from infoprobe.sweeps import lmc

ROOT = Path(__file__).resolve().parents[1]


def test_no_project_file_points_to_a_design_document_outside_it():
    files = [
        *ROOT.glob("infoprobe/**/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("examples/**/*.py"),
        ROOT / "README.md",
        ROOT / "fixtures/README.md",
    ]
    mentions = [str(f) for f in files if "DESIGN.md" in f.read_text(encoding="utf-8")]
    assert mentions == []


def test_the_default_batch_size_is_one_constant():
    defaults = [
        inspect.signature(probe.evaluate).parameters["batch_size"].default,
        inspect.signature(info.interplay).parameters["batch_size"].default,
        inspect.signature(lmc.reset_bn_statistics).parameters["batch_size"].default,
        rows.MeasureOptions().batch_size,
        RunOptions().batch_size,
        settled(RunOptions.of("analyze", {"estimate": "batch"})).estimate_batch_size,
        DEFAULT_BATCH_SIZE,
    ]
    assert defaults == [info.DEFAULT_BATCH_SIZE] * len(defaults)
    for path in [*ROOT.glob("infoprobe/**/*.py"), *ROOT.glob("benchmarks/bench_*.py")]:
        text = path.read_text(encoding="utf-8")
        pattern = r"(batch_size: int = |default=|get\(\"batch_size\", )256\b"
        assert not re.search(pattern, text), path


def test_bn_batches_are_the_batch_estimate_batches():
    for n, size, k in [(100, 16, 3), (100, 16, None), (10, 16, None)]:
        want = info.batch_indices(n, size, seed=4)
        got = lmc._bn_batches(n, k, size, seed=4)
        assert len(got) == (len(want) if k is None else k)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=False))
