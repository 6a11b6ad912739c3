"""Pruning sweeps: unstructured masks through ``torch.nn.utils.prune``, no fine-tuning.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.info import Interplay, interplay_between
from infoprobe.rows import MeasureOptions
from infoprobe.sweeps import (
    DEFAULT_MEASURE,
    evaluate_row,
    is_done,
    parse_values,
    pending,
    sweep_progress,
)

__all__ = ["METHODS", "measured_sparsity", "parse_ratios", "prunable_parameters", "prune_sweep"]

METHODS: tuple[str, ...] = ("global-magnitude", "layer-magnitude", "random")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

Target = tuple[nn.Module, str]


def parse_ratios(text: str | Iterable[float]) -> list[float]:
    """Pruning ratios from ``"0,0.5,0.9"`` (or a sequence), ascending.

    Each must be a finite number in [0, 1) (1 would remove every weight), given once.
    Raises :class:`InputError` naming the bad value.
    """
    return parse_values(text, flag="--ratios", what="ratio", closed=False,
                        example="0,0.1,0.3,0.5,0.7,0.9")


def prunable_parameters(
    model: nn.Module, *, include_head: bool = False, head: nn.Module | str | None = None
) -> list[Target]:
    """``(module, "weight")`` for every Conv1d/2d/3d and Linear layer, in module order.

    The classifier head (``head``: the module or its dotted path; default
    :func:`infoprobe.probe.find_head`) is excluded unless ``include_head``. Raises
    :class:`InputError` "model has no prunable layers" when nothing is left, and for a
    weight tensor shared by two layers (tied weights).
    """
    layers = [m for m in model.modules()
              if isinstance(m, _PRUNABLE) and isinstance(getattr(m, "weight", None), Tensor)]
    if not layers:
        raise InputError("model has no prunable layers (no Conv1d/2d/3d or Linear weights); "
                         "pruning sweeps need at least one")
    if not include_head:
        excluded = head if isinstance(head, nn.Module) else probe.find_head(model, head_path=head)
        layers = [m for m in layers if m is not excluded]
        if not layers:
            raise InputError("model has no prunable layers besides the classifier head; "
                             "pass --include-head to prune the head")
    _check_untied(model, layers)
    return [(m, "weight") for m in layers]


def _check_untied(model: nn.Module, layers: list[nn.Module]) -> None:
    """Refuse weights shared by two layers: a mask would apply to only one of them."""
    owner: dict[int, nn.Module] = {}
    for m in layers:
        other = owner.setdefault(id(m.weight), m)
        if other is not m:
            names = {id(x): n for n, x in model.named_modules()}
            raise InputError(f"layers {names[id(other)]} and {names[id(m)]} share one weight "
                             "tensor (tied weights), which unstructured pruning cannot mask "
                             "consistently; untie them before pruning")


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
                prune.l1_unstructured(module, name, amount=k,
                                      importance_scores=scores[(module, name)])
        return
    total = sum(getattr(m, n).numel() for m, n in targets)
    k = round(ratio * total) - sum(_masked(m, n) for m, n in targets)
    if k <= 0:
        return
    if method == "random":
        with _seeded(seed, targets):
            prune.global_unstructured(targets, pruning_method=prune.RandomUnstructured,
                                      amount=k, importance_scores=scores)
    else:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=k,
                                  importance_scores=scores)


class _DenseWeights:
    """A copy of the prunable weights only (not of the model), restored after pruning.

    ``restore`` removes the masks with ``prune.remove``, copies the dense values back into
    the same Parameter objects and restores each module's parameter order (``prune``
    re-registers ``weight`` last), so ``state_dict()`` is as before, keys in order.
    """

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.weights = [getattr(m, n).detach().clone() for m, n in targets]
        self.orders = [list(m._parameters) for m, _ in targets]

    def restore(self) -> None:
        saved = zip(self.targets, self.weights, self.orders, strict=True)
        for (module, name), weight, order in saved:
            if not hasattr(module, name + "_mask"):
                continue  # not pruned at this point: still dense
            prune.remove(module, name)
            params = module._parameters
            for key in order:
                params[key] = params.pop(key)
            with torch.no_grad():
                getattr(module, name).copy_(weight)


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


def _prune_row(ratio: float, targets: list[Target], dense: probe.Evaluation,
               evaluation: probe.Evaluation, row: dict, options: MeasureOptions,
               dense_metrics: bool) -> dict:
    """The prune columns, then the analysis row; a NaN ratio vs dense adds to ``note``."""
    if dense_metrics:
        between = _dense_interplay(dense.features, evaluation.features, options)
        mir, hdr, why = between.mir, between.hdr, between.note
    else:
        mir = hdr = math.nan
        why = "not computed (dense_metrics=False)"
    note = "; ".join(filter(None, [row["note"], why and f"vs dense: {why}"]))
    return {
        "ratio": ratio,
        "sparsity": measured_sparsity(targets),
        "mir_dense": mir,
        "hdr_dense": hdr,
        **row,
        "note": note,
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
    skip: Iterable[float] = (),
    progress: probe.ProgressSink | None = None,
) -> Iterator[dict]:
    """Prune ``model`` at each ratio (no fine-tuning); yield one row per ratio as it completes.

    Row: ``{"ratio", "sparsity", "mir_dense", "hdr_dense", **analysis_row(name, ...)}``.
    The dense model is evaluated once first (the reference for ``mir_dense``); a ratio
    that masks nothing (0) reuses that evaluation, so the ratio-0 row is the analysis of
    the dense model. Ratios are validated like ``--ratios`` and run ascending; those in
    ``skip`` (resume) are not evaluated, and when all are, nothing is.

    Each ratio starts from the dense weights; with ``iterative`` each prunes the previous
    ratio's masked model further, up to the new total (for the magnitude methods the
    masks are the same as one-shot; for ``random`` they nest). Masks are applied to
    ``model`` in place; while a row is being consumed the model holds that ratio's masks.
    They are removed and the dense values restored from a copy of the prunable weights
    only, between ratios and when the sweep ends, fails or is closed early.
    ``dense_metrics=False`` skips ``mir_dense``/``hdr_dense`` (NaN, with a note): each
    costs one more exact eigen-solve per ratio, an n x n one when n <= d^2, which can cost
    more than the evaluation itself. ``eval_kwargs`` go to :func:`infoprobe.probe.evaluate`;
    its ``head`` also names the head to exclude. ``progress`` gets one step per row.

    Raises :class:`InputError` for bad ratios or method, a model without prunable layers,
    or a model that already carries ``torch.nn.utils.prune`` masks.
    """
    ratios = parse_ratios(ratios)
    if method not in METHODS:
        raise InputError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if prune.is_pruned(model):
        raise InputError("the model already carries torch.nn.utils.prune masks; apply them "
                         "with torch.nn.utils.prune.remove before a pruning sweep")
    eval_kwargs = dict(eval_kwargs or {})
    targets = prunable_parameters(model, include_head=include_head,
                                  head=eval_kwargs.get("head"))
    skip = [float(s) for s in skip]
    todo = pending(ratios, skip)
    if not todo:
        return
    with sweep_progress(progress, len(todo), f"prune {name}") as step:
        dense, dense_row = evaluate_row(model, data, name, eval_kwargs, measure)
        saved = _DenseWeights(targets)  # after evaluate, which moves the model to its device
        try:
            # iterative: skipped ratios are still pruned, so later masks are the same
            for ratio in ratios if iterative else todo:
                _prune_to(targets, ratio, method, seed)
                if is_done(ratio, skip):
                    continue
                if any(_masked(m, n) for m, n in targets):
                    evaluation, row = evaluate_row(model, data, name, eval_kwargs, measure)
                else:
                    evaluation, row = dense, dense_row
                step()
                yield _prune_row(ratio, targets, dense, evaluation, row, measure, dense_metrics)
                if not iterative:
                    saved.restore()
        finally:
            saved.restore()
