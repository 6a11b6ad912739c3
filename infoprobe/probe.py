"""One evaluation pass: logits, loss, accuracy, penultimate features and head weights.

The features are the flattened input of the classifier head, captured by a forward pre-hook
in the same forward pass that gives the logits, so all of them describe the same weights
and samples. Head weights are W [C, d], bias excluded.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infoprobe.data import LabelledTensors, model_in_chans, validate_labels
from infoprobe.errors import InputError, NonFiniteFeatures, RunFailure

__all__ = [
    "Evaluation",
    "ProgressSink",
    "evaluate",
    "find_head",
    "head_weight",
    "is_features_file",
    "load_features",
    "resolve_device",
    "restrict_classes",
    "save_features",
]

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_SHAPE_WORDS = re.compile(r"shape|size|channel|dimension|mat1|expected input|must match", re.I)
_AMP = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16}


class ProgressSink(Protocol):
    """Where a pass over data reports progress (report.RichProgress implements it)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Evaluation:
    """Result of one pass (all tensors on cpu).

    ``features`` float32 [n, d]; ``logits`` float32 [n, C] (None only when loaded from a
    features file without logits); ``labels`` int64 [n]; ``head`` float32 [C, d];
    ``loss`` mean cross-entropy (nats) and ``accuracy`` in [0, 1], NaN without logits.
    """

    features: Tensor
    logits: Tensor | None
    labels: Tensor
    head: Tensor
    loss: float
    accuracy: float

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.head.shape[0])


# --------------------------------------------------------------------------- device, head


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


def _kind(m: nn.Module) -> str:
    # TorchScript submodules are not nn.Linear instances but keep their original name
    return getattr(m, "original_name", type(m).__name__)


def _is_head_like(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor):
        return False
    if _kind(m) == "Linear":
        return w.ndim == 2
    if _kind(m) in ("Conv2d", "Conv1d"):
        return all(s == 1 for s in w.shape[2:]) and getattr(m, "groups", 1) == 1
    return False


def find_head(model: nn.Module, num_classes: int | None = None,
              head_path: str | None = None) -> nn.Module:
    """The classifier layer: the module at ``head_path``; else timm's ``get_classifier()``;
    else the last-registered nn.Linear (or 1x1 conv) with ``num_classes`` outputs."""
    if head_path:
        try:
            m = model.get_submodule(head_path)
        except AttributeError:
            names = [n for n, m in model.named_modules() if _is_head_like(m)]
            raise InputError(f"--head {head_path}: no such module; linear layers: "
                             f"{', '.join(names[-5:]) or 'none'}") from None
        if not _is_head_like(m):
            raise InputError(f"--head {head_path} is a {_kind(m)}; give a Linear or 1x1 conv")
        return m
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        m = get_classifier()
        if isinstance(m, (tuple, list)):
            raise InputError("the model has several classifier heads; pick one with --head")
        if isinstance(m, nn.Module):
            if _is_head_like(m):
                return m
            inner = [x for x in m.modules() if _is_head_like(x)]
            if inner:
                return inner[-1]
            raise InputError(f"the model's classifier is a {_kind(m)} (built with "
                             "num_classes=0?); pass --num-classes or --head")
    found = [m for m in model.modules() if _is_head_like(m)
             and (num_classes is None or m.weight.shape[0] == num_classes)]
    if not found:
        what = f" with {num_classes} outputs" if num_classes else ""
        raise InputError(f"no classifier head found: no nn.Linear or 1x1 conv{what}; "
                         "pass --head module.path")
    return found[-1]


def head_weight(head: nn.Module) -> Tensor:
    """The head's weight as float32 [C, d] on cpu (a 1x1 conv kernel is flattened)."""
    w = head.weight.detach()
    return w.reshape(w.shape[0], -1).float().cpu().clone()


# --------------------------------------------------------------------------- evaluation


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


