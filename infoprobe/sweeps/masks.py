"""Pruning masks through ``torch.nn.utils.prune``: which weights are prunable, how each
method chooses the ones to zero, the measured sparsity, and the dense state restored
between ratios (see :mod:`infoprobe.sweeps.prune` for the methods)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from infoprobe import heads
from infoprobe.errors import InputError

METHODS: tuple[str, ...] = ("global-magnitude", "layer-magnitude", "random")


_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


Target = tuple[nn.Module, str]


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


def masked_count(module: nn.Module, name: str) -> int:
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


def prune_to(targets: list[Target], ratio: float, method: str, seed: int) -> None:
    """Mask more weights so that round(ratio * size) are masked, over all targets (global
    methods) or per layer. Amounts are counts relative to the weights still unmasked, so
    on an already pruned model the masks nest and the total is exact."""
    scores = _scores(targets)
    if method == "layer-magnitude":
        for module, name in targets:
            k = round(ratio * getattr(module, name).numel()) - masked_count(module, name)
            if k > 0:
                prune.l1_unstructured(
                    module, name, amount=k, importance_scores=scores[(module, name)]
                )
        return
    total = sum(getattr(m, n).numel() for m, n in targets)
    k = round(ratio * total) - sum(masked_count(m, n) for m, n in targets)
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


def apply_masks(targets: list[Target]) -> None:
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


class DenseState:
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


def cut_layers(targets: list[Target], names: dict[nn.Module, str]) -> str:
    """A note naming the layers whose every weight is masked (nothing flows through them)."""
    cut = [names[m] for m, n in targets if masked_count(m, n) == getattr(m, n).numel()]
    if not cut:
        return ""
    shown = ", ".join(cut[:3]) + (", ..." if len(cut) > 3 else "")
    return f"{len(cut)} layer(s) pruned entirely ({shown})"
