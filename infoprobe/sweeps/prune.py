"""Pruning sweeps: unstructured masks through ``torch.nn.utils.prune``, optionally fine-tuned.

Prunable weights are the ``weight`` tensors of Conv1d/2d/3d and Linear layers (subclasses
included); the classifier head is left out unless asked for; biases and norm layers are
never touched. At a ratio r in [0, 1) a method masks

* ``global-magnitude``: the round(r N) smallest |w| over all N prunable weights
  (``global_unstructured`` with ``L1Unstructured``);
* ``layer-magnitude``: the round(r n_l) smallest |w| of each layer of n_l weights
  (``l1_unstructured`` per layer);
* ``random``: round(r N) weights drawn uniformly over all prunable weights
  (``global_unstructured`` with ``RandomUnstructured``, under ``torch.manual_seed(seed)``
  in a forked RNG, so the caller's random state is untouched).

``sparsity`` is measured: the fraction of exact zeros over the prunable weights, which is
round(r N) / N for the global methods (sum_l round(r n_l) / N per layer) unless the dense
weights already hold zeros. ``mir_dense``/``hdr_dense`` are MIR and HDR between the dense
and the pruned model's features on the same samples (:func:`infoprobe.info.interplay_between`),
the comparison Song et al. report for pruning.

With fine-tuning data, each ratio's masked model is then trained (masks fixed, see
:mod:`infoprobe.sweeps.finetune`) and measured again: ``ft_accuracy``, ``ft_loss``,
``ft_mir``, ``ft_hdr`` (fine-tuned features vs the fine-tuned head) and ``ft_mir_dense``,
``ft_hdr_dense`` (fine-tuned features vs the dense model's features on the same samples).
"""

from __future__ import annotations

import atexit
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from infoprobe import heads, parsing, probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError, NonFiniteFeatures
from infoprobe.info import Interplay, interplay_between
from infoprobe.rows import MeasureOptions
from infoprobe.schema import FT_COLUMNS
from infoprobe.sweeps.common import (
    DEFAULT_MEASURE,
    evaluate_row,
    is_done,
    pending,
    sweep_progress,
)
from infoprobe.sweeps.finetune import Diverged, FinetuneOptions, finetune

__all__ = [
    "FT_COLUMNS",
    "METHODS",
    "FinetuneOptions",
    "measured_sparsity",
    "parse_ratios",
    "prunable_parameters",
    "prune_sweep",
]

METHODS: tuple[str, ...] = ("global-magnitude", "layer-magnitude", "random")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

Target = tuple[nn.Module, str]


def parse_ratios(text: str | Iterable[float]) -> list[float]:
    """Pruning ratios from ``"0,0.5,0.9"`` (or a sequence), ascending.

    Each must be a finite number in [0, 1) (1 would remove every weight), given once.
    Raises :class:`InputError` naming the bad value.
    """
    return list(parsing.ratios(text, "--ratios"))


