"""The README's quick start works as written, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced(language: str) -> list[str]:
    """The README's fenced blocks whose info string is ``language`` ('' for plain), in order."""
    blocks, current, info = [], None, ""
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == language:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def quick_start() -> tuple[str, str]:
    """The two commands right after the intro: the main job and the test command."""
    first, second = (block.strip() for block in fenced("bash")[:2])
    return first, second


def table_rows(text: str) -> dict[str, list[str]]:
    """``{checkpoint: [numbers...]}`` from a rendered analyze table."""
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) == 10 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_start_comes_first_and_installs_the_package():
    install_and_run, install_and_test = quick_start()
    assert README.index(install_and_run) < README.index("## What it measures")
    assert re.fullmatch(r"python3 -m pip install -e \. && infoprobe analyze .+", install_and_run)
    assert "--data fixtures/digits/test.safetensors" in install_and_run
    assert install_and_test == "python3 -m pip install -e '.[dev]' && python3 -m pytest"


def test_ci_runs_ruff_and_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    commands = [line for line in script.splitlines() if line and not line.startswith("#")]
    install, test = quick_start()[1].split(" && ")
    lint = ["python3 -m ruff check .", "python3 -m ruff format --check ."]
    assert commands[commands.index(install) :] == [install, *lint, test]


@pytest.mark.slow
def test_readme_first_command_runs_and_prints_the_documented_table():
    install_and_run = quick_start()[0]
    args = shlex.split(install_and_run.split("&&", 1)[1])
    assert args[0] == "infoprobe"
    for path in args[1:]:
        if path.startswith("fixtures/"):
            assert (ROOT / path).is_file(), f"README names a missing fixture {path}"
    # the package's own entry point: the same program as the installed `infoprobe` script
    # a pipe without COLUMNS gets the wide table the README shows (pytest sets COLUMNS=80)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-m", "infoprobe", *args[1:]],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    got = table_rows(out.stdout)
    documented = table_rows(fenced("")[0])
    assert got.keys() == documented.keys() == {"ls0.0", "ls0.1"}
    for name, numbers in documented.items():
        assert got[name][0] == numbers[0], "accuracy differs from the README"
        assert [float(x) for x in got[name]] == pytest.approx([float(x) for x in numbers], abs=2e-4)
    assert "n_samples=450, n_classes=10, estimate=exact" in out.stdout
    assert "error" not in out.stderr


@pytest.mark.parametrize("block", fenced("bash")[2:])
def test_usage_examples_use_real_fixture_paths(block):
    for line in block.strip().splitlines():
        words = shlex.split(line)
        assert words[0] == "infoprobe" and words[1] in ("analyze", "track", "lmc", "prune", "plot")
        for word in words:
            if word.startswith("fixtures/") and "*" not in word:
                assert (ROOT / word).exists(), word
