"""One evaluation pass: logits, loss, accuracy, penultimate features and head weights.

The features are the flattened input of the classifier head, captured by a forward pre-hook
in the same forward pass that gives the logits, so all of them describe the same weights
and samples. Head weights are W [C, d], bias excluded. With ``layers``, the same pass also
keeps the pooled features of each layer (:mod:`infoprobe.layers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from infoprobe import distributed
from infoprobe.data import Dataset, model_in_chans
from infoprobe.errors import InfoprobeError, InputError, RunFailure
from infoprobe.evaluation import Evaluation, check_features, restrict_classes, scores
from infoprobe.heads import Classifier, find_heads
from infoprobe.info import DEFAULT_BATCH_SIZE
from infoprobe.layers import (
    PRE_LOGITS,
    LayerFeatures,
    LayerPass,
    close_outputs,
    select_layers,
)

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


_AMP = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class ProgressSink(Protocol):
    """Where a pass over data reports progress (report.RichProgress implements it)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:k`` or ``mps``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec}: unknown; use auto, cpu, cuda, cuda:K or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {spec}: no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {spec}: only {count} CUDA device(s) (0..{count - 1})")
        if dev.index is None:  # explicit index: tensors report cuda:K, never bare cuda
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {spec}: unsupported; use auto, cpu, cuda, cuda:K or mps")
    return dev


def _amp_dtype(amp: str | bool | None) -> torch.dtype | None:
    if amp is None or amp is False:
        return None
    if amp is True:
        return torch.bfloat16
    if str(amp).lower() not in _AMP:
        raise InputError(f"--amp {amp}: use bf16 or fp16")
    return _AMP[str(amp).lower()]


