"""Dependency floors checked at run time: an unsafe torch or timm refuses to run."""

from __future__ import annotations

import pytest

from infoprobe import versions
from infoprobe.errors import RunFailure


def _installed(**found):
    return lambda package: found.get(package)


@pytest.mark.parametrize(
    ("package", "version", "advisory"),
    [
        ("torch", "2.5.1", "CVE-2025-32434"),
        ("torch", "2.9.1+cu128", "CVE-2026-24747"),
        ("torch", "2.6.0", "CVE-2026-24747"),
        ("timm", "1.0.0", "checkpoint_path"),
        ("timm", "1.0.25", "1.0.26"),
        ("timm", "0.9.16", "checkpoint_path"),
    ],
)
def test_unsafe_versions_refuse_to_run_naming_the_advisory(package, version, advisory):
    safe = {"torch": "2.10.0", "timm": "1.0.26"}
    with pytest.raises(versions.UnsafeDependency, match=advisory) as err:
        versions.check_dependencies(_installed(**{**safe, package: version}))
    message = str(err.value)
    assert f"{package} {version} is installed" in message and "pip install -U" in message
    assert "\n" not in message
    assert isinstance(err.value, RunFailure)


@pytest.mark.parametrize(
    ("torch", "timm"),
    [("2.10.0", "1.0.26"), ("2.10", "1.0.26"), ("2.14.1+cu130", "1.0.31"), ("3.0.0a0", "1.1.0")],
)
def test_versions_at_or_above_the_floors_pass(torch, timm):
    versions.check_dependencies(_installed(torch=torch, timm=timm))


def test_a_missing_package_is_left_to_its_import():
    versions.check_dependencies(_installed(timm="1.0.26"))


def test_release_reads_the_leading_numbers():
    assert versions.release("2.10.0+cu130") == (2, 10, 0)
    assert versions.release("2.10.0a0") == (2, 10, 0)
    assert versions.release("1.0.26.dev0") == (1, 0, 26)
    assert versions.release("2.9") < (2, 10) <= versions.release("2.10")
    assert versions.release("garbage") == ()  # below every floor: refused


def test_the_floors_match_pyproject():
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {r.name: r.specifier for r in map(Requirement, deps)}
    for floor in versions.FLOORS:
        assert str(declared[floor.package]) == ">=" + ".".join(map(str, floor.minimum))


def test_this_environment_passes_through_the_installed_metadata(monkeypatch):
    import importlib.metadata

    versions.check_dependencies()  # the real torch and timm of this environment
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda p: "2.5.1" if p == "torch" else real(p)
    )
    with pytest.raises(versions.UnsafeDependency, match="CVE-2025-32434"):
        versions.check_dependencies()
