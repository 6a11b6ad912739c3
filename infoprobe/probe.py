"""One evaluation pass: logits, loss, accuracy, penultimate features and head weights.

The features are the flattened input of the classifier head, captured by a forward pre-hook
in the same forward pass that gives the logits, so all of them describe the same weights
and samples. Head weights are W [C, d], bias excluded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infoprobe import distributed
from infoprobe.data import Dataset, model_in_chans, validate_labels
from infoprobe.errors import InputError, NonFiniteFeatures, RunFailure, unwritable
from infoprobe.info import DEFAULT_BATCH_SIZE

__all__ = [
    "Evaluation",
    "ProgressSink",
    "evaluate",
    "find_head",
    "find_heads",
    "head_weight",
    "is_features_file",
    "load_features",
    "resolve_device",
    "restrict_classes",
    "save_features",
]

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


@dataclass
class Evaluation:
    """Result of one pass (all tensors on cpu).

    ``features`` float32 [n, d]; ``logits`` float32 [n, C] (None only when loaded from a
    features file without logits); ``labels`` int64 [n]; ``head`` float32 [C, d];
    ``loss`` mean cross-entropy (nats) and ``accuracy`` in [0, 1], NaN without logits or
    when a logit is not finite; ``note`` says why they are NaN (empty otherwise).
    """

    features: Tensor
    logits: Tensor | None
    labels: Tensor
    head: Tensor
    loss: float
    accuracy: float
    note: str = ""

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
    if _kind(m) == "NormLinear":  # timm's BatchNorm1d + Linear head (LeViT): one affine map
        return isinstance(getattr(m, "linear", None), nn.Linear)
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor):
        return False
    if _kind(m) == "Linear":
        return w.ndim == 2
    if _kind(m) in ("Conv2d", "Conv1d"):
        return all(s == 1 for s in w.shape[2:]) and getattr(m, "groups", 1) == 1
    return False


def find_heads(
    model: nn.Module, num_classes: int | None = None, head_path: str | None = None
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the classifier: the module at ``head_path``; else every head
    timm's ``get_classifier()`` returns (two for distilled models, one per branch for
    CrossViT); else the last-registered nn.Linear (or 1x1 conv) with ``num_classes``
    outputs."""
    names = {id(m): n for n, m in model.named_modules()}
    if head_path:
        try:
            m = model.get_submodule(head_path)
        except AttributeError:
            found = [n for n, m in model.named_modules() if _is_head_like(m)]
            raise InputError(
                f"--head {head_path}: no such module; linear layers: "
                f"{', '.join(found[-5:]) or 'none'}"
            ) from None
        if not _is_head_like(m):
            raise InputError(f"--head {head_path} is a {_kind(m)}; give a Linear or 1x1 conv")
        return [(head_path, m)]
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        m = get_classifier()
        if isinstance(m, (tuple, list, nn.ModuleList)):
            parts = list(m)
            odd = [names.get(id(x), _kind(x)) for x in parts if not _is_head_like(x)]
            if odd:
                raise InputError(
                    f"the model's classifier heads {', '.join(odd)} are not "
                    "Linear layers (built with num_classes=0?); pass --head"
                )
            return [(names.get(id(x), _kind(x)), x) for x in parts]
        if isinstance(m, nn.Module):
            if _is_head_like(m):
                return [(names.get(id(m), "classifier"), m)]
            inner = [x for x in m.modules() if _is_head_like(x)]
            if inner:
                return [(names.get(id(inner[-1]), "classifier"), inner[-1])]
            raise InputError(
                f"the model's classifier is a {_kind(m)} (built with "
                "num_classes=0?); pass --num-classes or --head"
            )
    found = [
        (n, m)
        for n, m in model.named_modules()
        if _is_head_like(m) and (num_classes is None or _affine(m)[0].shape[0] == num_classes)
    ]
    if not found:
        what = f" with {num_classes} outputs" if num_classes else ""
        raise InputError(
            f"no classifier head found: no nn.Linear or 1x1 conv{what}; pass --head module.path"
        )
    return [found[-1]]


def find_head(
    model: nn.Module, num_classes: int | None = None, head_path: str | None = None
) -> nn.Module:
    """The one classifier layer of :func:`find_heads`; InputError naming the heads when the
    model has several."""
    heads = find_heads(model, num_classes, head_path)
    if len(heads) > 1:
        raise InputError(
            f"the model has several classifier heads ({_names(heads)}); pick one with --head"
        )
    return heads[0][1]