def prunable_parameters(
    model: nn.Module, *, include_head: bool = False, head: nn.Module | str | None = None
) -> list[Target]:
    """``(module, "weight")`` for every Conv1d/2d/3d and Linear layer, in module order.

    The classifier heads (``head``: the module or its dotted path; default every head of
    :func:`infoprobe.heads.find_heads`) are excluded unless ``include_head``. Raises
    :class:`InputError` "model has no prunable layers" when nothing is left, and for a
    weight tensor shared by two layers (tied weights).
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, _PRUNABLE) and isinstance(getattr(m, "weight", None), Tensor)
    ]
    if not layers:
        raise InputError(
            "model has no prunable layers (no Conv1d/2d/3d or Linear weights); "
            "pruning sweeps need at least one"
        )
    if not include_head:
        excluded = (
            [head]
            if isinstance(head, nn.Module)
            else [m for _, m in heads.find_heads(model, head_path=head)]
        )
        # a NormLinear head (LeViT) holds its Linear: that Linear is the head too
        inside = {id(x) for m in excluded for x in m.modules()}
        layers = [m for m in layers if id(m) not in inside]
        if not layers:
            raise InputError(
                "model has no prunable layers besides the classifier head; "
                "pass --include-head to prune the head"
            )
    _check_untied(model, layers)
    return [(m, "weight") for m in layers]


def _check_untied(model: nn.Module, layers: list[nn.Module]) -> None:
    """Refuse weights shared by two layers: a mask would apply to only one of them."""
    owner: dict[int, nn.Module] = {}
    for m in layers:
        other = owner.setdefault(id(m.weight), m)
        if other is not m:
            names = {id(x): n for n, x in model.named_modules()}
            raise InputError(
                f"layers {names[id(other)]} and {names[id(m)]} share one weight "
                "tensor (tied weights), which unstructured pruning cannot mask "
                "consistently; untie them before pruning"
            )


def measured_sparsity(targets: list[Target]) -> float:
    """Fraction of exact zeros over the targets' weights as the model uses them (masked)."""
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    return zeros / sum(getattr(m, n).numel() for m, n in targets)


# --------------------------------------------------------------------------- masks


def _masked(module: nn.Module, name: str) -> int:
    mask = getattr(module, name + "_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def _scores(targets: list[Target]) -> dict[Target, Tensor]:
    """Contiguous importance scores (the weights as masked now) for each target.

    torch's pruning flattens tensors with ``.view(-1)``, which fails on channels_last
    weights (``evaluate(channels_last=True)`` on CUDA): masks and originals are made
    contiguous too. Values are unchanged.
    """
    for module, _ in targets:
        module.to(memory_format=torch.contiguous_format)
    return {(m, n): getattr(m, n).detach().contiguous() for m, n in targets}


@contextmanager
def _seeded(seed: int, targets: list[Target]) -> Iterator[None]:
    """``torch.manual_seed(seed)`` inside a forked RNG (CPU and the targets' CUDA devices)."""
    devices = sorted({getattr(m, n).get_device() for m, n in targets} - {-1})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _prune_to(targets: list[Target], ratio: float, method: str, seed: int) -> None:
    """Mask more weights so that round(ratio * size) are masked, over all targets (global
    methods) or per layer. Amounts are counts relative to the weights still unmasked, so
    on an already pruned model the masks nest and the total is exact."""
    scores = _scores(targets)
    if method == "layer-magnitude":
        for module, name in targets:
            k = round(ratio * getattr(module, name).numel()) - _masked(module, name)
            if k > 0:
                prune.l1_unstructured(
                    module, name, amount=k, importance_scores=scores[(module, name)]
                )
        return
    total = sum(getattr(m, n).numel() for m, n in targets)
    k = round(ratio * total) - sum(_masked(m, n) for m, n in targets)
    if k <= 0:
        return
    if method == "random":
        with _seeded(seed, targets):
            prune.global_unstructured(
                targets, pruning_method=prune.RandomUnstructured, amount=k, importance_scores=scores
            )
    else:
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, amount=k, importance_scores=scores
        )


@dataclass(frozen=True)
class _Tuning:
    """The fine-tuning of one sweep: train in place, then put the masks back on the weights."""

    model: nn.Module
    data: LabelledTensors
    options: FinetuneOptions | None
    targets: list[Target]
    iterative: bool
    kwargs: dict  # device, amp, channels_last

    def train(self) -> None:
        finetune(self.model, self.data, self.options, **self.kwargs)
        _apply_masks(self.targets)

    def tune(
        self, measure: Callable[[], tuple[probe.Evaluation, dict]]
    ) -> tuple[probe.Evaluation, dict] | str:
        """Train, then ``measure()``; without ``iterative`` a divergence is the row's note."""
        try:
            self.train()
            try:
                return measure()
            except NonFiniteFeatures:  # finite weights, overflowing activations
                raise Diverged(
                    "fine-tuning diverged: the fine-tuned model's features are NaN/Inf"
                ) from None
        except Diverged as e:
            if self.iterative:  # the next ratios would start from unusable weights
                raise
            return str(e)


