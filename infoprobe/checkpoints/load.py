"""A checkpoint loaded strictly into its architecture (eval mode, cpu, float32).

The model is first built on the ``meta`` device, which holds shapes and no memory. Its
parameters and buffers are compared with the checkpoint's tensors, and its size with the
memory available, before anything is allocated (:mod:`infoprobe.checkpoints.materialise`
then fills it with the checkpoint's weights).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from infoprobe import allowlist
from infoprobe.checkpoints.build import (
    build_model,
    code_refusal,
    infer_in_chans,
    infer_num_classes,
    is_custom_arch,
)
from infoprobe.checkpoints.materialise import check_memory, materialise
from infoprobe.checkpoints.meta import read_hf_config
from infoprobe.checkpoints.read import read_checkpoint
from infoprobe.errors import InputError, bracketed


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    ``model`` is in eval mode on cpu in float32; ``arch`` is the timm name or
    ``file.py:factory`` it was built from (None for a pickled module); ``meta`` holds what
    the checkpoint recorded (``step``/``epoch``/``arch``..., numbers parsed to int, plus
    ``format`` and ``source_key``).
    """

    model: nn.Module
    arch: str | None
    num_classes: int
    path: Path
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StateDiff:
    """How two state dicts differ: keys only in each, and ``(key, shape_a, shape_b)`` of
    tensors whose shape or kind (floating point or not) differs."""

    only_a: list[str]
    only_b: list[str]
    mismatched: list[tuple[str, tuple, tuple]]

    def __bool__(self) -> bool:
        return bool(self.only_a or self.only_b or self.mismatched)


def _optional_key(key: str) -> bool:
    # Old checkpoints lack BatchNorm's step counter; it never affects evaluation.
    return key.endswith("num_batches_tracked")


