"""MIR, HDR and NC1-NC4 in a plain training loop (timm's ``train.py`` or a hand-written one).

Three lines in a loop::

    from infoprobe.integrations import InterplayMonitor  # at the top
    monitor = InterplayMonitor(model, "val.safetensors", every=500, writer=writer)  # once
    monitor.step(global_step)  # in the batch loop, after optimizer.step()
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from infoprobe.errors import InputError
from infoprobe.info import DEFAULT_BATCH_SIZE, Estimate
from infoprobe.integrations.probe_set import DEFAULT_PROBE_SAMPLES, FeaturesFn, ProbeSet
from infoprobe.integrations.scalars import scalars

__all__ = ["InterplayMonitor", "ScalarWriter"]


class ScalarWriter(Protocol):
    """What the monitor writes to: ``torch.utils.tensorboard.SummaryWriter`` and others."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> object: ...


class InterplayMonitor:
    """Measure a fixed probe set every ``every`` steps of a training loop.

    ``step(global_step)`` measures when ``global_step`` is a multiple of ``every`` (step 0
    included) and returns the row (the keys of an analyze row, plus ``step``); else None.
    With a ``writer`` it also writes the finite values as scalars ``prefix + column`` at
    ``global_step``. Under DDP (timm's ``--distributed``) call ``step`` on every process:
    each evaluates its share and all get the values; give the writer to the process that
    logs. The model may be wrapped in DistributedDataParallel. Training is left exactly as
    it was (:class:`~infoprobe.integrations.probe_set.ProbeSet`, whose arguments ``data``,
    ``head``, ``features_fn``, ``max_samples``, ``estimate``, ``batch_size``, ``seed`` and
    ``max_exact_dim`` these are). The probe data is read when the monitor is made.
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        every: int,
        *,
        writer: ScalarWriter | None = None,
        prefix: str = "interplay/",
        head=None,
        features_fn: FeaturesFn | None = None,
        max_samples: int | None = DEFAULT_PROBE_SAMPLES,
        estimate: Estimate = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        max_exact_dim: int | None = None,
    ) -> None:
        if type(every) is not int or every < 1:
            raise InputError(f"every must be a positive int (steps), got {every!r}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise InputError(f"writer must have add_scalar(tag, value, step), got {writer!r}")
        self.model, self.every, self.writer, self.prefix = model, every, writer, prefix
        self.probe = ProbeSet(
            data,
            max_samples=max_samples,
            seed=seed,
            batch_size=batch_size,
            estimate=estimate,
            max_exact_dim=max_exact_dim,
            head=head,
            features_fn=features_fn,
        )
        self.probe.load(model)

    def step(self, global_step: int) -> dict | None:
        """The row at ``global_step`` when it is due (and written to the writer), else None."""
        if global_step % self.every:
            return None
        row = {"step": global_step, **self.probe.measure(self.model)}
        if self.writer is not None:
            for tag, value in scalars(row, self.prefix).items():
                self.writer.add_scalar(tag, value, global_step)
            flush = getattr(self.writer, "flush", None)
            if callable(flush):
                flush()
        return row