def _apply_masks(targets: list[Target]) -> None:
    """Recompute ``weight = weight_orig * mask`` after training.

    ``prune``'s forward pre-hook sets ``weight`` at each forward pass, so after the last
    optimizer step it still holds the weights of one step before; the next ratio's
    magnitudes and the sparsity count must see the trained ones.
    """
    with torch.no_grad():
        for module, name in targets:
            if hasattr(module, name + "_mask"):
                setattr(
                    module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask")
                )


class _DenseState:
    """Copies of what a ratio changes, restored between ratios and when the sweep ends.

    Pruning changes only the prunable weights, so only they are copied (not the model);
    fine-tuning changes every parameter and buffer (biases, norm affines, BatchNorm running
    statistics and ``num_batches_tracked``), so ``everything`` copies them all. ``restore``
    removes the masks with ``prune.remove``, restores each module's parameter order
    (``prune`` re-registers ``weight`` last) and puts the copies back into the same
    Parameter objects, with their memory layout (a channels_last model stays channels_last),
    so ``state_dict()`` is as before, keys in order.
    """

    def __init__(self, model: nn.Module, targets: list[Target], everything: bool) -> None:
        self.targets = targets
        self.orders = [list(m._parameters) for m, _ in targets]
        if everything:
            self.saved = [
                (m, k, t.detach().clone())
                for m in model.modules()
                for k, t in (*m._parameters.items(), *m._buffers.items())
                if t is not None
            ]
        else:
            self.saved = [(m, n, getattr(m, n).detach().clone()) for m, n in targets]

    def restore(self) -> None:
        for (module, name), order in zip(self.targets, self.orders, strict=True):
            if hasattr(module, name + "_mask"):
                prune.remove(module, name)
                params = module._parameters
                for key in order:
                    params[key] = params.pop(key)
        with torch.no_grad():
            for module, key, saved in self.saved:
                if key in module._parameters:  # .data keeps the Parameter object
                    module._parameters[key].data = saved.clone()
                else:
                    module._buffers[key] = saved.clone()


# Sweeps left half-consumed are closed (their finally restores the dense model) before the
# interpreter tears torch down: cleaning up a pruned model during teardown aborts (exit 134).
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_sweeps() -> None:
    for sweep in list(_LIVE):
        sweep.close()


# --------------------------------------------------------------------------- rows


def _dense_interplay(dense: Tensor, pruned: Tensor, options: MeasureOptions) -> Interplay:
    """MIR/HDR between dense features [n, d] and pruned features [n, d] (same samples),
    following ``options`` like :func:`infoprobe.rows.measure` (same batches, same drops)."""
    return interplay_between(
        dense,
        pruned,
        estimate=options.estimate,
        batch_size=options.batch_size,
        seed=options.seed,
        drop_zero_rows=options.drop_zero_rows,
        max_exact_dim=options.max_exact_dim,
        device=options.device,
    )


def _vs_dense(
    dense: probe.Evaluation,
    evaluation: probe.Evaluation,
    options: MeasureOptions,
    dense_metrics: bool,
) -> tuple[float, float, str]:
    """(MIR, HDR, why NaN) between the dense and the evaluated features."""
    if not dense_metrics:
        return math.nan, math.nan, "not computed (dense_metrics=False)"
    between = _dense_interplay(dense.features, evaluation.features, options)
    return between.mir, between.hdr, between.note


def _cut_layers(targets: list[Target], names: dict[nn.Module, str]) -> str:
    """A note naming the layers whose every weight is masked (nothing flows through them)."""
    cut = [names[m] for m, n in targets if _masked(m, n) == getattr(m, n).numel()]
    if not cut:
        return ""
    shown = ", ".join(cut[:3]) + (", ..." if len(cut) > 3 else "")
    return f"{len(cut)} layer(s) pruned entirely ({shown})"


