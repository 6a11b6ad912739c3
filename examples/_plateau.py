"""SGD until the test accuracy plateaus, resumable: the optimizer of the paper's LMC study
(assumed; the paper's text was not available to check) for ``03_lmc.py``.

Mini-batch SGD (momentum 0.9, batch 64, weight decay 5e-4, constant learning rate), one
epoch = one pass over a fresh permutation drawn from ``Generator(order_seed)``. After each
epoch the test accuracy is measured; training stops at the first epoch ``e >= min_epochs``
at which the best accuracy so far exceeds the best accuracy up to epoch ``e - patience`` by
at most ``min_gain`` (0.2 points over the last 10 epochs by default), or at ``max_epochs``.
This rule was fixed before any run. The run's state (model, optimizer, batch-order generator,
accuracy log) is written to ``state_path`` after every epoch, so an interrupted run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import _common as C
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PlateauConfig:
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    min_gain: float = 0.002  # accuracy as a fraction: 0.2 points
    patience: int = 10
    min_epochs: int = 10
    max_epochs: int = 150

    def describe(self) -> str:
        return (
            f"SGD(lr={self.lr:g}, momentum={self.momentum}, weight_decay={self.weight_decay}), "
            f"batch {self.batch_size}, constant lr, until the best test accuracy gains <= "
            f"{100 * self.min_gain:g} points over {self.patience} epochs"
        )


def plateaued(accuracies: list[float], cfg: PlateauConfig) -> bool:
    """The stopping rule on the per-epoch test accuracies (index 0 = after epoch 1)."""
    epochs = len(accuracies)
    if epochs >= cfg.max_epochs:
        return True
    if epochs < max(cfg.min_epochs, cfg.patience + 1):
        return False
    return max(accuracies) - max(accuracies[: epochs - cfg.patience]) <= cfg.min_gain


def _epoch(model: nn.Module, data: dict, optimizer, order: torch.Generator, batch: int) -> float:
    model.train()
    x, y = data["x"], data["y"]
    steps = len(y) // batch
    total = 0.0
    for idx in torch.randperm(len(y), generator=order)[: steps * batch].view(steps, batch):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / steps


def train_to_plateau(
    model: nn.Module,
    train: dict,
    test: dict,
    cfg: PlateauConfig,
    *,
    order_seed: int,
    state_path: Path,
    max_epochs: int | None = None,
) -> list[dict]:
    """Train ``model`` in place until :func:`plateaued` (or ``max_epochs``, for quick runs);
    returns the per-epoch log (epoch, train_loss, test_accuracy)."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    order = torch.Generator().manual_seed(order_seed)
    history: list[dict] = []
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order.set_state(state["order"])
        history = list(state["history"])
    cap = max_epochs or cfg.max_epochs
    while not plateaued([h["test_accuracy"] for h in history], cfg) and len(history) < cap:
        loss = _epoch(model, train, optimizer, order, cfg.batch_size)
        history.append(
            {
                "epoch": len(history) + 1,
                "train_loss": loss,
                "test_accuracy": C.accuracy(model, test),
            }
        )
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "order": order.get_state(),
            "history": history,
        }
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(f".{state_path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(state_path)
    model.eval()
    return history