def _rejected(model: nn.Module, x: Tensor, err: Exception, start: int) -> Exception:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:240]
    if _SHAPE_WORDS.search(reason):
        return InputError(
            f"the model rejected inputs of shape {tuple(x.shape[1:])} per sample ({reason}); it "
            f"expects {_expected_input(model)}: check --data, --input-size or --in-chans")
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
            reformat = reformat or (memory_format is not None and t.ndim == 4
                                    and not t.is_contiguous(memory_format=memory_format))
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
            "--num-classes")
    return labels


@contextlib.contextmanager
def _hooked(head: nn.Module):
    """Yield the list that a forward pre-hook on ``head`` fills with the head's inputs."""
    captured: list[Tensor] = []
    try:
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    except Exception as e:  # TorchScript modules refuse Python hooks
        raise RunFailure(f"cannot hook the head ({e}); load TorchScript weights into a Python "
                         "model with --arch") from None
    try:
        yield captured
    finally:
        handle.remove()
        captured.clear()


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
    """cpu buffers for features [n, d] and logits [n, C], written batch by batch.

    On CUDA they are pinned, so the copies queue behind the compute instead of one large
    pageable transfer at the end; ``finite`` stays on the device (no sync per batch).
    """

    def __init__(self, n: int, num_classes: int, dim: int, dev: torch.device) -> None:
        self.pin = dev.type == "cuda"
        self.dev = dev
        self.features = torch.empty(n, dim, pin_memory=self.pin)
        self.logits = torch.empty(n, num_classes, pin_memory=self.pin)
        self.finite = torch.ones((), dtype=torch.bool, device=dev)

    def put(self, start: int, z: Tensor, logits: Tensor) -> None:
        self.finite &= torch.isfinite(z).all()
        self.features[start:start + len(z)].copy_(z, non_blocking=self.pin)
        self.logits[start:start + len(z)].copy_(logits, non_blocking=self.pin)

    def done(self) -> None:
        if self.pin:
            torch.cuda.current_stream(self.dev).synchronize()


def _forward(model: nn.Module, x: Tensor, captured: list[Tensor], shape: tuple[int, int],
             start: int) -> tuple[Tensor, Tensor]:
    """(features [b, d], logits [b, C]) of one batch; out-of-memory errors pass through."""
    captured.clear()
    try:
        logits = _logits_of(model(x))
    except _OOM:
        captured.clear()
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        raise _rejected(model, x, e, start) from None
    if len(captured) != 1:
        raise RunFailure(
            f"the head ran {len(captured)} times in one forward pass; pick the "
            "classifier with --head (TorchScript: load the weights with --arch)")
    b, (num_classes, dim) = len(x), shape
    z = captured[0].reshape(b, -1)
    if z.shape[1] != dim or tuple(logits.shape) != (b, num_classes):
        raise RunFailure(
            f"head input {tuple(captured[0].shape)} / logits {tuple(logits.shape)} "
            f"do not fit a [{num_classes}, {dim}] classifier on a batch of {b}; "
            "pick the classifier with --head")
    return z, logits


def _run_pass(model: nn.Module, inputs: Tensor, captured: list[Tensor], out: _Outputs,
              shape: tuple[int, int], batch_size: int, memory_format,
              progress: ProgressSink | None) -> None:
    """Fill ``out`` with every sample of ``inputs``, ``batch_size`` at a time; a batch that
    runs out of memory is retried at half the size (like timm's validate.py), and the
    smaller size is kept for the rest of the pass."""
    n, start, bs = len(inputs), 0, batch_size
    while start < n:
        x = inputs[start:start + bs].to(out.dev, non_blocking=True)
        if memory_format is not None and x.ndim == 4:
            x = x.contiguous(memory_format=memory_format)
        try:
            z, logits = _forward(model, x, captured, shape, start)
        except _OOM:
            if bs == 1:
                raise RunFailure("out of memory at batch size 1; use a smaller model, "
                                 "--amp bf16 or --device cpu") from None
            del x
            bs //= 2
            if out.dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        out.put(start, z, logits)
        start += len(x)
        if progress is not None:
            progress.advance(len(x))
    out.done()


