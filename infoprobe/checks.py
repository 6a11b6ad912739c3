"""Validated inputs of the information quantities: shapes, finiteness, labels, unit rows.

Every tensor that enters :mod:`infoprobe.info` passes here first, so that a bad one raises
:class:`InputError` naming it, before any eigen-solve. Rows are upcast to float64 (float16
or bfloat16 round-off would swamp the small eigenvalues) and scaled to unit length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infoprobe.errors import InputError


def check_finite(x: Tensor, name: str) -> None:
    """Raise :class:`InputError` when ``x`` holds NaN or Inf."""
    bad = (~torch.isfinite(x)).sum().item() if x.is_floating_point() else 0
    if bad:
        raise InputError(
            f"{name} contains {bad} NaN/Inf value(s): check the model and data that produced it"
        )


def as_float64(x: Tensor, name: str, ndim: int) -> Tensor:
    """``x`` checked (a finite ``ndim``-dimensional float or integer tensor) and upcast."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-dimensional, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{name} must be a float tensor, got dtype {x.dtype}")
    check_finite(x, name)
    return x.to(torch.float64)


def normalise_rows(x: Tensor, name: str) -> Tensor:
    """Rows scaled to unit length; a zero row has no direction, so it is an error."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = (norms.squeeze(1) == 0).nonzero().flatten()
    if zero.numel():
        shown = ", ".join(str(i) for i in zero[:5].tolist())
        more = "..." if zero.numel() > 5 else ""
        raise InputError(
            f"{name} has {zero.numel()} zero-norm row(s) (rows {shown}{more}) whose direction is "
            "undefined: drop those samples/classes or use drop_zero_rows=True (--drop-zero-rows)"
        )
    return x / norms


def check_labels(labels: Tensor, n: int, num_classes: int) -> Tensor:
    """``labels`` as int64 after checking they are n class indices in ``[0, num_classes)``."""
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(f"labels must be a 1-D tensor of {n} class indices, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}) for a head with {num_classes} rows, found "
            f"values in [{int(labels.min())}, {int(labels.max())}]: check --num-classes or labels"
        )
    return labels


def _drop_zero_rows(features: Tensor, labels: Tensor, head: Tensor) -> tuple[Tensor, Tensor]:
    """Samples kept when zero-norm features, or labels whose head row is zero, are dropped."""
    keep = torch.linalg.vector_norm(features, dim=1) > 0
    keep &= torch.linalg.vector_norm(head, dim=1)[labels] > 0
    return features[keep], labels[keep]


def unit_head(w: Tensor, used: Tensor) -> Tensor:
    """Head rows ``w`` [C, d] scaled to unit length; a zero row that some label uses
    (``used`` [C] bool) raises, one that none uses stays zero (it never enters K_W)."""
    normalise_rows(w[used], "head")
    norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return w / torch.where(norms > 0, norms, torch.ones_like(norms))


def prepare(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    *,
    drop_zero_rows: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated float64 unit rows ``(zh [n, d], labels [n] int64, wh [C, d])``.

    Checks shapes, finiteness and the label range; upcasts (float16/bfloat16 round-off would
    swamp small eigenvalues). Head rows of classes absent from ``labels`` may be zero and
    stay zero; they never enter K_W. Differentiable in ``features`` and ``head``. The
    results live on ``device`` (default: the device of ``features``).
    """
    if device is not None and isinstance(features, Tensor):
        features = features.to(device)
    z = as_float64(features, "features", 2)
    w = as_float64(head, "head", 2)
    if z.shape[1] != w.shape[1]:
        raise InputError(
            f"features have d = {z.shape[1]} but head rows have d = {w.shape[1]}: the head "
            "must be the layer that consumes these features"
        )
    if z.shape[0] == 0:
        raise InputError("features are empty (n = 0): at least one sample is needed")
    y = check_labels(labels, z.shape[0], w.shape[0]).to(z.device)
    w = w.to(z.device)
    if drop_zero_rows:
        z, y = _drop_zero_rows(z, y, w)
        if z.shape[0] == 0:
            raise InputError("every sample has a zero feature or head row: nothing to measure")
    zh = normalise_rows(z, "features")
    used = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    used[y] = True
    return zh, y, unit_head(w, used)


def zero_head_classes(labels: Tensor, head: Tensor, n: int) -> list[int]:
    """Classes that some label uses and whose head row is zero (inputs validated here)."""
    w = as_float64(head, "head", 2)
    y = check_labels(labels, n, w.shape[0])
    used = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    used[y.to(w.device)] = True
    return (used & (torch.linalg.vector_norm(w, dim=1) == 0)).nonzero().flatten().tolist()
