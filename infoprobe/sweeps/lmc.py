"""Linear mode connectivity: the path ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``.

Every floating-point tensor of the state dict is interpolated, BatchNorm running statistics
included; integer buffers (``num_batches_tracked``) come from A. Interpolated BN statistics
are not the statistics of the interpolated network, which is why the literature re-estimates
them (REPAIR, Jordan et al., ICLR 2023; "reset BN"): :func:`reset_bn_statistics`.

Barriers (Frankle et al., ICML 2020), over the evaluated points with alpha in [0, 1]:

* loss barrier = max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))];
* accuracy barrier = max_alpha [((1 - alpha) acc(0) + alpha acc(1)) - acc(alpha)], the
  largest drop below the straight line. Both are >= 0 since the endpoints count (gap 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from infoprobe import parsing, probe
from infoprobe.checkpoints import compare_states
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError, RunFailure, short_list
from infoprobe.info import DEFAULT_BATCH_SIZE, batch_indices
from infoprobe.rows import MeasureOptions
from infoprobe.sweeps.common import (
    DEFAULT_MEASURE,
    evaluate_row,
    is_done,
    pending,
    sweep_progress,
)

__all__ = [
    "DEFAULT_STEPS",
    "barriers",
    "batchnorm_layers",
    "check_compatible",
    "interpolate_state",
    "lmc_sweep",
    "parse_alphas",
    "reset_bn_statistics",
]

#: ``--steps`` when neither ``--steps`` nor ``--alphas`` is given.
DEFAULT_STEPS = 11


def _mismatches(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], name_a: str, name_b: str
) -> list[str]:
    """Descriptions of the keys and shapes that differ (BatchNorm step counters ignored)."""
    diff = compare_states(state_a, state_b)
    shapes = [f"{k} {sa} vs {sb}" for k, sa, sb in diff.mismatched]
    parts = []
    if diff.only_a:
        parts.append(f"{len(diff.only_a)} keys only in {name_a} ({short_list(diff.only_a, 3)})")
    if diff.only_b:
        parts.append(f"{len(diff.only_b)} keys only in {name_b} ({short_list(diff.only_b, 3)})")
    if shapes:
        parts.append(f"{len(shapes)} shape/dtype mismatches ({short_list(shapes, 3)})")
    return parts


def check_compatible(
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    name_a: str = "A",
    name_b: str = "B",
) -> None:
    """Raise :class:`InputError` unless the two state dicts have the same keys and shapes.

    ``num_batches_tracked`` keys may be missing on either side (old checkpoints lack them;
    the interpolation takes integer buffers from A). The message lists the differing keys
    and shapes.
    """
    parts = _mismatches(state_a, state_b, name_a, name_b)
    if parts:
        raise InputError(
            f"{name_a} and {name_b} must have the same architecture: {'; '.join(parts)}; "
            "interpolate checkpoints of one model (same --arch, --num-classes, --in-chans)"
        )


def interpolate_state(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``, key by key.

    Floating-point tensors (parameters and buffers, BN running statistics included) are
    combined in at least float32 (float64 when either side is) and returned in A's dtype on
    A's device; ``alpha = 0`` and ``alpha = 1`` reproduce A and B exactly. Other tensors
    (integer buffers such as ``num_batches_tracked``) are A's own tensors, not copies.
    Keys are A's. Any finite ``alpha`` is accepted (outside [0, 1] it extrapolates).
    Raises :class:`InputError` for incompatible states (:func:`check_compatible`).
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise InputError(f"alpha {alpha} is not finite")
    check_compatible(state_a, state_b)
    mixed = {}
    for key, a in state_a.items():
        b = state_b.get(key)
        if b is None or not a.is_floating_point():
            mixed[key] = a
            continue
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        b = b.to(device=a.device, dtype=dtype)
        mixed[key] = ((1.0 - alpha) * a.to(dtype) + alpha * b).to(a.dtype)
    return mixed


# --------------------------------------------------------------------------- BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules (1d/2d/3d, Sync, timm's BatchNormAct) with running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def _require_batchnorm(model: nn.Module) -> list[_BatchNorm]:
    layers = batchnorm_layers(model)
    if not layers:
        raise InputError(
            "--reset-bn needs BatchNorm layers with running statistics and this model has "
            "none: drop --reset-bn"
        )
    return layers


def _bn_batches(n: int, batches: int | None, batch_size: int, seed: int) -> list[Tensor]:
    """The first ``batches`` of :func:`infoprobe.info.batch_indices`: one seeded
    permutation of ``range(n)`` in full batches only.

    A sorted dataset (an image folder is sorted by class) would give class-pure batches;
    the permutation mixes them. Full batches only, because BN in train mode refuses a batch
    of one and a small last batch would weigh as much as a full one in the average. With
    ``n < batch_size`` the one batch is the whole set.
    """
    parts = batch_indices(n, batch_size, seed)
    if batches is not None and not 1 <= batches <= len(parts):
        raise InputError(
            f"--bn-batches {batches}: the BN data has {n} samples, {len(parts)} full batch(es) "
            f"of {len(parts[0])}; use --bn-batches between 1 and {len(parts)}"
        )
    return parts if batches is None else parts[:batches]


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def reset_bn_statistics(
    model: nn.Module,
    data: LabelledTensors,
    *,
    batches: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> int:
    """Re-estimate every BatchNorm layer's running statistics from ``data`` (REPAIR-style).

    ``running_mean``/``running_var`` are reset and recomputed as the cumulative average
    (``momentum=None``) over ``batches`` full batches of ``batch_size`` samples drawn by one
    permutation seeded with ``seed`` (default: every full batch). BN layers run in train
    mode, every other module in eval mode (dropout off), under ``no_grad``. Afterwards each
    module's training flag, each BN's momentum and ``num_batches_tracked`` are restored:
    only ``running_mean`` and ``running_var`` change. On a failure they are restored too.

    ``device``: where to run (see :func:`infoprobe.probe.resolve_device`); the model is
    moved there. None: where the model is. Returns the number of samples used.
    Raises :class:`InputError` when the model has no BatchNorm with running statistics.
    """
    layers = _require_batchnorm(model)
    index_batches = _bn_batches(len(data), batches, batch_size, seed)
    dev = _model_device(model) if device is None else probe.resolve_device(device)
    model.to(dev)
    modes = [(m, m.training) for m in model.modules()]
    saved = [
        (m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone())
        for m in layers
    ]
    completed = False
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: running = mean over batches
            m.train()
        with torch.no_grad():
            for i, idx in enumerate(index_batches):
                _forward_bn_batch(model, data.take(idx).to(dev), i)
        completed = True
    finally:
        for m, (momentum, count, mean, var) in zip(layers, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
            if not completed:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        for m, training in modes:
            m.training = training
    return sum(len(idx) for idx in index_batches)


def _forward_bn_batch(model: nn.Module, x: Tensor, i: int) -> None:
    try:
        model(x)
    except (RuntimeError, ValueError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RunFailure(
            f"re-estimating BatchNorm statistics failed on BN-data batch {i} of shape "
            f"{tuple(x.shape)} ({reason}); check --bn-data"
        ) from None


# --------------------------------------------------------------------------- the sweep


def parse_alphas(
    steps: int | None = None, alphas: str | Iterable[float] | None = None
) -> list[float]:
    """Interpolation points, ascending.

    ``steps=K``: ``K`` evenly spaced points ``i / (K - 1)`` (``K >= 2``; exact 0 and 1);
    ``alphas="0,0.25,1"`` (or a sequence): those values, each in [0, 1], no duplicates.
    Neither: ``DEFAULT_STEPS`` (11) points. Both: :class:`InputError`.
    """
    if steps is not None and alphas is not None:
        raise InputError("conflicting options --steps and --alphas: give one of them")
    if alphas is not None:
        return list(parsing.alphas(alphas, "--alphas"))
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InputError(f"--steps {steps!r}: give an integer >= 2 (the endpoints count)")
    return [i / (steps - 1) for i in range(steps)]


def _aliased(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with tensors that share memory with ``model`` cloned.

    A state taken as ``model.state_dict()`` aliases the weights that each point overwrites;
    without the clone the sweep would interpolate from already-interpolated weights.
    """
    own = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    return {k: v.clone() if v.untyped_storage().data_ptr() in own else v for k, v in state.items()}


