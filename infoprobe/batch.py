"""The batch estimate: entropies averaged over seeded mini-batches.

Song et al. are taken to approximate the dataset's entropies by the mean of mini-batch entropies at
B = 256 (assumed; the paper's text was not available to check); this is a different quantity from
the full-set value (each batch entropy is at most ``log B``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from infoprobe.errors import InputError
from infoprobe.routes import Joint


def batch_indices(n: int, batch_size: int, seed: int) -> list[Tensor]:
    """The documented batching of the batch estimate.

    A ``torch.randperm(n)`` drawn from ``torch.Generator().manual_seed(seed)`` is split into
    consecutive batches of ``batch_size``; a final batch smaller than ``batch_size`` is
    dropped whenever at least one full batch exists (entropies depend on the batch size,
    bounded by ``log B``). With ``n < batch_size`` the single batch is the whole set.
    """
    if batch_size < 1:
        raise InputError(f"batch size for the batch estimate must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    full = n // batch_size
    if full == 0:
        return [order]
    return list(order[: full * batch_size].split(batch_size))


def batch_mean(
    entropies_of: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
    n: int,
    batch_size: int,
    seed: int,
    check_size: Callable[[int], None],
) -> tuple[tuple[float, float, float], int, int]:
    """Mean entropies over the :func:`batch_indices` batches.

    ``entropies_of(idx)`` gives the three entropies on samples ``idx``; ``check_size(m)``
    refuses an exact solve on ``m`` samples that is too large. Returns
    ``(entropies, n_batches, n_used)``.
    """
    parts = batch_indices(n, batch_size, seed)
    check_size(len(parts[0]))
    sums = torch.zeros(3, dtype=torch.float64)
    for idx in parts:
        sums += torch.stack(entropies_of(idx)).cpu()
    means = tuple(float(s) / len(parts) for s in sums)
    return means, len(parts), sum(len(idx) for idx in parts)


def batch_label(batch_size: int, seed: int) -> str:
    """The ``estimate`` column of a batch estimate."""
    return f"batch(B={batch_size},seed={seed})"


def batch_joint(means: tuple[float, float, float], batch_size: int, seed: int) -> Joint:
    """The joint part of a batch estimate from its mean entropies."""
    return Joint(means[2], "batch", batch_label(batch_size, seed))
