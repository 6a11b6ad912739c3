"""Fine-tuning after pruning: a short, seeded supervised training loop on the model in place.

:func:`finetune` minimises the mean cross-entropy -1/B sum_i log softmax(f(x_i))_{y_i} over
shuffled mini-batches of B samples, for a number of epochs, with SGD (momentum, L2 weight
decay added to the gradient) or AdamW (decoupled weight decay), at a constant learning rate.
Every parameter with ``requires_grad`` is trained, the classifier head included; a parameter
with ``requires_grad=False`` stays as it is.

Pruning masks stay fixed: ``torch.nn.utils.prune`` keeps the trainable ``weight_orig`` and a
``weight_mask`` buffer, and a forward pre-hook computes ``weight = weight_orig * mask`` before
every forward pass, so the gradient of a masked entry is exactly 0 and the masked weights stay
exactly 0 whatever the optimizer does to ``weight_orig`` (weight decay may shrink the hidden
``weight_orig`` entries; they are never used).

The model is in train mode while it trains (BatchNorm uses batch statistics and updates its
running statistics, dropout is active) and gets its own train/eval flags back afterwards.
Batches are drawn from a ``torch.Generator`` seeded with ``seed``, and dropout and any other
random op run under ``torch.manual_seed(seed)`` in a forked RNG, so a run is reproducible and
the caller's random state is untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError, RunFailure

__all__ = ["OPTIMIZERS", "Diverged", "FinetuneOptions", "finetune"]

#: Optimizers by name, with their default learning rate and weight decay.
OPTIMIZERS: dict[str, tuple[float, float]] = {"sgd": (0.01, 0.0), "adamw": (1e-3, 0.01)}


class Diverged(RunFailure):
    """The training loss became NaN/Inf: the model's weights are no longer usable."""


@dataclass(frozen=True)
class FinetuneOptions:
    """How :func:`finetune` trains.

    ``epochs`` passes over the data in batches of ``batch_size`` (shuffled; the last partial
    batch is dropped when there are several, as timm's training loader does); ``optimizer``
    ``"sgd"`` (with ``momentum``) or ``"adamw"``; ``lr`` and ``weight_decay`` default to the
    optimizer's (SGD: lr 0.01, no weight decay; AdamW: lr 1e-3, weight decay 0.01, torch's
    AdamW default); ``seed`` seeds the batch order and dropout. Raises :class:`InputError`
    naming the flag for a value out of range.
    """

    epochs: int = 1
    lr: float | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        lr, weight_decay = OPTIMIZERS[self.optimizer]
        if self.lr is None:
            object.__setattr__(self, "lr", lr)
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", weight_decay)
        _check(
            self.epochs >= 1,
            f"--finetune-epochs {self.epochs}: give at least 1 (leave "
            "out --finetune-data to skip fine-tuning)",
        )
        _check(self.batch_size >= 1, f"--finetune-batch-size {self.batch_size}: give at least 1")
        _check(math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr}: give a positive number")
        _check(0 <= self.momentum < 1, f"--momentum {self.momentum}: give a value in [0, 1)")
        _check(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"--weight-decay {self.weight_decay}: give a value >= 0",
        )

    def record(self) -> dict:
        """The options as plain values (for JSON and for checking a resumed run)."""
        return asdict(self)


def options_of(opts: Any) -> FinetuneOptions | None:
    """prune's fine-tuning options (``--finetune-*``, ``--lr``, ``--optimizer``,
    ``--momentum``, ``--weight-decay`` of a :class:`~infoprobe.options.RunOptions`; None
    fields take the defaults), None without ``--finetune-data``."""
    if opts.finetune_data is None:
        return None
    given = {
        "epochs": opts.finetune_epochs,
        "lr": opts.lr,
        "batch_size": opts.finetune_batch_size,
        "optimizer": opts.optimizer,
        "momentum": opts.momentum,
        "weight_decay": opts.weight_decay,
    }
    return FinetuneOptions(seed=opts.seed, **{k: v for k, v in given.items() if v is not None})