def compare_states(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> StateDiff:
    """The differences between two state dicts, BatchNorm step counters ignored."""
    return StateDiff(
        only_a=[k for k in a if k not in b and not _optional_key(k)],
        only_b=[k for k in b if k not in a and not _optional_key(k)],
        mismatched=[
            (k, tuple(a[k].shape), tuple(b[k].shape))
            for k in a
            if k in b
            and (a[k].shape != b[k].shape or a[k].is_floating_point() != b[k].is_floating_point())
        ],
    )


def _likely_cause(missing, unexpected, mismatched, arch, num_classes) -> str:
    def prefix_counts(longer: list[str], shorter: set[str]) -> Counter:
        found: Counter = Counter()
        for k in longer:
            parts = k.split(".")
            for i in range(1, len(parts)):
                if ".".join(parts[i:]) in shorter:
                    found[".".join(parts[:i]) + "."] += 1
                    break
        return found

    extra = prefix_counts(unexpected, set(missing))
    if extra and extra.most_common(1)[0][1] >= max(1, len(unexpected) // 2):
        p = extra.most_common(1)[0][0]
        return f"unstripped prefix: checkpoint keys start with '{p}'; pass --strip-prefix {p}"
    lacking = prefix_counts(missing, set(unexpected))
    if lacking and lacking.most_common(1)[0][1] >= max(1, len(missing) // 2):
        p = lacking.most_common(1)[0][0]
        return (
            f"stripped prefix: the model's keys start with '{p}' and the checkpoint's do "
            "not; pass --strip-prefix '' to keep the keys as saved"
        )
    if mismatched and not missing and not unexpected:
        heads = {ck[0] for _, ck, md in mismatched if ck[1:] == md[1:] and ck[0] != md[0]}
        if (
            len(mismatched) <= 2
            and len(heads) == 1
            and all(ck[1:] == md[1:] for _, ck, md in mismatched)
        ):
            return (
                f"wrong --num-classes: the checkpoint's head has {heads.pop()} outputs, "
                f"the model was built with {num_classes}"
            )
        if len(mismatched) == 1 and len(mismatched[0][1]) >= 3:
            _, ck, md = mismatched[0]
            if ck[0] == md[0] and ck[1] != md[1]:
                return (
                    f"wrong --in-chans: the checkpoint's first layer takes {ck[1]} input "
                    f"channels, the model {md[1]}"
                )
    return f"wrong --arch: the checkpoint was not saved from '{arch}' with these options"


def _pos_embed_cause(model: nn.Module, mismatched: list[tuple[str, tuple, tuple]]) -> str | None:
    """An input-size explanation when a ViT's position embedding [1, prefix + grid, D]
    differs in length: the checkpoint was trained at another image size."""
    found = [
        (c, m)
        for k, c, m in mismatched
        if k.split(".")[-1] == "pos_embed" and len(c) == len(m) == 3 and c[2] == m[2]
    ]
    if not found:
        return None
    ck, md = found[0]
    prefix = (
        0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
    )
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    side = math.isqrt(max(ck[1] - prefix, 0))
    size = ""
    if patch and side * side == ck[1] - prefix:
        size = f"img_size={side * patch[0]} "
    return (
        f"input size: the checkpoint's position embedding has {ck[1]} tokens, the model "
        f"built here {md[1]}, so the checkpoint was trained at another image size; build "
        f"the model at its size with --model-kwargs {size or 'img_size=SIZE '}"
        "dynamic_img_size=true (then it also takes other input sizes)"
    )


def check_fits(
    model: nn.Module, sd: dict[str, Tensor], path: Path, arch: str, num_classes: int | None
) -> None:
    """InputError unless ``sd`` holds every tensor of ``model``'s state dict with its shape
    (and kind: floating point or not), and nothing else; ``model`` may be on ``meta``."""
    diff = compare_states(sd, model.state_dict())
    missing, unexpected, mismatched = diff.only_b, diff.only_a, diff.mismatched
    if diff:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}) {bracketed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}) {bracketed(unexpected)}")
        if mismatched:
            shown = [f"{k} checkpoint {c} vs model {m}" for k, c, m in mismatched]
            parts.append(f"shape mismatches ({len(mismatched)}) {bracketed(shown, 3)}")
        cause = _pos_embed_cause(model, mismatched) or _likely_cause(
            missing, unexpected, mismatched, arch, num_classes
        )
        raise InputError(
            f"checkpoint {path} does not fit model '{arch}': "
            f"{'; '.join(parts)}. Likely cause: {cause}"
        )


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = False,
    strip_prefix: str | None = None,
    trust_checkpoint: bool = False,
    trust_code: bool = False,
) -> LoadedModel:
    """Load a checkpoint into its architecture, strictly; eval mode, cpu, float32.

    ``path``: a file or a ``save_for_hf`` folder. ``arch`` defaults to the recorded one
    (config.json, safetensors metadata, timm's 'arch', a timm name in Lightning's
    ``hyper_parameters``); ``local-dir:FOLDER`` takes it, its arguments and data config from
    that folder's config.json. A custom ``file.py:factory`` / ``module:factory`` needs
    ``trust_code``, a recorded one also ``trust_checkpoint`` (and is looked for beside the
    recording file only). Recorded constructor arguments pass the allowlist (unchecked only
    for a custom factory of a trusted checkpoint); ``model_kwargs`` win over them, and their
    ``num_classes`` / ``in_chans`` count as given. Sizes default to the recorded ones, then
    to the head weight and the model's first layer. A trusted pickled module or TorchScript
    is used as it is unless ``arch`` is given. Trust flags take only True or False."""
    _check_flags(trust_checkpoint=trust_checkpoint, trust_code=trust_code)
    p = Path(path).expanduser()
    sd, meta, module = read_checkpoint(
        p, ema=ema, strip_prefix=strip_prefix, trust=trust_checkpoint
    )
    arch, meta, local = _local_dir(arch, meta)
    num_classes, in_chans, typed_kwargs = _typed_sizes(num_classes, in_chans, model_kwargs)
    if module is not None and arch is None and local is None:  # used as it is
        n = num_classes or meta.get("num_classes") or infer_num_classes(sd) or 0
        return LoadedModel(module.float().eval(), meta.get("arch"), int(n), p, meta)
    # a recorded custom arch is looked for beside what recorded it, only
    recorder = local or (p if p.is_dir() else p.parent)
    base = None if arch else recorder
    arch = arch or _recorded_arch(meta, p, trust_checkpoint, trust_code)
    guessed = tuple(
        k
        for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
        if v is None and k not in meta
    )
    num_classes = num_classes or meta.get("num_classes") or infer_num_classes(sd, arch)
    build = functools.partial(
        build_model,
        arch,
        num_classes=num_classes,
        model_kwargs=_constructor_kwargs(meta, typed_kwargs, arch, p, trust_checkpoint),
        inferred=guessed,
        base=base,
        trust_code=trust_code,
    )
    in_chans = in_chans or meta.get("in_chans") or infer_in_chans(sd, arch)
    model = _built(build, sd, p, num_classes, in_chans).float().eval()
    if meta.get("pretrained_cfg"):  # the folder's data config drives the eval transform
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **meta["pretrained_cfg"]}
    if num_classes is None:
        num_classes = infer_num_classes(model.state_dict()) or 0
    return LoadedModel(model=model, arch=arch, num_classes=int(num_classes), path=p, meta=meta)


