"""infoprobe: matrix information theory for trained classifiers.

Song et al., "Unveiling the Dynamics of Information Interplay in Supervised Learning",
ICML 2024 (arXiv 2406.03999).
"""

from infoprobe.api import analyze, lmc, prune, track
from infoprobe.errors import InfoprobeError, InputError, RunFailure
from infoprobe.info import (
    Interplay,
    NCOptimum,
    interplay,
    interplay_between,
    matrix_entropy,
    nc_optimum,
)
from infoprobe.losses import InterplayLoss

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
