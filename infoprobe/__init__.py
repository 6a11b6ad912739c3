"""infoprobe: matrix information theory for trained classifiers.

Song et al., "Unveiling the Dynamics of Information Interplay in Supervised Learning",
ICML 2024 (arXiv 2406.03999).
"""

from importlib import import_module
from typing import Any

# The public names load their modules on first use (PEP 562), so that `import infoprobe`
# and the command's entry point start without importing torch: a Ctrl-C during start-up
# then meets the command's handler, not a traceback.
_LAZY = {
    "analyze": "infoprobe.api",
    "lmc": "infoprobe.api",
    "prune": "infoprobe.api",
    "track": "infoprobe.api",
    "InfoprobeError": "infoprobe.errors",
    "InputError": "infoprobe.errors",
    "RunFailure": "infoprobe.errors",
    "Interplay": "infoprobe.info",
    "NCOptimum": "infoprobe.info",
    "interplay": "infoprobe.info",
    "interplay_between": "infoprobe.info",
    "matrix_entropy": "infoprobe.info",
    "nc_optimum": "infoprobe.info",
    "InterplayLoss": "infoprobe.losses",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infoprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "InfoprobeError",
    "InputError",
    "Interplay",
    "InterplayLoss",
    "NCOptimum",
    "RunFailure",
    "__version__",
    "analyze",
    "interplay",
    "interplay_between",
    "lmc",
    "matrix_entropy",
    "nc_optimum",
    "prune",
    "track",
]