def _prune_row(
    ratio: float,
    sparsity: float,
    dense: probe.Evaluation,
    evaluation: probe.Evaluation,
    row: dict,
    options: MeasureOptions,
    dense_metrics: bool,
    tuned: tuple[probe.Evaluation, dict] | str | None,
    cut: str,
) -> dict:
    """The prune columns, then the analysis row; NaN reasons join ``note``.

    ``tuned``: the evaluation and analysis row after fine-tuning, or why there are none
    (a failed fine-tuning); the ft columns are NaN without them. ``sparsity`` is measured
    before fine-tuning (a diverged run leaves NaN weights, and NaN * 0 is NaN); ``cut``:
    layers pruned entirely (see :func:`_cut_layers`).
    """
    mir, hdr, why = _vs_dense(dense, evaluation, options, dense_metrics)
    notes = [cut, row["note"], why and f"vs dense: {why}"]
    ft = dict.fromkeys(FT_COLUMNS, math.nan)
    if isinstance(tuned, str):
        notes.append(tuned)
    elif tuned is not None:
        ft_evaluation, ft_row = tuned
        ft_mir, ft_hdr, ft_why = _vs_dense(dense, ft_evaluation, options, dense_metrics)
        ft = dict(
            zip(
                FT_COLUMNS,
                (ft_row["accuracy"], ft_row["loss"], ft_row["mir"], ft_row["hdr"], ft_mir, ft_hdr),
                strict=True,
            )
        )
        notes += [
            ft_row["note"] and f"fine-tuned: {ft_row['note']}",
            ft_why and dense_metrics and f"fine-tuned vs dense: {ft_why}",
        ]
    return {
        "ratio": ratio,
        "sparsity": sparsity,
        "mir_dense": mir,
        "hdr_dense": hdr,
        **ft,
        **row,
        "note": "; ".join(filter(None, notes)),
    }


def prune_sweep(
    model: nn.Module,
    data: LabelledTensors,
    ratios: str | Iterable[float],
    *,
    method: str = "global-magnitude",
    include_head: bool = False,
    seed: int = 0,
    iterative: bool = False,
    dense_metrics: bool = True,
    name: str = "model",
    eval_kwargs: dict | None = None,
    measure: MeasureOptions = DEFAULT_MEASURE,
    finetune_data: LabelledTensors | None = None,
    finetune_options: FinetuneOptions | None = None,
    skip: Iterable[float] = (),
    progress: probe.ProgressSink | None = None,
) -> Iterator[dict]:
    """Prune ``model`` at each ratio, optionally fine-tune; yield one row per ratio.

    Row: ``{"ratio", "sparsity", "mir_dense", "hdr_dense", *FT_COLUMNS,
    **analysis_row(name, ...)}``. The dense model is evaluated once first (the reference
    for ``mir_dense``); a ratio that masks nothing (0) reuses that evaluation, so the
    ratio-0 row is the analysis of the dense model. Ratios are validated like ``--ratios``
    and run ascending; those in ``skip`` (resume) are not evaluated, and when all are,
    nothing is.

    With ``finetune_data``, each ratio's masked model is then trained on it
    (:func:`infoprobe.sweeps.finetune.finetune` with ``finetune_options``, default
    :class:`FinetuneOptions`, on the device, amp and channels_last of ``eval_kwargs``; the
    masks stay fixed) and measured on ``data`` again: the ``ft_*`` columns, while the
    other columns keep the values before fine-tuning. Ratio 0 is fine-tuned too (the dense
    baseline of the same training). Without it the ``ft_*`` columns are NaN.

    Each ratio starts from the dense model: every weight, and with fine-tuning every
    parameter and buffer, is restored from a copy between ratios and when the sweep ends,
    fails or is closed early (also at interpreter exit). With ``iterative`` each ratio
    prunes the previous ratio's model further, up to the new total: the masks nest, and a
    fine-tuned model carries its trained weights to the next ratio (iterative magnitude
    pruning). Skipped ratios are then still pruned and fine-tuned, so a resumed sweep
    reaches the same weights. Masks are applied to ``model`` in place; while a row is
    being consumed the model holds that ratio's masks (and fine-tuned weights).
    ``dense_metrics=False`` skips ``mir_dense``/``hdr_dense`` and their ``ft_`` twins
    (NaN, with a note): each costs one more exact eigen-solve, an n x n one when
    n <= d^2, which can cost more than the evaluation itself. ``eval_kwargs`` go to
    :func:`infoprobe.probe.evaluate`; its ``head`` also names the head to exclude.
    ``progress`` gets one step per row.

    Raises :class:`InputError` for bad ratios or method, a model without prunable layers,
    a model that already carries ``torch.nn.utils.prune`` masks, or ``finetune_options``
    without ``finetune_data``.
    """
    sweep = _prune_sweep(
        model,
        data,
        parse_ratios(ratios),
        method,
        include_head,
        seed,
        iterative,
        dense_metrics,
        name,
        dict(eval_kwargs or {}),
        measure,
        finetune_data,
        finetune_options,
        [float(s) for s in skip],
        progress,
    )
    _LIVE.add(sweep)
    return sweep


