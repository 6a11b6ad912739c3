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
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import prune

from infoprobe import parsing, probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError, NonFiniteFeatures
from infoprobe.evaluation import Evaluation
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
from infoprobe.sweeps.masks import (
    METHODS,
    DenseState,
    Target,
    apply_masks,
    cut_layers,
    masked_count,
    measured_sparsity,
    prunable_parameters,
    prune_to,
)


def parse_ratios(text: str | Iterable[float]) -> list[float]:
    """Pruning ratios from ``"0,0.5,0.9"`` (or a sequence), ascending.

    Each must be a finite number in [0, 1) (1 would remove every weight), given once.
    Raises :class:`InputError` naming the bad value.
    """
    return list(parsing.ratios(text, "--ratios"))


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
        apply_masks(self.targets)

    def tune(self, measure: Callable[[], tuple[Evaluation, dict]]) -> tuple[Evaluation, dict] | str:
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


# Sweeps left half-consumed are closed (their finally restores the dense model) before the
# interpreter tears torch down: cleaning up a pruned model during teardown aborts (exit 134).
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_sweeps() -> None:
    for sweep in list(_LIVE):
        sweep.close()


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
    dense: Evaluation,
    evaluation: Evaluation,
    options: MeasureOptions,
    dense_metrics: bool,
) -> tuple[float, float, str]:
    """(MIR, HDR, why NaN) between the dense and the evaluated features."""
    if not dense_metrics:
        return math.nan, math.nan, "not computed (dense_metrics=False)"
    between = _dense_interplay(dense.features, evaluation.features, options)
    return between.mir, between.hdr, between.note


def _prune_row(
    ratio: float,
    sparsity: float,
    dense: Evaluation,
    evaluation: Evaluation,
    row: dict,
    options: MeasureOptions,
    dense_metrics: bool,
    tuned: tuple[Evaluation, dict] | str | None,
    cut: str,
) -> dict:
    """The prune columns, then the analysis row; NaN reasons join ``note``.

    ``tuned``: the evaluation and analysis row after fine-tuning, or why there are none
    (a failed fine-tuning); the ft columns are NaN without them. ``sparsity`` is measured
    before fine-tuning (a diverged run leaves NaN weights, and NaN * 0 is NaN); ``cut``:
    layers pruned entirely (see :func:`cut_layers`).
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


@dataclass
class _Sweep:
    """One pruning sweep's settings (see :func:`prune_sweep`)."""

    model: nn.Module
    data: LabelledTensors
    ratios: list[float]
    method: str
    include_head: bool
    seed: int
    iterative: bool
    dense_metrics: bool
    name: str
    eval_kwargs: dict
    measure: MeasureOptions
    finetune_data: LabelledTensors | None
    finetune_options: FinetuneOptions | None
    skip: list[float]

    def check(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.finetune_options is not None and self.finetune_data is None:
            raise InputError("fine-tuning options need fine-tuning data (--finetune-data)")
        if prune.is_pruned(self.model):
            raise InputError(
                "the model already carries torch.nn.utils.prune masks; apply them "
                "with torch.nn.utils.prune.remove before a pruning sweep"
            )

    def evaluate(self) -> tuple[Evaluation, dict]:
        return evaluate_row(self.model, self.data, self.name, self.eval_kwargs, self.measure)

    def tuning(self, targets: list[Target]) -> _Tuning | None:
        if self.finetune_data is None:
            return None
        where = {
            k: v for k, v in self.eval_kwargs.items() if k in ("device", "amp", "channels_last")
        }
        return _Tuning(
            self.model, self.finetune_data, self.finetune_options, targets, self.iterative, where
        )


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

    Row: ``{"ratio", "sparsity", "mir_dense", "hdr_dense", *FT_COLUMNS, **analysis_row}``.
    The dense model is evaluated once first (the reference of ``mir_dense``; a ratio that
    masks nothing reuses it). Ratios run ascending; those in ``skip`` (resume) are not
    evaluated. With ``finetune_data`` each masked model is trained with its masks fixed
    (``finetune_options``, on the device, amp and channels_last of ``eval_kwargs``) and
    measured again: the ``ft_*`` columns. Each ratio starts from the dense model, restored
    between ratios and when the sweep ends, fails or is closed early; with ``iterative``
    each ratio prunes (and fine-tunes) the previous ratio's model further, skipped ratios
    included, so a resumed sweep reaches the same weights. ``dense_metrics=False`` leaves
    ``mir_dense``/``hdr_dense`` empty, with a note. ``eval_kwargs`` go to
    :func:`infoprobe.probe.evaluate`; its ``head`` also names the head to exclude.

    Raises :class:`InputError` for bad ratios or method, a model without prunable layers,
    one that already carries ``torch.nn.utils.prune`` masks, or ``finetune_options``
    without ``finetune_data``.
    """
    settings = _Sweep(
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
    )
    sweep = _rows(settings, progress)
    _LIVE.add(sweep)
    return sweep


def _rows(s: _Sweep, progress: probe.ProgressSink | None) -> Iterator[dict]:
    """The sweep's rows (a generator: nothing runs before the first row)."""
    s.check()
    targets = prunable_parameters(
        s.model, include_head=s.include_head, head=s.eval_kwargs.get("head")
    )
    todo = pending(s.ratios, s.skip)
    if not todo:
        return
    names = {m: n for n, m in s.model.named_modules()}
    tuning = s.tuning(targets)
    with sweep_progress(progress, len(todo), f"prune {s.name}") as step:
        dense, dense_row = s.evaluate()
        # after evaluate, which moves the model to its device
        saved = DenseState(s.model, targets, everything=tuning is not None)
        changed = False  # iterative + fine-tuning: the weights are no longer the dense ones
        try:
            # iterative: skipped ratios are still pruned (and tuned), so later masks match
            for ratio in s.ratios if s.iterative else todo:
                prune_to(targets, ratio, s.method, s.seed)
                if is_done(ratio, s.skip):
                    if tuning is not None:
                        tuning.train()
                        changed = True
                    continue
                sparsity, cut = measured_sparsity(targets), cut_layers(targets, names)
                pruned = changed or any(masked_count(m, n) for m, n in targets)
                evaluation, row = s.evaluate() if pruned else (dense, dense_row)
                tuned = tuning.tune(s.evaluate) if tuning is not None else None
                changed = tuning is not None
                step()
                yield _prune_row(
                    ratio, sparsity, dense, evaluation, row, s.measure, s.dense_metrics, tuned, cut
                )
                if not s.iterative:
                    saved.restore()
                    changed = False
        finally:
            saved.restore()
