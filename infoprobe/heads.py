"""The classifier of a model: its head layers, and the one linear map W [C, d] (bias b)
that reproduces its logits from its features."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from infoprobe.errors import InputError, RunFailure


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


class Classifier:
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
