"""A Lightning callback that logs MIR, HDR, the entropies and NC1-NC4 while a model trains.

Needs Lightning 2 (``pip install 'infoprobe[lightning]'``)::

    from infoprobe.integrations.lightning import InterplayCallback

    trainer = L.Trainer(callbacks=[InterplayCallback("val.safetensors")], logger=...)

Every ``every_n_epochs`` epochs (at the end of the training epoch) or every
``every_n_train_steps`` optimizer steps (at the end of that step's batch, and at the start
of training, step 0, for the initial weights) the callback runs
the module over a fixed probe set (:class:`~infoprobe.integrations.probe_set.ProbeSet`) and
logs ``interplay/mir``, ``interplay/hdr``, ``interplay/h_z``, ..., ``interplay/nc1``, ...:
with ``pl_module.log_dict`` (so the progress bar, ``ModelCheckpoint`` and ``EarlyStopping``
see them) and to every logger of the Trainer (TensorBoard, CSV, W&B, MLflow, ...) at
``trainer.global_step``, the number of optimizer steps the measured weights have taken,
which Lightning's checkpoints record and ``infoprobe track`` orders them by. (Lightning
itself writes values logged at an epoch's or a batch's end at the step before, and within
an epoch only every ``log_every_n_steps``.) Under DDP every process evaluates its share and
the metric synchronises the sums; the values are equal on every process and rank 0's
loggers write them. Training is left exactly as it was (see ProbeSet).
"""

from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError as error:  # the optional extra
    raise ImportError(
        "infoprobe.integrations.lightning needs Lightning 2: pip install 'infoprobe[lightning]'"
    ) from error

from infoprobe.errors import InputError
from infoprobe.info import DEFAULT_BATCH_SIZE, Estimate
from infoprobe.integrations.probe_set import DEFAULT_PROBE_SAMPLES, FeaturesFn, ProbeSet
from infoprobe.integrations.scalars import scalars

__all__ = ["InterplayCallback"]


class InterplayCallback(pl.Callback):
    """Measure a fixed probe set during training and log the values to every logger.

    Args:
        data: the probe set: a path infoprobe reads (``--data``), a torch ``Dataset`` or a
            ``DataLoader`` of ``(inputs, labels)`` (see :class:`ProbeSet`).
        every_n_epochs: measure after every N-th training epoch (None or 0: never).
        every_n_train_steps: measure after every N-th optimizer step, and before the first
            (None: never).
        max_samples: a seeded class-stratified subsample of the probe data (None: all).
        estimate: as for :func:`infoprobe.info.interplay` (default exact when it fits).
        features_fn, head: the penultimate features and classifier of a module whose head
            infoprobe does not find (see :class:`ProbeSet`); by default the module's own head
            input, found as for timm models.
        batch_size, seed, max_exact_dim: of the probe pass, the subsample and the exact route.
        prefix: the logged names are ``prefix + column``.

    ``rows`` keeps every measured row (the keys of an analyze row, plus ``step`` and
    ``epoch``), including the values that are not logged (NaN ones, ``estimate``, ``note``).
    """

    def __init__(
        self,
        data,
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        max_samples: int | None = DEFAULT_PROBE_SAMPLES,
        estimate: Estimate = "auto",
        *,
        features_fn: FeaturesFn | None = None,
        head=None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        max_exact_dim: int | None = None,
        prefix: str = "interplay/",
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("every_n_train_steps", every_n_train_steps),
        ):
            if value is not None and (type(value) is not int or value < 0):
                raise InputError(f"{name} must be a non-negative int or None, got {value!r}")
        if not every_n_epochs and not every_n_train_steps:
            raise InputError(
                "give every_n_epochs or every_n_train_steps: nothing would be measured"
            )
        self.every_n_epochs, self.every_n_train_steps = every_n_epochs, every_n_train_steps
        self.prefix = prefix
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
        self.rows: list[dict] = []
        self._measured_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.probe.load(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0:  # step 0: the weights before training
            self._log(trainer, pl_module, on_step=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0:
            self._log(trainer, pl_module, on_step=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        every = self.every_n_epochs
        if every and (trainer.current_epoch + 1) % every == 0:
            self._log(trainer, pl_module, on_step=False)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, on_step: bool) -> None:
        step = trainer.global_step
        # once per optimizer step: gradient accumulation ends several batches at one step,
        # and an epoch can end at a step that was just measured
        if step == self._measured_step:
            return
        self._measured_step = step
        row = self.probe.measure(pl_module)
        row.update(step=step, epoch=trainer.current_epoch)
        self.rows.append(row)
        values = scalars(row, self.prefix)
        # The values are equal on every process already (the metric synchronised its
        # sums); a "max" sync keeps them exact and tells Lightning they are synchronised.
        pl_module.log_dict(
            values,
            on_step=on_step,
            on_epoch=not on_step,
            logger=False,
            sync_dist=True,
            reduce_fx="max",
            batch_size=1,
        )
        # Lightning would write them at the step before (epoch ends, batch ends) and, within
        # an epoch, only every log_every_n_steps: the loggers get them at `step` directly.
        for logger in trainer.loggers:
            logger.log_metrics({**values, "epoch": trainer.current_epoch}, step=step)
            logger.save()