def _prune_sweep(
    model,
    data,
    ratios,
    method,
    include_head,
    seed,
    iterative,
    dense_metrics,
    name,
    eval_kwargs,
    measure,
    finetune_data,
    finetune_options,
    skip,
    progress,
) -> Iterator[dict]:
    """The body of :func:`prune_sweep` (a generator: nothing runs before the first row)."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if finetune_options is not None and finetune_data is None:
        raise InputError("fine-tuning options need fine-tuning data (--finetune-data)")
    if prune.is_pruned(model):
        raise InputError(
            "the model already carries torch.nn.utils.prune masks; apply them "
            "with torch.nn.utils.prune.remove before a pruning sweep"
        )
    targets = prunable_parameters(model, include_head=include_head, head=eval_kwargs.get("head"))
    todo = pending(ratios, skip)
    if not todo:
        return

    names = {m: n for n, m in model.named_modules()}
    tuning = (
        None
        if finetune_data is None
        else _Tuning(
            model,
            finetune_data,
            finetune_options,
            targets,
            iterative,
            {k: eval_kwargs[k] for k in ("device", "amp", "channels_last") if k in eval_kwargs},
        )
    )

    with sweep_progress(progress, len(todo), f"prune {name}") as step:
        dense, dense_row = evaluate_row(model, data, name, eval_kwargs, measure)
        # after evaluate, which moves the model to its device
        saved = _DenseState(model, targets, everything=finetune_data is not None)
        changed = False  # iterative + fine-tuning: the weights are no longer the dense ones
        try:
            # iterative: skipped ratios are still pruned (and tuned), so later masks match
            for ratio in ratios if iterative else todo:
                _prune_to(targets, ratio, method, seed)
                if is_done(ratio, skip):
                    if tuning is not None:
                        tuning.train()
                        changed = True
                    continue
                sparsity, cut = measured_sparsity(targets), _cut_layers(targets, names)
                if changed or any(_masked(m, n) for m, n in targets):
                    evaluation, row = evaluate_row(model, data, name, eval_kwargs, measure)
                else:
                    evaluation, row = dense, dense_row
                tuned = None
                if tuning is not None:
                    tuned = tuning.tune(
                        lambda: evaluate_row(model, data, name, eval_kwargs, measure)
                    )
                    changed = True
                step()
                yield _prune_row(
                    ratio, sparsity, dense, evaluation, row, measure, dense_metrics, tuned, cut
                )
                if not iterative:
                    saved.restore()
                    changed = False
        finally:
            saved.restore()