def finetune_settings(opts: Any) -> dict[str, Any]:
    """The fine-tuning options with their defaults filled in (``momentum`` None with AdamW),
    as :class:`~infoprobe.options.RunOptions` fields: what a run record holds, so that a
    default and the same value given explicitly are one run."""
    tune = options_of(opts)
    if tune is None:
        return {}
    return {
        "finetune_epochs": tune.epochs,
        "lr": tune.lr,
        "finetune_batch_size": tune.batch_size,
        "optimizer": tune.optimizer,
        "momentum": tune.momentum if tune.optimizer == "sgd" else None,
        "weight_decay": tune.weight_decay,
    }


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _optimizer(params: list[Tensor], options: FinetuneOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(
        params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
    )


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of shuffled index batches; a last partial batch goes when there are others."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()  # a batch of 1 would break BatchNorm in train mode
    return batches


@contextlib.contextmanager
def _training(model: nn.Module) -> Iterator[None]:
    """``model.train()``, gradients on; each module's flag restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def finetune(
    model: nn.Module,
    data: LabelledTensors,
    options: FinetuneOptions | None = None,
    *,
    device: str | torch.device = "auto",
    amp: str | bool | None = False,
    channels_last: bool = False,
) -> list[float]:
    """Train ``model`` in place on ``data``; return the mean training loss of each epoch.

    ``device``, ``amp`` and ``channels_last`` mean what they mean for
    :func:`infoprobe.probe.evaluate` (the model is moved there and left there; fp16 autocast
    uses a gradient scaler). Gradients are cleared (set to None) when it returns. Raises
    :class:`InputError` for empty data, labels beyond the head's classes, inputs the model
    rejects, or a model with nothing to train, and :class:`RunFailure` when the loss becomes
    NaN/Inf (:class:`Diverged`; the model's weights are then unusable) or memory runs out
    (lower ``batch_size``).
    """
    options = options or FinetuneOptions()
    if len(data) == 0:
        raise InputError(f"fine-tuning data {data.source} is empty (0 samples)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("nothing to fine-tune: every parameter has requires_grad=False")
    dev = probe.resolve_device(device)
    model.to(dev)
    if channels_last and dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(params, options)
    try:
        with _training(model), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(options.seed)
            generator = torch.Generator().manual_seed(options.seed)
            losses = [
                _epoch(model, data, optimizer, generator, options, dev, amp, channels_last)
                for _ in range(options.epochs)
            ]
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise Diverged(
                f"fine-tuning diverged: the weights became NaN/Inf (a layer pruned "
                f"away entirely, or --lr {options.lr:g} too high)"
            )
        return losses
    finally:
        optimizer.zero_grad(set_to_none=True)


def _epoch(
    model: nn.Module,
    data: LabelledTensors,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    options: FinetuneOptions,
    dev: torch.device,
    amp: str | bool | None,
    channels_last: bool,
) -> float:
    """One pass over shuffled batches; the mean loss, checked finite once per epoch."""
    dtype = probe._amp_dtype(amp)
    autocast = (
        torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype is torch.float16)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    seen = 0
    for index in _batches(len(data), options.batch_size, generator):
        x = data.take(index).to(dev, non_blocking=True)
        y = data.labels[index].to(dev, non_blocking=True)
        if channels_last and dev.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = _forward(model, x, seen)
        if seen == 0:
            _check_labels(data, logits.shape[1])
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().double() * len(index)
        seen += len(index)
    mean = float(total) / seen
    if not math.isfinite(mean):
        raise Diverged(
            f"fine-tuning diverged: the training loss became {mean} (a layer "
            f"pruned away entirely, or --lr {options.lr:g} too high)"
        )
    return mean


def _forward(model: nn.Module, x: Tensor, start: int) -> Tensor:
    try:
        return probe._logits_of(model(x))
    except probe._OOM:
        raise RunFailure(
            f"out of memory while fine-tuning a batch of {len(x)}; lower --finetune-batch-size"
        ) from None
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        raise probe._rejected(model, x, e, start) from None


def _check_labels(data: LabelledTensors, num_classes: int) -> None:
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= num_classes:
        raise InputError(
            f"labels of fine-tuning data {data.source} lie in [{low}, {high}] but "
            f"the model has {num_classes} classes [0, {num_classes}); check "
            "--finetune-data"
        )
