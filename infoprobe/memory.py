"""How much memory a file may make infoprobe allocate: the memory available now.

Sizes that a file declares (tensor headers, a model built from recorded options) are checked
against :func:`available_bytes` before anything is allocated, so that a small hostile file
is refused as bad input instead of ending in a MemoryError or the kernel's OOM killer.
"""

from __future__ import annotations

import os
from pathlib import Path

from infoprobe.errors import InputError

__all__ = ["available_bytes", "check_fits", "gib"]

_CGROUP_LIMITS = (
    # cgroup v2: the limit and the usage of this process's group
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    # cgroup v1
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _physical() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes() -> int | None:
    """Bytes this process can still allocate: the least of the kernel's ``MemAvailable``
    and the room left under a cgroup (container) limit; the physical memory where neither
    is known (not Linux); None when nothing is known."""
    found = []
    for limit_file, usage_file in _CGROUP_LIMITS:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None:
            found.append(max(limit - usage, 0))
    kernel = _meminfo_available()
    if kernel is not None:
        found.append(kernel)
    if not found and _physical() is not None:
        found.append(_physical())
    return min(found) if found else None


def gib(n: int) -> str:
    """``n`` bytes in GiB for a message (two decimals)."""
    return f"{n / (1 << 30):.2f} GiB"


def check_fits(need: int, what: str, fix: str) -> None:
    """InputError when ``need`` bytes exceed :func:`available_bytes`; ``what`` names what
    declares them and ``fix`` how to proceed."""
    room = available_bytes()
    if room is not None and need > room:
        raise InputError(
            f"{what} needs {gib(need)} of memory, more than the {gib(room)} available; {fix}"
        )
