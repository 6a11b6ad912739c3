"""A fixed probe set, measured by a training model's own features and head.

:class:`ProbeSet` is what the Lightning callback and the plain-loop monitor share: it holds
the probe data (chosen once, so every measurement sees the same samples) and, when asked,
runs the model over it and returns the values of an ``infoprobe analyze`` row through
:class:`~infoprobe.metrics.InterplayMetrics`. A measurement leaves training as it was: the
modules' train/eval flags, buffers and grad mode are restored, the torch (CPU and the model's CUDA
device), Python and NumPy random streams are put back, and nothing touches the optimizer or
the gradients, so a run with measurements trains bitwise the same weights as one without.

Under ``torch.distributed`` (DDP, torchrun) every process calls :meth:`ProbeSet.measure`:
each evaluates its share of the batches (:func:`infoprobe.distributed.shard`) with rank 0's
buffers (BatchNorm statistics drift apart between DDP's broadcasts), adds it to the metric,
and the metric's synchronisation gives every process the values of all samples.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from infoprobe import distributed, routes
from infoprobe.data import (
    Dataset,
    ImageStream,
    LabelledTensors,
    load_data,
    stratified_indices,
    validate_labels,
)
from infoprobe.errors import InputError
from infoprobe.heads import find_head, head_weight
from infoprobe.info import DEFAULT_BATCH_SIZE, Estimate
from infoprobe.metrics import InterplayMetrics
from infoprobe.probe import evaluate

__all__ = ["DEFAULT_PROBE_SAMPLES", "ProbeSet"]

#: Samples in a probe set unless said otherwise (a seeded class-stratified subsample).
DEFAULT_PROBE_SAMPLES = 2048

#: ``features_fn(model, inputs) -> features [b, d]``: the penultimate features of a batch.
FeaturesFn = Callable[[nn.Module, Tensor], Tensor]


class ProbeSet:
    """Fixed probe samples and how a model is measured on them.

    Args:
        data: a path infoprobe reads (``--data``: a tensor file or an image folder, loaded
            with :func:`infoprobe.data.load_data` and the model's timm transform), an
            infoprobe dataset (used as it is), or a torch ``Dataset`` or ``DataLoader``
            yielding ``(inputs, labels)``, read once into memory. Under DDP every process
            must get the same data (no DistributedSampler): the processes split it.
        max_samples: a seeded class-stratified subsample of this many samples (None: all).
        seed: the subsample's seed.
        batch_size: evaluation batch size.
        estimate, max_exact_dim: as for :class:`~infoprobe.metrics.InterplayMetrics`.
        head: the classifier module (or its dotted path in the model). Default: found as
            ``infoprobe`` finds timm heads (:func:`infoprobe.heads.find_head` on the first
            submodule with ``get_classifier``, else :func:`infoprobe.probe.evaluate`'s
            search, which checks that the head reproduces the model's logits).
        features_fn: ``features_fn(model, inputs) -> features [b, d]`` for a model whose
            features are not its head's input; ``head`` (a module) is then required, and
            the logits are ``head(features)``.
    """

    def __init__(
        self,
        data,
        *,
        max_samples: int | None = DEFAULT_PROBE_SAMPLES,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        estimate: Estimate = "auto",
        max_exact_dim: int | None = None,
        head: nn.Module | str | None = None,
        features_fn: FeaturesFn | None = None,
    ) -> None:
        if features_fn is not None and head is None:
            raise InputError("features_fn needs head=: the classifier module those features feed")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        routes.check_estimate(estimate)
        self.source, self.max_samples, self.seed = data, max_samples, seed
        self.batch_size, self.estimate, self.max_exact_dim = batch_size, estimate, max_exact_dim
        self.head, self.features_fn = head, features_fn
        self.data: Dataset | None = None

    def load(self, model: nn.Module) -> Dataset:
        """The probe samples (read at the first call; the same ones afterwards)."""
        if self.data is None:
            with _isolated(_unwrapped(model)):
                self.data = _probe_data(self.source, model, self.max_samples, self.seed)
        return self.data

    def measure(self, model: nn.Module) -> dict:
        """The analyze-row values of ``model`` on the probe set (keys of
        :meth:`InterplayMetrics.compute <infoprobe.metrics.InterplayMetrics.compute>`)."""
        model = _unwrapped(model)
        data = self.load(model)
        with _isolated(model), _rank0_buffers(model):
            if self.features_fn is None:
                metric = self._from_evaluation(model, data)
            else:
                metric = self._from_features_fn(model, data)
            return metric.compute()

    def _metric(self, head: Tensor, device: torch.device) -> InterplayMetrics:
        c, d = head.shape
        metric = InterplayMetrics(c, d, estimate=self.estimate, max_exact_dim=self.max_exact_dim)
        # float64 states: on CUDA beside the model (nccl syncs CUDA tensors), else on CPU
        return metric.to(device if device.type == "cuda" else "cpu")

    def _from_evaluation(self, model: nn.Module, data: Dataset) -> InterplayMetrics:
        """infoprobe's own pass (hooked head input); this process's rows enter the metric."""
        device = _device_of(model)
        found = evaluate(
            model, data, head=self._head(model), device=device, batch_size=self.batch_size
        )
        lo, hi = distributed.shard(len(data), self.batch_size)  # what evaluate gave this rank
        metric = self._metric(found.head, device)
        dev = metric.device
        metric.update(
            found.features[lo:hi].to(dev),
            found.labels[lo:hi].to(dev),
            found.head.to(dev),
            found.logits[lo:hi].to(dev),
        )
        return metric

    def _from_features_fn(self, model: nn.Module, data: Dataset) -> InterplayMetrics:
        """``features_fn`` on this process's batches; logits from the head module."""
        head = self._head(model)
        if not isinstance(head, nn.Module):
            raise InputError("features_fn needs head= to be the classifier module")
        device = _device_of(model)
        weight = head_weight(head)
        metric = self._metric(weight, device)
        lo, hi = distributed.shard(len(data), self.batch_size)
        starts = range(lo, hi, self.batch_size)
        dev = metric.device
        for start, x in zip(starts, data.batches(self.batch_size, lo, hi), strict=True):
            z = self.features_fn(model, x.to(device)).reshape(len(x), -1)
            labels = data.labels[start : start + len(x)]
            metric.update(z.to(dev), labels.to(dev), weight.to(dev), head(z).to(dev))
        return metric

    def _head(self, model: nn.Module) -> nn.Module | str | None:
        if isinstance(self.head, str):
            return find_head(model, head_path=self.head)
        if self.head is not None:
            return self.head
        inner = next(
            (m for m in model.modules() if callable(getattr(m, "get_classifier", None))), None
        )
        return find_head(inner) if inner is not None else None


# --------------------------------------------------------------------------- helpers


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: its forward would run collectives (buffer
    broadcasts) that processes with different batch counts would not match."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _timm_model(model: nn.Module) -> nn.Module:
    """The submodule whose ``pretrained_cfg`` gives the image transform (else the model)."""
    return next((m for m in model.modules() if hasattr(m, "pretrained_cfg")), model)


@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; the train flags, grad mode and every random stream
    (torch CPU and the model's CUDA device, Python, NumPy) as they were outside."""
    device = _device_of(model)
    training = [m for m in model.modules() if m.training]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.no_grad():
                model.eval()
                yield
    finally:
        for m in training:
            m.training = True  # module by module: those that were in eval mode stay so
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def _rank0_buffers(model: nn.Module) -> Iterator[None]:
    """Under several processes, rank 0's buffers (BatchNorm statistics) inside, each
    process's own outside. DDP keeps the parameters equal on every process, but each
    process's buffers follow its own batches until the next forward broadcasts rank 0's;
    rank 0's model is the one checkpoints save, so every process measures that one."""
    if not distributed.active():
        yield
        return
    buffers = list(model.buffers())
    own = [b.clone() for b in buffers]
    for b in buffers:
        dist.broadcast(b, src=0)
    try:
        yield
    finally:
        for b, mine in zip(buffers, own, strict=True):
            b.copy_(mine)


def _probe_data(data, model: nn.Module, max_samples: int | None, seed: int) -> Dataset:
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, model=_timm_model(model), max_samples=max_samples, seed=seed)
    if isinstance(data, (LabelledTensors, ImageStream)):
        return data
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        found = _read(data)
        chosen = stratified_indices(found.labels, max_samples, seed)
        if len(chosen) == len(found):
            return found
        return LabelledTensors(found.inputs[chosen], found.labels[chosen], found.source)
    raise InputError(
        f"probe data must be a path, a torch Dataset or a DataLoader, got {type(data).__name__}"
    )


def _read(data) -> LabelledTensors:
    """Every ``(inputs, labels)`` batch of a Dataset or DataLoader, in memory."""
    loader = data
    if not isinstance(data, torch.utils.data.DataLoader):
        loader = torch.utils.data.DataLoader(data, batch_size=DEFAULT_BATCH_SIZE)
    source = f"the probe {type(data).__name__}"
    inputs, labels = [], []
    for batch in loader:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise InputError(f"{source} must yield (inputs, labels) pairs")
        inputs.append(torch.as_tensor(batch[0]))
        labels.append(torch.as_tensor(batch[1]).reshape(-1))
    if not inputs:
        raise InputError(f"{source} is empty")
    x = torch.cat(inputs)
    return LabelledTensors(x, validate_labels(torch.cat(labels), len(x), source), source)