def _local_dir(arch: str | None, meta: dict) -> tuple[str | None, dict, Path | None]:
    """For ``arch="local-dir:FOLDER"``, as in timm: the folder's config.json gives the
    architecture, its arguments and data config (all recorded, so untrusted; the weights are
    the checkpoint's). Returns the arch left to give (None), the metadata and the folder."""
    if arch is None or not arch.startswith("local-dir:"):
        return arch, meta, None
    local = Path(arch.removeprefix("local-dir:")).expanduser()
    return None, {**meta, **read_hf_config(local)}, local


def _constructor_kwargs(
    meta: dict, typed: dict, arch: str, path: Path, trust_checkpoint: bool
) -> dict[str, Any]:
    """The recorded constructor arguments, checked (unchecked only for a custom factory of
    a trusted checkpoint), with the user's ``typed`` ones replacing them."""
    recorded = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k not in typed}
    if not (trust_checkpoint and is_custom_arch(arch)):
        recorded = allowlist.recorded_model_kwargs(recorded, f"checkpoint {path} model_kwargs")
    return {**recorded, **typed}


def _built(
    build: functools.partial, sd: dict[str, Tensor], path: Path, num_classes, in_chans
) -> nn.Module:
    """The model ``build`` (:func:`build_model` but for ``in_chans`` and ``device``) makes,
    holding ``sd``: built on ``meta``, its input channels read off the checkpoint's weight
    of the model's first layer when not given, compared with ``sd`` and sized against the
    memory available, then materialised."""
    arch = build.args[0]
    shell = build(in_chans=in_chans, device="meta")
    if in_chans is None:
        found = infer_in_chans(sd, arch, shell)
        if found is not None and found != infer_in_chans(shell.state_dict(), arch, shell):
            in_chans, shell = found, build(in_chans=found, device="meta")
    check_fits(shell, sd, path, arch, num_classes)
    check_memory(shell, f"checkpoint {path} (model '{arch}')")
    return materialise(shell, sd, functools.partial(build, in_chans=in_chans))


def _check_flags(**flags: Any) -> None:
    """InputError for a trust flag that is not exactly True or False ("false" is truthy)."""
    for name, value in flags.items():
        if value is not True and value is not False:
            raise InputError(
                f"{name}={allowlist.shown(value)}: give True or False "
                f"(--{name.replace('_', '-')} on the command line)"
            )


def _typed_sizes(
    num_classes: int | None, in_chans: int | None, model_kwargs: dict[str, Any] | None
) -> tuple[int | None, int | None, dict]:
    """``num_classes`` / ``in_chans`` given in ``model_kwargs`` count as given directly (so a
    recorded value never overrides them, and they meet the flags' bounds); the same name
    given twice must agree."""
    kwargs = dict(model_kwargs or {})
    sizes = {"num_classes": num_classes, "in_chans": in_chans}
    for key in sizes:
        if key not in kwargs:
            continue
        value = kwargs.pop(key)
        flag = f"--{key.replace('_', '-')}"
        # the same type and cap as the flag's (a head of 1e8 classes allocates gigabytes)
        allowlist.given_count(key, value, "--model-kwargs", f"give it with {flag}")
        if sizes[key] is not None and sizes[key] != value:
            raise InputError(
                f"--model-kwargs {key}={value} conflicts with {flag} {sizes[key]}; give one of them"
            )
        sizes[key] = value
    return sizes["num_classes"], sizes["in_chans"], kwargs


def _recorded_arch(meta: dict, path: Path, trust_checkpoint: bool, trust_code: bool) -> str:
    """The architecture the checkpoint records; a custom one (code) only when the user
    trusts both the checkpoint and the code it names."""
    recorded = meta.get("arch")
    if not recorded:
        raise InputError(
            f"checkpoint {path} does not record its architecture; pass --arch (a timm model "
            "name or path/to/file.py:factory)"
        )
    if is_custom_arch(recorded) and not trust_checkpoint:
        raise InputError(
            f"checkpoint {path} records a custom architecture ({allowlist.shown(recorded)}), "
            "which would import and run code named by the file; infoprobe runs it only with "
            "--trust-checkpoint and --trust-code, for a file whose source you trust. Otherwise "
            "pass --arch with a timm name"
        )
    if is_custom_arch(recorded) and not trust_code:
        raise code_refusal(recorded, path)
    return recorded