def _logits_of(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise RunFailure(f"the model returned {type(out).__name__}; expected a logits tensor")


def _expected_input(model: nn.Module) -> str:
    chans = model_in_chans(model)
    size = getattr(model, "pretrained_cfg", {}).get("input_size")
    if chans and size:
        return f"({chans}, H, W) images, e.g. ({chans}, {size[-2]}, {size[-1]})"
    if chans:
        return f"{chans}-channel inputs"
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return f"[{first.in_features}] feature vectors" if first else "another input shape"


def _fixed_size(model: nn.Module) -> tuple[int, int] | None:
    """The one image size a timm patch embedding built with ``strict_img_size`` takes."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if not getattr(embed, "strict_img_size", False) or size is None:
        return None
    return tuple(int(v) for v in size)


def _misfit(model: nn.Module, x: Tensor) -> bool:
    """Whether inputs shaped like ``x`` do not fit what the model's first layer takes: the
    channels of its first conv, or the width of its first Linear for [n, k] inputs."""
    if x.is_floating_point() and x.ndim >= 3:
        chans = model_in_chans(model)
        return chans is not None and x.shape[1] != chans
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return x.ndim == 2 and first is not None and x.shape[1] != first.in_features


def _rejected(model: nn.Module, x: Tensor, err: Exception, start: int) -> Exception:
    """Bad input when the first batch fails on inputs that do not fit the model (decided
    from shapes by :func:`_misfit`, never from the error's words); a runtime failure
    otherwise."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:240]
    fixed = _fixed_size(model)
    if start == 0 and fixed is not None and tuple(x.shape[-2:]) != fixed:
        # timm's PatchEmbed asserts the size a ViT without dynamic_img_size was built for
        return InputError(
            f"the model takes {fixed[0]}x{fixed[1]} images only and got "
            f"{x.shape[-2]}x{x.shape[-1]} ({reason}): give it {fixed[0]}x{fixed[1]} inputs "
            f"(image folders: --input-size {x.shape[1]} {fixed[0]} {fixed[1]}), or build it with "
            "--model-kwargs dynamic_img_size=true to take any input size"
        )
    if start == 0 and _misfit(model, x):
        return InputError(
            f"the model rejected inputs of shape {tuple(x.shape[1:])} per sample ({reason}); it "
            f"expects {_expected_input(model)}: check --data, --input-size or --in-chans"
        )
    return RunFailure(f"the model failed on samples {start}..{start + len(x) - 1}: {reason}")


def _prepare(model: nn.Module, dev: torch.device, memory_format) -> list[nn.Module]:
    """Put ``model`` on ``dev`` in eval mode; return the modules to switch back to training.

    One walk over the modules, skipping ``.to()`` when the weights are already in place:
    sweeps evaluate one model many times, and ``Module.to``/``train`` cost milliseconds."""
    training, move, reformat = [], False, False
    for m in model.modules():
        if m.training:
            training.append(m)
        # direct dict access: parameters()/buffers() re-walk the tree for every module
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is None:
                continue
            move = move or t.device != dev
            reformat = reformat or (
                memory_format is not None
                and t.ndim == 4
                and not t.is_contiguous(memory_format=memory_format)
            )
    if move:
        model.to(dev)
    if reformat:
        model.to(memory_format=memory_format)
    for m in training:
        m.training = False  # what Module.eval() does, restorable module by module
    return training


def _checked_labels(labels: Tensor, num_classes: int, source: str) -> Tensor:
    """``labels`` as int64; InputError when one lies outside the head's [0, C)."""
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise InputError(
            f"labels of {source} lie in [{int(labels.min())}, {int(labels.max())}] but the "
            f"model's head has {num_classes} classes [0, {num_classes}); check --data or "
            "--num-classes"
        )
    return labels


@contextlib.contextmanager
def _eval_mode(model: nn.Module, dev: torch.device, memory_format):
    """:func:`_prepare` the model; restore the modules' training flags on the way out."""
    training = _prepare(model, dev, memory_format)
    try:
        yield
    finally:
        for m in training:
            m.training = True


@contextlib.contextmanager
def _reporting(progress: ProgressSink | None, total: int, description: str):
    """Start ``progress`` (when given) and stop it even when the pass fails."""
    if progress is None:
        yield
        return
    progress.start(total, description)
    try:
        yield
    finally:
        progress.stop()


class _Outputs:
    """cpu buffers for features [n, d], logits [n, C] and each layer's features [n, d_l],
    written batch by batch; the feature buffers are made at the first batch, which settles
    their widths.

    On CUDA they are pinned, so the copies queue behind the compute instead of one large
    pageable transfer at the end; ``finite`` stays on the device (no sync per batch).
    """

    def __init__(self, n: int, num_classes: int, dev: torch.device) -> None:
        self.pin = dev.type == "cuda"
        self.dev = dev
        self.features: Tensor | None = None
        self.layers: list[Tensor] = []
        self.logits = torch.empty(n, num_classes, pin_memory=self.pin)
        self.finite = torch.ones((), dtype=torch.bool, device=dev)

    def _buffer(self, width: int) -> Tensor:
        return torch.empty(len(self.logits), width, pin_memory=self.pin)

    def put(self, start: int, z: Tensor, logits: Tensor, pooled: Sequence[Tensor] = ()) -> None:
        if self.features is None:
            self.features = self._buffer(z.shape[1])
            self.layers = [self._buffer(p.shape[1]) for p in pooled]
        for buffer, part in zip((self.features, *self.layers), (z, *pooled), strict=True):
            self.finite &= torch.isfinite(part).all()
            buffer[start : start + len(z)].copy_(part, non_blocking=self.pin)
        self.logits[start : start + len(z)].copy_(logits, non_blocking=self.pin)

    def done(self) -> None:
        if self.pin:
            torch.cuda.current_stream(self.dev).synchronize()


def _forward(
    model: nn.Module, x: Tensor, heads: Classifier, start: int, taps: LayerPass | None = None
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(features [b, d], logits [b, C], each layer's features [b, d_l]) of one batch;
    out-of-memory errors pass through."""
    heads.clear()
    try:
        output, pooled = (model(x), []) if taps is None else taps.run(x)
        logits = _logits_of(output)
    except _OOM:
        heads.clear()
        raise
    except InfoprobeError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        raise _rejected(model, x, e, start) from None
    z, logits = heads.batch(x, logits)
    if taps is not None and taps.uses_taps and not taps.verified:
        _verify_taps(model, x, output, heads, taps)
    return z, logits, pooled


def _verify_taps(
    model: nn.Module, x: Tensor, output: Tensor, heads: Classifier, taps: LayerPass
) -> None:
    """On the first batch: ``forward_head(forward_intermediates(x))`` gives what the model's
    own forward does (on two samples), else the taps are not the model's layers."""
    want = _logits_of(model(x[:2]))
    heads.clear()
    got = _logits_of(output)[:2]
    if not close_outputs(got, want, taps.low_precision):
        raise RunFailure(
            f"{type(model).__name__}'s forward_head(forward_intermediates(x)) does not give "
            "its forward's output; name the modules to hook with --layers NAME,NAME"
        )
    taps.verified = True


def _run_pass(
    model: nn.Module,
    batches: Iterable[Tensor],
    heads: Classifier,
    out: _Outputs,
    batch_size: int,
    memory_format,
    progress: ProgressSink | None,
    taps: LayerPass | None = None,
) -> None:
    """Fill ``out`` with every sample of ``batches`` (in order), ``batch_size`` at a time; a
    batch that runs out of memory is retried at half the size (like timm's validate.py),
    and the smaller size is kept for the rest of the pass."""
    start, bs = 0, batch_size
    for inputs in batches:
        done = 0
        while done < len(inputs):
            x = inputs[done : done + bs].to(out.dev, non_blocking=True)
            if memory_format is not None and x.ndim == 4:
                x = x.contiguous(memory_format=memory_format)
            try:
                z, logits, pooled = _forward(model, x, heads, start, taps)
            except _OOM:
                if bs == 1:
                    raise RunFailure(
                        "out of memory at batch size 1; use a smaller model, "
                        "--amp bf16 or --device cpu"
                    ) from None
                del x
                bs //= 2
                if out.dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            out.put(start, z, logits, pooled)
            start, done = start + len(x), done + len(x)
            if progress is not None:
                progress.advance(len(x))
    out.done()


def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    head: nn.Module | str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    amp: str | bool | None = False,
    channels_last: bool = False,
    valid_labels: Sequence[int] | None = None,
    progress: ProgressSink | None = None,
    layers: str | Sequence[str | int] | None = None,
) -> Evaluation:
    """Run ``model`` over ``data`` once, capturing the heads' inputs with pre-hooks.

    ``data``: a dataset in memory, or an :class:`~infoprobe.data.ImageStream` decoded batch
    by batch as the pass goes. Under torchrun each process evaluates its
    :func:`~infoprobe.distributed.shard` and every process gets all rows, in order.

    ``valid_labels``: evaluate on a subset of the model's classes, as timm's validate.py
    ``--valid-labels`` does (see :func:`restrict_classes`).

    ``head``: the classifier module, or its dotted path; its own output then gives the
    logits. Default: the heads of :func:`find_heads`, with the model's output as the logits
    and the one linear head that reproduces them (see :class:`Classifier`; a model without
    one is refused, naming its heads).
    ``device``: see :func:`resolve_device`; the model is moved there and left there (its
    train/eval flags are restored). ``amp``: autocast dtype (``"bf16"``/``"fp16"``);
    ``channels_last`` applies on CUDA. A batch that runs out of memory is retried at half
    the size. Raises :class:`InputError` for labels outside [0, C), inputs of a shape the
    model rejects and NaN/Inf features.

    ``layers``: also keep the pooled features of these layers, from the same forward pass
    (:func:`infoprobe.layers.select_layers`: ``"stages"``, ``"all"``, or names and tap
    indices), followed by the head's input as layer ``pre_logits``; they fill
    ``Evaluation.layers``. Memory: ``4 n sum_l d_l`` bytes more for the n samples.
    """
    n = _checked_size(data, batch_size)
    dev = resolve_device(device)
    heads = [("head", head)] if isinstance(head, nn.Module) else find_heads(model, head_path=head)
    classifier = Classifier(model, heads, own_logits=head is not None)
    labels = _checked_labels(data.labels, classifier.num_classes, data.source)
    dtype = _amp_dtype(amp)
    memory_format = torch.channels_last if channels_last and dev.type == "cuda" else None
    taps = None
    if layers is not None:
        taps = LayerPass(model, select_layers(model, layers), low_precision=dtype is not None)
    lo, hi = distributed.shard(n, batch_size)  # (0, n) in one process
    out = _Outputs(hi - lo, classifier.num_classes, dev)
    with distributed.agreed():
        with _pass_context(model, classifier, taps, dev, dtype, memory_format, progress, hi - lo):
            batches = data.batches(batch_size, lo, hi)
            _run_pass(model, batches, classifier, out, batch_size, memory_format, progress, taps)
        if not bool(out.finite):
            _name_non_finite(out, taps, data.source, lo)
    evaluation = _gathered(out, labels, classifier.weight, taps, n, batch_size)
    if valid_labels is None:
        return evaluation
    return restrict_classes(evaluation, valid_labels, data.source)


@contextlib.contextmanager
def _pass_context(
    model: nn.Module,
    classifier: Classifier,
    taps: LayerPass | None,
    dev: torch.device,
    dtype: torch.dtype | None,
    memory_format,
    progress: ProgressSink | None,
    total: int,
):
    """The state of one pass: the head (and layer) hooks, eval mode on ``dev``, progress,
    no gradients and autocast to ``dtype`` (None: off); all undone on exit."""
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with (
        classifier.hooked(),
        taps.hooked() if taps is not None else contextlib.nullcontext(),
        _eval_mode(model, dev, memory_format),
        _reporting(progress, total, "evaluating"),
        torch.no_grad(),
        autocast,
    ):
        yield


def _checked_size(data: Dataset, batch_size: int) -> int:
    """The number of samples; InputError for an empty dataset or a batch size below 1."""
    if len(data) == 0:
        raise InputError(f"dataset {data.source} is empty (0 samples)")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    return len(data)


def _name_non_finite(out: _Outputs, taps: LayerPass | None, source: str, lo: int) -> None:
    """NonFiniteFeatures for the non-finite rows, named at the first layer that has them
    (``lo``: the index of this process's first row in the data)."""
    for layer, kept in zip(taps.layers if taps else (), out.layers, strict=True):
        check_features(kept, f"{source} at layer {layer.name}", offset=lo)
    check_features(out.features, source, offset=lo)


def _gathered(
    out: _Outputs, labels: Tensor, head: Tensor, taps: LayerPass | None, n: int, batch_size: int
) -> Evaluation:
    """The evaluation of all n samples from this process's ``out`` (every process's rows,
    in order, under torchrun)."""
    features = distributed.gather_rows(out.features, n, batch_size)
    logits = distributed.gather_rows(out.logits, n, batch_size)
    loss, accuracy, note = scores(logits, labels)
    return Evaluation(
        features=features,
        logits=logits,
        labels=labels,
        head=head,
        loss=loss,
        accuracy=accuracy,
        note=note,
        layers=_layer_features(taps, out, features, n, batch_size),
    )


def _layer_features(
    taps: LayerPass | None, out: _Outputs, features: Tensor, n: int, batch_size: int
) -> tuple[LayerFeatures, ...]:
    """Each layer's gathered features, then the head's input as ``pre_logits``."""
    if taps is None:
        return ()
    kept = [
        LayerFeatures(
            layer.name, taps.pooled_as[layer.name], distributed.gather_rows(part, n, batch_size)
        )
        for layer, part in zip(taps.layers, out.layers, strict=True)
    ]
    return (*kept, LayerFeatures(PRE_LOGITS, "head", features))