def _check_fits(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    parts = _mismatches(model.state_dict(), state, "the model", "the checkpoints")
    if parts:
        raise InputError(
            f"the checkpoints do not fit the model: {'; '.join(parts)}; build the model with "
            "the checkpoints' architecture"
        )


def lmc_sweep(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    data: LabelledTensors,
    alphas: Sequence[float],
    *,
    name: str = "A→B",
    eval_kwargs: dict | None = None,
    measure: MeasureOptions = DEFAULT_MEASURE,
    bn_data: LabelledTensors | None = None,
    bn_batches: int | None = None,
    bn_batch_size: int | None = None,
    bn_seed: int = 0,
    skip: Iterable[float] = (),
    progress: probe.ProgressSink | None = None,
) -> Iterator[dict]:
    """Evaluate ``theta(alpha)`` for each alpha; yield one row per point as it completes.

    Row: ``{"alpha": alpha, **analysis_row(name, evaluation, measure)}`` (the lmc columns
    of :data:`infoprobe.rows.SWEEP_COLUMNS`). ``alphas`` are validated like ``--alphas``
    and evaluated ascending; those within :data:`~infoprobe.sweeps.VALUE_TOL` of a value in
    ``skip`` are not evaluated (resume). ``model`` is one object whose weights are
    overwritten with ``load_state_dict(interpolate_state(...))`` at each point (no copy of
    the model); afterwards it holds the last point's weights. ``eval_kwargs`` go to
    :func:`infoprobe.probe.evaluate` (device, batch_size, amp, channels_last, head).

    ``bn_data``: when given, :func:`reset_bn_statistics` runs at every alpha (endpoints
    included) on ``bn_batches`` batches of ``bn_batch_size`` (default: the evaluation batch
    size) samples, before the evaluation. Without it the alpha = 0 and alpha = 1 rows equal
    the analysis of A and of B. ``progress`` gets one step per row; do not also pass one in
    ``eval_kwargs`` (a sink shows one bar at a time).

    Raises :class:`InputError` for incompatible states, bad alphas, or ``bn_data`` with a
    model that has no BatchNorm; the checks run before the first evaluation.
    """
    alphas = list(parsing.alphas(alphas, "--alphas"))
    check_compatible(state_a, state_b)
    _check_fits(model, state_a)
    eval_kwargs = dict(eval_kwargs or {})
    if bn_data is not None:
        _require_batchnorm(model)
        bn_kwargs = {
            "batches": bn_batches,
            "batch_size": bn_batch_size or eval_kwargs.get("batch_size", DEFAULT_BATCH_SIZE),
            "device": eval_kwargs.get("device", "auto"),
            "seed": bn_seed,
        }
    state_a, state_b = _aliased(model, state_a), _aliased(model, state_b)
    todo = pending(alphas, skip)
    with sweep_progress(progress, len(todo), f"lmc {name}") as step:
        for alpha in todo:
            # strict=False: _check_fits allowed a missing num_batches_tracked
            model.load_state_dict(interpolate_state(state_a, state_b, alpha), strict=False)
            if bn_data is not None:
                reset_bn_statistics(model, bn_data, **bn_kwargs)
            _, row = evaluate_row(model, data, name, eval_kwargs, measure)
            step()
            yield {"alpha": alpha, **row}


# --------------------------------------------------------------------------- barriers


def _largest(gaps: list[tuple[float, float]]) -> tuple[float, float]:
    """(max gap, its alpha); the smallest alpha on ties; NaN when any gap is NaN."""
    if any(math.isnan(g) for g, _ in gaps):
        return math.nan, math.nan
    best = max(gaps, key=lambda ga: ga[0])  # max keeps the first of equal keys
    return best


def _no_barrier(reason: str) -> dict:
    nan = math.nan
    return {
        "loss_barrier": nan,
        "loss_barrier_alpha": nan,
        "accuracy_barrier": nan,
        "accuracy_barrier_alpha": nan,
        "note": reason,
    }


def barriers(rows: Iterable[Mapping]) -> dict:
    """Loss and accuracy barriers of an lmc sweep (module doc for the definitions).

    ``rows``: mappings with ``alpha``, ``loss`` and ``accuracy`` (yielded rows, or rows read
    back from a CSV), in any order. Returns ``loss_barrier``, ``loss_barrier_alpha``,
    ``accuracy_barrier``, ``accuracy_barrier_alpha`` (Python floats) and ``note``. Without
    rows at alpha = 0 and alpha = 1 the barriers are NaN and ``note`` says why; a NaN loss
    or accuracy makes that barrier NaN, with a note. Raises :class:`InputError` for a row
    without those keys or an alpha given twice.
    """
    points: dict[float, tuple[float, float]] = {}
    for row in rows:
        try:
            alpha, loss, acc = (float(row[k]) for k in ("alpha", "loss", "accuracy"))
        except (KeyError, TypeError, ValueError):
            raise InputError(
                "barriers need rows with numeric 'alpha', 'loss' and 'accuracy'; got keys "
                f"{sorted(row)}"
            ) from None
        if any(is_done(alpha, [a]) for a in points):
            raise InputError(f"lmc rows hold alpha {alpha:g} twice; keep one row per alpha")
        points[alpha] = (loss, acc)
    ends = [next((a for a in points if is_done(a, [end])), None) for end in (0.0, 1.0)]
    if None in ends:
        return _no_barrier("barriers need rows at alpha = 0 and alpha = 1; include both endpoints")
    (loss0, acc0), (loss1, acc1) = points[ends[0]], points[ends[1]]
    ordered = sorted(points.items())
    # gap above (loss) or drop below (accuracy) the straight line between the endpoints
    loss = _largest([(la[0] - ((1 - a) * loss0 + a * loss1), a) for a, la in ordered])
    acc = _largest([(((1 - a) * acc0 + a * acc1) - la[1], a) for a, la in ordered])
    notes = [
        f"{what} barrier is NaN: a {what} along the path is NaN"
        for what, value in (("loss", loss), ("accuracy", acc))
        if math.isnan(value[0])
    ]
    return {
        "loss_barrier": float(loss[0]),
        "loss_barrier_alpha": float(loss[1]),
        "accuracy_barrier": float(acc[0]),
        "accuracy_barrier_alpha": float(acc[1]),
        "note": "; ".join(notes),
    }
