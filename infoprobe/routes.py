"""How the joint entropy ``H(K_Z o K_W)`` is found: the one vocabulary of routes and limits.

* :class:`Estimate` names the routes (``auto``, ``exact``, ``slq``, ``batch``); the library
  and the command line take exactly these names.
* ``max_exact_dim`` has one meaning per value: ``None`` follows the device
  (:func:`default_max_exact_dim`), ``0`` means no limit, ``k > 0`` limits the side of an
  exact eigen-solve to k (:func:`exact_limit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from infoprobe import slq
from infoprobe.defaults import DEFAULT_MAX_EXACT_DIM, ESTIMATES
from infoprobe.entropy import spectral_entropy
from infoprobe.errors import InputError
from infoprobe.exact import joint_matrix, joint_size

#: Bytes an exact eigen-solve of side m needs on CUDA, per m^2: the float64 matrix, the copy
#: ``eigvalsh`` factorises and its workspace.
_SOLVE_BYTES_PER_ENTRY = 3 * 8


class Estimate(str, Enum):
    """Which route gives the joint entropy (and so MI and MIR).

    ``auto``: exact when its eigen-solve fits ``max_exact_dim``, else ``slq``. ``exact``: the
    full-set value, NaN with a note past the limit. ``slq``: the stochastic Lanczos estimate
    of the full-set value with error bars (:mod:`infoprobe.slq`). ``batch``: the mean of
    mini-batch entropies (taken to be the paper's: assumed), a different quantity.
    """

    auto = "auto"
    exact = "exact"
    slq = "slq"
    batch = "batch"
    # (its values are defaults.ESTIMATES, which the torch-free option declarations read)


def check_estimate(estimate: str | Estimate) -> Estimate:
    """``estimate`` as an :class:`Estimate`; :class:`InputError` for any other name."""
    try:
        return Estimate(estimate)
    except ValueError:
        raise InputError(
            f"estimate must be one of {', '.join(ESTIMATES)}, got {estimate!r}"
        ) from None


def default_max_exact_dim(device: str | torch.device = "cpu") -> int:
    """The largest exact eigen-solve attempted by default on ``device``.

    CPU (and MPS): :data:`DEFAULT_MAX_EXACT_DIM`. CUDA: the largest side m whose solve
    fits the device's free memory now, after the caching allocator has released its unused
    blocks: ``m = floor(sqrt(free / 24))`` (the float64 matrix, the copy ``eigvalsh``
    factorises and its workspace, 8 bytes each per entry). On an 80 GB card with 75 GB free
    that is m = 55,900; n = 50,000 needs 60 GB.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MAX_EXACT_DIM
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    return math.isqrt(int(free) // _SOLVE_BYTES_PER_ENTRY)


def exact_limit(max_exact_dim: int | None, device: torch.device) -> int | None:
    """The largest exact solve for ``max_exact_dim`` on ``device``; None: no limit.

    ``None`` follows the device (:func:`default_max_exact_dim`), ``0`` means no limit and
    ``k > 0`` is the limit k. Anything else raises :class:`InputError`.
    """
    if max_exact_dim is None:
        return default_max_exact_dim(device)
    if isinstance(max_exact_dim, bool) or not isinstance(max_exact_dim, int) or max_exact_dim < 0:
        raise InputError(
            "max_exact_dim must be None (follow the device), 0 (no limit) or a positive int, "
            f"got {max_exact_dim!r}"
        )
    return max_exact_dim or None


def check_size(size: int, limit: int | None, what: str) -> None:
    """Refuse an exact solve of side ``size`` past ``limit`` (None: no limit)."""
    if limit is not None and size > limit:
        raise InputError(
            f"the exact {what} needs a {size} x {size} eigen-solve (over max_exact_dim="
            f"{limit}): use a smaller --estimate-batch-size or raise --max-exact-dim"
        )


@dataclass(frozen=True)
class Joint:
    """The joint entropy from one route: value, 1-sigma error, certified upper bound."""

    h_zw: float
    estimate: str = "exact"
    label: str = "exact"
    err: float | None = None
    upper: float | None = None
    note: str = ""


def refused(size: int, limit: int) -> Joint:
    """The joint entropy left NaN because its exact solve is over ``limit``."""
    return Joint(
        math.nan,
        note=(
            f"h_zw, mi and mir not computed: the exact joint entropy needs a {size} x {size} "
            f"eigen-solve (over max_exact_dim={limit}); use --estimate auto or slq for an "
            "estimate with error bars, or raise --max-exact-dim"
        ),
    )


def joint_entropy(
    zh: Tensor, y: Tensor, wh: Tensor, estimate: Estimate, limit: int | None, slq_options: dict
) -> Joint:
    """H(K_Z o K_W): exact when the solve fits ``limit`` (or ``estimate="exact"``, which
    gives NaN with a note past it); the stochastic Lanczos estimate otherwise."""
    size = joint_size(zh.shape[0], zh.shape[1], wh.shape[0])
    fits = limit is None or size <= limit
    if estimate == Estimate.exact or (estimate == Estimate.auto and fits):
        if not fits:
            return refused(size, limit)
        return Joint(float(spectral_entropy(joint_matrix(zh, y, wh))))
    found = slq.joint_entropy(zh, y, wh, **slq_options)
    return Joint(found.value, "slq", found.label, found.err, found.upper)
