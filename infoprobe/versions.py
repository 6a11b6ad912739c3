"""The oldest torch and timm infoprobe runs with, checked at run time.

``torch.load(weights_only=True)`` is only as safe as the torch that implements it, and timm
opens checkpoint files on its own in some versions. pyproject.toml states the floors for
installers; :func:`check_dependencies` enforces them where an environment ignored them (an
older torch pinned by another package, a source checkout on ``sys.path``). The command line
and the Python API call it before any file is read. No torch import: the versions come from
the installed distributions' metadata.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass

from infoprobe.errors import RunFailure

__all__ = ["FLOORS", "Floor", "UnsafeDependency", "check_dependencies", "release"]


@dataclass(frozen=True)
class Floor:
    """``package`` must be at least version ``minimum``; ``why`` names the advisory."""

    package: str
    minimum: tuple[int, ...]
    why: str


FLOORS = (
    Floor(
        "torch",
        (2, 10),
        "torch up to 2.5.1 lets a crafted file run code through torch.load(weights_only=True) "
        "(CVE-2025-32434), and torch below 2.10 has a further weights-only bypass "
        "(CVE-2026-24747)",
    ),
    Floor(
        "timm",
        (1, 0, 26),
        "timm 1.0.0 to 1.0.25 unpickle a checkpoint_path given to create_model without "
        "weights_only (fixed in 1.0.26)",
    ),
)


class UnsafeDependency(RunFailure):
    """An installed torch or timm below :data:`FLOORS`: files are not read with it."""


def release(version: str) -> tuple[int, ...]:
    """The release numbers a version string starts with: ``"2.10.0+cu130"`` -> (2, 10, 0),
    ``"2.10.0a0"`` -> (2, 10, 0), ``"1.0.26.dev0"`` -> (1, 0, 26)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def installed(package: str) -> str | None:
    """The installed version of ``package`` (None: not installed as a distribution)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_dependencies(version_of: Callable[[str], str | None] | None = None) -> None:
    """Raise :class:`UnsafeDependency` naming the advisory when an installed torch or timm
    is older than its floor in :data:`FLOORS`. ``version_of`` gives a package's version
    (default :func:`installed`); a package that is not installed passes (its import fails
    later, with its own message)."""
    for floor in FLOORS:
        version = (version_of or installed)(floor.package)
        if version is None or release(version) >= floor.minimum:
            continue
        need = ".".join(map(str, floor.minimum))
        raise UnsafeDependency(
            f"{floor.package} {version} is installed; infoprobe needs {floor.package}>={need} "
            f"because {floor.why}; upgrade it: pip install -U '{floor.package}>={need}'"
        )