def _names(heads: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(n for n, _ in heads)


def _affine(head: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W [C, d], b [C])`` float32 on cpu with ``head(z) = z @ W.T + b``: a 1x1 conv kernel
    is flattened, and a NormLinear's BatchNorm (eval mode) is folded into its Linear."""
    if _kind(head) == "NormLinear":
        bn, linear = head.bn, head.linear
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = bn.bias - bn.running_mean * scale
        w = linear.weight * scale
        b = linear.weight @ shift + (linear.bias if linear.bias is not None else 0)
    else:
        w, b = head.weight, getattr(head, "bias", None)
    w = w.detach().reshape(w.shape[0], -1).float().cpu().clone()
    b = torch.zeros(w.shape[0]) if b is None else b.detach().reshape(-1).float().cpu().clone()
    return w, b


def head_weight(head: nn.Module) -> Tensor:
    """The head's weight as float32 [C, d] on cpu (a 1x1 conv kernel is flattened, a
    NormLinear's BatchNorm folded in)."""
    return _affine(head)[0]


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


class _Classifier:
    """The classifier heads of one pass, hooked, and the one linear head W [C, d] (bias b)
    that reproduces the logits from the features.

    One head: the features are its input. Several (distilled models, CrossViT branches):
    the logits are the mean of the heads' outputs, and the features are timm's pre-logits;
    when every head reads the pre-logits, W is the mean of the heads' weights, and when the
    pre-logits are the heads' inputs side by side, W is their weights side by side over the
    number of heads. The first batch settles which, and checks that ``features @ W.T + b``
    gives the logits (up to a constant per row, which softmax ignores); a model for which
    no such W exists is refused, naming its heads. ``own_logits``: the logits are the one
    head's own output (an explicit ``--head``), consistent with W by construction.
    """

    def __init__(
        self, model: nn.Module, heads: list[tuple[str, nn.Module]], own_logits: bool
    ) -> None:
        self.model, self.heads, self.own = model, heads, own_logits
        affine = [_affine(m) for _, m in heads]
        self.weights, self.biases = [w for w, _ in affine], [b for _, b in affine]
        rows = sorted({int(w.shape[0]) for w in self.weights})
        if len(rows) != 1:
            raise InputError(
                f"the classifier heads {_names(heads)} have {rows} outputs; pick one with --head"
            )
        self.num_classes = rows[0]
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.concat = False
        self.inputs: list[list[Tensor]] = [[] for _ in heads]
        self.outputs: list[Tensor] = []

    @contextlib.contextmanager
    def hooked(self):
        """Capture every head's input (and with ``own_logits`` the head's output)."""
        handles = []
        try:
            for got, (_, m) in zip(self.inputs, self.heads, strict=True):
                handles.append(
                    m.register_forward_pre_hook(lambda _m, args, got=got: got.append(args[0]))
                )
            if self.own:
                handles.append(
                    self.heads[0][1].register_forward_hook(
                        lambda _m, _args, out: self.outputs.append(out)
                    )
                )
        except Exception as e:  # TorchScript modules refuse Python hooks
            for h in handles:
                h.remove()
            raise RunFailure(
                f"cannot hook the head ({e}); load TorchScript weights into a "
                "Python model with --arch"
            ) from None
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.clear()

    def clear(self) -> None:
        for got in self.inputs:
            got.clear()
        self.outputs.clear()

    def batch(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(features [b, d], logits [b, C]) of the batch the model just ran on."""
        b = len(x)
        for (name, _), got in zip(self.heads, self.inputs, strict=True):
            if len(got) != 1:
                raise RunFailure(
                    f"the head {name} ran {len(got)} times in one forward pass; pick the "
                    "classifier with --head (TorchScript: load the weights with --arch)"
                )
        flat = [got[0].reshape(b, -1) for got in self.inputs]
        if self.own:
            if self.outputs[0].reshape(b, -1).shape != logits.shape:
                raise RunFailure(
                    f"head output {tuple(self.outputs[0].shape)} / logits "
                    f"{tuple(logits.shape)} do not fit on a batch of {b}; pick the "
                    "classifier with --head"
                )
            logits = self.outputs[0].reshape(b, -1)
        z = torch.cat(flat, 1) if self.concat or len(flat) > 1 and self.weight is None else None
        if self.weight is None:
            z = self._settle(x, flat, logits)
        elif z is None:
            z = flat[0]
        self.clear()
        if z.shape[1] != self.weight.shape[1] or tuple(logits.shape) != (b, self.num_classes):
            raise RunFailure(
                f"head input {tuple(z.shape)} / logits {tuple(logits.shape)} do not fit a "
                f"{list(self.weight.shape)} classifier on a batch of {b}; pick the classifier "
                "with --head"
            )
        return z, logits

    def _settle(self, x: Tensor, flat: list[Tensor], logits: Tensor) -> Tensor:
        """Fix W, b and how the features are formed; check that they give the logits."""
        k = len(flat)
        if k == 1:
            z, self.weight, self.bias = flat[0], self.weights[0], self.biases[0]
        else:
            pre = self._pre_logits(x)
            self.bias = torch.stack(self.biases).mean(0)
            if (
                pre is not None
                and all(torch.equal(flat[0], f) for f in flat[1:])
                and _close(pre, flat[0])
            ):
                z, self.weight = flat[0], torch.stack(self.weights).mean(0)
            elif pre is not None and _close(pre, torch.cat(flat, 1)):
                z, self.concat = torch.cat(flat, 1), True
                self.weight = torch.cat(self.weights, 1) / k
            else:
                raise self._refusal()
        if not self.own and (
            z.shape[1] != self.weight.shape[1] or not _reproduces(z, self.weight, self.bias, logits)
        ):
            raise self._refusal()
        return z

    def _pre_logits(self, x: Tensor) -> Tensor | None:
        forward_head = getattr(self.model, "forward_head", None)
        forward_features = getattr(self.model, "forward_features", None)
        if not (callable(forward_head) and callable(forward_features)):
            return None
        pre = forward_head(forward_features(x), pre_logits=True)
        self.clear()
        return pre.reshape(len(x), -1) if isinstance(pre, Tensor) else None

    def _refusal(self) -> InputError:
        heads = self.heads
        if len(heads) == 1:  # another layer adds to the logits (VOLO's aux_head)
            heads = [
                (n, m)
                for n, m in self.model.named_modules()
                if _is_head_like(m) and _affine(m)[0].shape[0] == self.num_classes
            ] or heads
        return InputError(
            f"the model's logits are not one linear head applied to its pre-logits features "
            f"(heads found: {_names(heads)}); pick one head with --head NAME: its own logits "
            "then give accuracy and loss"
        )


def _close(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(a.abs().max()))
    return torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-3 * scale)


def _reproduces(z: Tensor, weight: Tensor, bias: Tensor, logits: Tensor) -> bool:
    """Whether ``z @ weight.T + bias`` equals ``logits`` up to a constant per row (float64,
    outside autocast; the tolerance allows the round-off of float32 or of autocast), on the
    rows where both are finite."""
    rows = torch.isfinite(z).all(1) & torch.isfinite(logits).all(1)
    if not rows.any():
        return True  # nothing to compare; NaN/Inf features are reported after the pass
    z, logits = z[rows], logits[rows]
    with torch.autocast(z.device.type, enabled=False):
        w = weight.to(z.device, torch.float64)
        gap = logits.double() - (z.double() @ w.T + bias.to(z.device, torch.float64))
    gap = gap - gap.mean(1, keepdim=True)
    tol = 1e-3 if logits.dtype == torch.float32 else 5e-2
    return bool(gap.abs().max() <= tol * max(1.0, float(logits.abs().max())))


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
    """cpu buffers for features [n, d] and logits [n, C], written batch by batch; the
    features buffer is made at the first batch, which settles d.

    On CUDA they are pinned, so the copies queue behind the compute instead of one large
    pageable transfer at the end; ``finite`` stays on the device (no sync per batch).
    """

    def __init__(self, n: int, num_classes: int, dev: torch.device) -> None:
        self.pin = dev.type == "cuda"
        self.dev = dev
        self.features: Tensor | None = None
        self.logits = torch.empty(n, num_classes, pin_memory=self.pin)
        self.finite = torch.ones((), dtype=torch.bool, device=dev)

    def put(self, start: int, z: Tensor, logits: Tensor) -> None:
        if self.features is None:
            self.features = torch.empty(len(self.logits), z.shape[1], pin_memory=self.pin)
        self.finite &= torch.isfinite(z).all()
        self.features[start : start + len(z)].copy_(z, non_blocking=self.pin)
        self.logits[start : start + len(z)].copy_(logits, non_blocking=self.pin)

    def done(self) -> None:
        if self.pin:
            torch.cuda.current_stream(self.dev).synchronize()


def _forward(model: nn.Module, x: Tensor, heads: _Classifier, start: int) -> tuple[Tensor, Tensor]:
    """(features [b, d], logits [b, C]) of one batch; out-of-memory errors pass through."""
    heads.clear()
    try:
        logits = _logits_of(model(x))
    except _OOM:
        heads.clear()
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        raise _rejected(model, x, e, start) from None
    return heads.batch(x, logits)


def _run_pass(
    model: nn.Module,
    batches: Iterable[Tensor],
    heads: _Classifier,
    out: _Outputs,
    batch_size: int,
    memory_format,
    progress: ProgressSink | None,
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
                z, logits = _forward(model, x, heads, start)
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
            out.put(start, z, logits)
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
) -> Evaluation:
    """Run ``model`` over ``data`` once, capturing the heads' inputs with pre-hooks.

    ``data``: a dataset in memory, or an :class:`~infoprobe.data.ImageStream` decoded batch
    by batch as the pass goes. Under torchrun each process evaluates its
    :func:`~infoprobe.distributed.shard` and every process gets all rows, in order.

    ``valid_labels``: evaluate on a subset of the model's classes, as timm's validate.py
    ``--valid-labels`` does (see :func:`restrict_classes`).

    ``head``: the classifier module, or its dotted path; its own output then gives the
    logits. Default: the heads of :func:`find_heads`, with the model's output as the logits
    and the one linear head that reproduces them (see :class:`_Classifier`; a model without
    one is refused, naming its heads).
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
    heads = [("head", head)] if isinstance(head, nn.Module) else find_heads(model, head_path=head)
    classifier = _Classifier(model, heads, own_logits=head is not None)
    labels = _checked_labels(data.labels, classifier.num_classes, data.source)
    dtype = _amp_dtype(amp)
    autocast = (
        torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    memory_format = torch.channels_last if channels_last and dev.type == "cuda" else None
    lo, hi = distributed.shard(n, batch_size)  # (0, n) in one process
    out = _Outputs(hi - lo, classifier.num_classes, dev)
    with distributed.agreed():
        with (
            classifier.hooked(),
            _eval_mode(model, dev, memory_format),
            _reporting(progress, hi - lo, "evaluating"),
            torch.no_grad(),
            autocast,
        ):
            _run_pass(
                model,
                data.batches(batch_size, lo, hi),
                classifier,
                out,
                batch_size,
                memory_format,
                progress,
            )
        if not bool(out.finite):
            _check_features(out.features, data.source, offset=lo)
    features = distributed.gather_rows(out.features, n, batch_size)
    logits = distributed.gather_rows(out.logits, n, batch_size)
    loss, accuracy, note = scores(logits, labels)
    evaluation = Evaluation(
        features=features,
        logits=logits,
        labels=labels,
        head=classifier.weight,
        loss=loss,
        accuracy=accuracy,
        note=note,
    )
    return (
        evaluation
        if valid_labels is None
        else restrict_classes(evaluation, valid_labels, data.source)
    )


def scores(logits: Tensor, labels: Tensor) -> tuple[float, float, str]:
    """(mean cross-entropy, accuracy, note) of logits [n, C] against labels [n].

    A sample whose logits are not all finite has no defined loss, and its prediction is
    undefined too (argmax among several +inf, or NaN), so both values are NaN then, with a
    note naming how many samples overflowed, rather than a number that looks valid.
    """
    bad = ~torch.isfinite(logits).all(dim=1)
    if bad.any():
        note = (
            f"logits of {int(bad.sum())} of {len(bad)} samples are Inf/NaN (first: sample "
            f"{int(bad.nonzero()[0])}): loss and accuracy are undefined; the model "
            "overflows (with --amp fp16 use bf16 or drop --amp)"
        )
        return float("nan"), float("nan"), note
    return (
        float(F.cross_entropy(logits, labels)),
        float((logits.argmax(1) == labels).double().mean()),
        "",
    )


def restrict_classes(
    evaluation: Evaluation, valid_labels: Sequence[int], source: str = "the data"
) -> Evaluation:
    """The evaluation of the classifier made of the head rows ``valid_labels`` (k model
    class indices): logits ``[:, valid_labels]`` (timm validate.py's ``output[:,
    valid_labels]``), head ``W[valid_labels]`` [k, d], labels unchanged, which must index
    ``valid_labels`` ([0, k)). Loss and accuracy are those of the k-way logits; the features
    are unchanged, so K_Z is too, and K_W holds the same head rows for each sample as the
    full head with the labels mapped to ``valid_labels[y]``."""
    valid = torch.as_tensor(list(valid_labels), dtype=torch.long)
    c = evaluation.head.shape[0]
    if valid.numel() == 0 or int(valid.min()) < 0 or int(valid.max()) >= c:
        raise InputError(
            f"--valid-labels must list class indices in [0, {c}) of the model's "
            f"head; got {valid.numel()} values in "
            f"[{int(valid.min()) if valid.numel() else '-'}, "
            f"{int(valid.max()) if valid.numel() else '-'}]"
        )
    if valid.unique().numel() != valid.numel():
        raise InputError("--valid-labels lists a class index twice; list each once")
    labels = evaluation.labels
    if int(labels.max()) >= valid.numel():
        raise InputError(
            f"labels of {source} reach {int(labels.max())} but --valid-labels "
            f"lists {valid.numel()} classes; label i must be the i-th valid label "
            "(the folders sorted as the list is)"
        )
    logits = evaluation.logits[:, valid] if evaluation.logits is not None else None
    loss, acc, note = (
        scores(logits, labels) if logits is not None else (float("nan"), float("nan"), "")
    )
    return Evaluation(
        features=evaluation.features,
        logits=logits,
        labels=labels,
        head=evaluation.head[valid].clone(),
        loss=loss,
        accuracy=acc,
        note=note,
    )


def _check_features(features: Tensor, source: str, offset: int = 0) -> None:
    """NonFiniteFeatures naming the NaN/Inf rows; ``offset`` is the index of row 0 in the data."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0]) + offset
        raise NonFiniteFeatures(
            f"features of {int(bad.sum())} samples of {source} are NaN/Inf (first: sample "
            f"{first}); check the checkpoint's weights and the input normalisation (--mean/--std)"
        )


# --------------------------------------------------------------------------- features files


def save_features(path: str | Path, evaluation: Evaluation) -> Path:
    """Write 'features' [n,d], 'labels' [n], 'head' [C,d] (+ 'logits' [n,C]) as safetensors,
    atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"--save-features {path}: folder {path.parent} does not exist")
    tensors = {
        "features": evaluation.features.float(),
        "labels": evaluation.labels.long(),
        "head": evaluation.head.float(),
    }
    if evaluation.logits is not None:
        tensors["logits"] = evaluation.logits.float()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "infoprobe-features"})
        os.replace(tmp, path)
    except OSError as e:
        raise unwritable(path, e) from None
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
        raise InputError(
            f"cannot read features file {path}: corrupt or not safetensors ({str(e).strip()[:200]})"
        ) from None
    missing = [k for k in ("features", "labels", "head") if k not in found]
    if missing:
        raise InputError(
            f"features file {path} lacks {', '.join(missing)}; it needs "
            "'features' [n,d], 'labels' [n] and 'head' [C,d]"
        )
    z, w, logits = found["features"], found["head"], found.get("logits")
    if z.ndim != 2 or w.ndim != 2 or z.shape[1] != w.shape[1]:
        raise InputError(
            f"features file {path}: features {tuple(z.shape)} and head "
            f"{tuple(w.shape)} must be [n, d] and [C, d] with the same d"
        )
    if z.shape[0] == 0:
        raise InputError(f"features file {path} holds 0 samples")
    labels = validate_labels(found["labels"], int(z.shape[0]), f"features file {path}")
    if int(labels.max()) >= w.shape[0]:
        raise InputError(
            f"features file {path}: labels reach {int(labels.max())} but the head "
            f"has {w.shape[0]} classes [0, {w.shape[0]})"
        )
    z, w = z.float(), w.float()
    _check_features(z, f"features file {path}")
    if not torch.isfinite(w).all():
        raise InputError(f"features file {path}: the head weights contain NaN/Inf")
    loss = acc = float("nan")
    note = ""
    if logits is not None:
        if tuple(logits.shape) != (z.shape[0], w.shape[0]):
            raise InputError(
                f"features file {path}: logits {tuple(logits.shape)} should be "
                f"[{z.shape[0]}, {w.shape[0]}]"
            )
        loss, acc, note = scores(logits.float(), labels)
        logits = logits.float()
    return Evaluation(
        features=z, logits=logits, labels=labels, head=w, loss=loss, accuracy=acc, note=note
    )