def evaluate(model: nn.Module, data: LabelledTensors, *, head: nn.Module | str | None = None,
             device: str | torch.device = "auto", batch_size: int = 256,
             amp: str | bool | None = False, channels_last: bool = False,
             valid_labels: Sequence[int] | None = None,
             progress: ProgressSink | None = None) -> Evaluation:
    """Run ``model`` over ``data`` once, capturing the head's input with a pre-hook.

    ``valid_labels``: evaluate on a subset of the model's classes, as timm's validate.py
    ``--valid-labels`` does (see :func:`restrict_classes`).

    ``head``: the classifier module, or its dotted path (default :func:`find_head`).
    ``device``: see :func:`resolve_device`; the model is moved there and left there (its
    train/eval flags are restored). ``amp``: autocast dtype (``"bf16"``/``"fp16"``);
    ``channels_last`` applies on CUDA. A batch that runs out of memory is retried at half
    the size. Raises :class:`InputError` for labels outside [0, C), inputs of a shape the
    model rejects and NaN/Inf features.
    """
    n = len(data)
    if n == 0:
        raise InputError(f"dataset {data.source} is empty (0 samples)")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    dev = resolve_device(device)
    head_mod = head if isinstance(head, nn.Module) else find_head(model, head_path=head)
    weight = head_weight(head_mod)
    shape = (int(weight.shape[0]), int(weight.shape[1]))
    labels = _checked_labels(data.labels, shape[0], data.source)
    dtype = _amp_dtype(amp)
    autocast = (torch.autocast(dev.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    memory_format = torch.channels_last if channels_last and dev.type == "cuda" else None
    out = _Outputs(n, *shape, dev)
    with (_hooked(head_mod) as captured, _eval_mode(model, dev, memory_format),
          _reporting(progress, n, "evaluating"), torch.no_grad(), autocast):
        _run_pass(model, data.inputs, captured, out, shape, batch_size, memory_format, progress)
    if not bool(out.finite):
        _check_features(out.features, data.source)
    evaluation = Evaluation(features=out.features, logits=out.logits, labels=labels,
                            head=weight, loss=float(F.cross_entropy(out.logits, labels)),
                            accuracy=float((out.logits.argmax(1) == labels).double().mean()))
    return evaluation if valid_labels is None else restrict_classes(evaluation, valid_labels,
                                                                    data.source)


def restrict_classes(evaluation: Evaluation, valid_labels: Sequence[int],
                     source: str = "the data") -> Evaluation:
    """The evaluation of the classifier made of the head rows ``valid_labels`` (k model
    class indices): logits ``[:, valid_labels]`` (timm validate.py's ``output[:,
    valid_labels]``), head ``W[valid_labels]`` [k, d], labels unchanged, which must index
    ``valid_labels`` ([0, k)). Loss and accuracy are those of the k-way logits; the features
    are unchanged, so K_Z is too, and K_W holds the same head rows for each sample as the
    full head with the labels mapped to ``valid_labels[y]``."""
    valid = torch.as_tensor(list(valid_labels), dtype=torch.long)
    c = evaluation.head.shape[0]
    if valid.numel() == 0 or int(valid.min()) < 0 or int(valid.max()) >= c:
        raise InputError(f"--valid-labels must list class indices in [0, {c}) of the model's "
                         f"head; got {valid.numel()} values in "
                         f"[{int(valid.min()) if valid.numel() else '-'}, "
                         f"{int(valid.max()) if valid.numel() else '-'}]")
    if valid.unique().numel() != valid.numel():
        raise InputError("--valid-labels lists a class index twice; list each once")
    labels = evaluation.labels
    if int(labels.max()) >= valid.numel():
        raise InputError(f"labels of {source} reach {int(labels.max())} but --valid-labels "
                         f"lists {valid.numel()} classes; label i must be the i-th valid label "
                         "(the folders sorted as the list is)")
    logits = evaluation.logits[:, valid] if evaluation.logits is not None else None
    loss = acc = float("nan")
    if logits is not None:
        loss = float(F.cross_entropy(logits, labels))
        acc = float((logits.argmax(1) == labels).double().mean())
    return Evaluation(features=evaluation.features, logits=logits, labels=labels,
                      head=evaluation.head[valid].clone(), loss=loss, accuracy=acc)


def _check_features(features: Tensor, source: str) -> None:
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise NonFiniteFeatures(
            f"features of {int(bad.sum())} samples of {source} are NaN/Inf (first: sample "
            f"{first}); check the checkpoint's weights and the input normalisation (--mean/--std)")


# --------------------------------------------------------------------------- features files


def save_features(path: str | Path, evaluation: Evaluation) -> Path:
    """Write 'features' [n,d], 'labels' [n], 'head' [C,d] (+ 'logits' [n,C]) as safetensors,
    atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"--save-features {path}: folder {path.parent} does not exist")
    tensors = {"features": evaluation.features.float(), "labels": evaluation.labels.long(),
               "head": evaluation.head.float()}
    if evaluation.logits is not None:
        tensors["logits"] = evaluation.logits.float()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "infoprobe-features"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_features_file(path: str | Path) -> bool:
    """Whether ``path`` is a .safetensors file holding 'features', 'labels' and 'head'
    (see :func:`save_features`); only the header is read. Unreadable files give False, so
    that the checkpoint loader reports them."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.name.lower().endswith(".safetensors") or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return {"features", "labels", "head"} <= set(f.keys())
    except Exception:
        return False


def load_features(path: str | Path) -> Evaluation:
    """Read a features file (see :func:`save_features`); any framework can write one.

    Validates shapes (features [n,d], head [C,d], labels [n], logits [n,C]), labels in
    [0, C) and finiteness. Loss and accuracy come from the logits, NaN without them.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"features file {path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            found = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"cannot read features file {path}: corrupt or not safetensors "
                         f"({str(e).strip()[:200]})") from None
    missing = [k for k in ("features", "labels", "head") if k not in found]
    if missing:
        raise InputError(f"features file {path} lacks {', '.join(missing)}; it needs "
                         "'features' [n,d], 'labels' [n] and 'head' [C,d]")
    z, w, logits = found["features"], found["head"], found.get("logits")
    if z.ndim != 2 or w.ndim != 2 or z.shape[1] != w.shape[1]:
        raise InputError(f"features file {path}: features {tuple(z.shape)} and head "
                         f"{tuple(w.shape)} must be [n, d] and [C, d] with the same d")
    if z.shape[0] == 0:
        raise InputError(f"features file {path} holds 0 samples")
    labels = validate_labels(found["labels"], int(z.shape[0]), f"features file {path}")
    if int(labels.max()) >= w.shape[0]:
        raise InputError(f"features file {path}: labels reach {int(labels.max())} but the head "
                         f"has {w.shape[0]} classes [0, {w.shape[0]})")
    z, w = z.float(), w.float()
    _check_features(z, f"features file {path}")
    if not torch.isfinite(w).all():
        raise InputError(f"features file {path}: the head weights contain NaN/Inf")
    loss = acc = float("nan")
    if logits is not None:
        if tuple(logits.shape) != (z.shape[0], w.shape[0]):
            raise InputError(f"features file {path}: logits {tuple(logits.shape)} should be "
                             f"[{z.shape[0]}, {w.shape[0]}]")
        logits = logits.float()
        loss = float(F.cross_entropy(logits, labels))
        acc = float((logits.argmax(1) == labels).double().mean())
    return Evaluation(features=z, logits=logits, labels=labels, head=w, loss=loss, accuracy=acc)
