"""Architecture to an untrained model: timm names and custom factories.

A custom architecture (``file.py:factory``, ``module:factory``) is Python code outside timm's
registry. It is imported only with ``trust_code`` (``--trust-code``), whoever names it. One
recorded in a checkpoint also needs ``trust_checkpoint`` and is imported by file path from
the checkpoint's own folder (``module:factory`` as ``module.py`` there), never through
``sys.path`` or the working directory. No factory comes from Python's standard library or
from a file of the Python installation's own library folders.

Models can be built on the ``meta`` device (``device="meta"``): shapes and dtypes without
memory, so that a model is compared with its checkpoint before anything is allocated.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infoprobe import allowlist
from infoprobe.errors import InputError, bracketed

_HEAD_NAMES = ("head.fc", "fc", "head", "classifier", "last_linear", "linear", "out", "logits")


def is_custom_arch(arch: str) -> bool:
    left, sep, right = arch.rpartition(":")
    return bool(sep) and bool(right) and left not in ("hf-hub", "hf_hub", "timm", "local-dir")


def _stdlib(target: str) -> bool:
    top = target.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


@functools.cache
def _library_dirs() -> tuple[Path, ...]:
    """The Python installation's own library folders: the standard library and the
    site-packages of the interpreter and the user (resolved)."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    return tuple(Path(d).resolve() for d in dirs)


def _model_file(target: str, base: Path | None, label: str) -> Path:
    """The file of ``file.py:factory``: as typed (``base`` None), or a recorded relative
    path inside ``base``, the checkpoint's folder (never the working directory). A file of
    the Python installation's libraries is never a model file (its callables run commands)."""
    file = Path(target).expanduser()
    if base is not None:
        inside = base.resolve()
        candidate = (inside / target).resolve()
        if Path(target).is_absolute() or not candidate.is_relative_to(inside):
            raise InputError(
                f"{label}: a recorded model file must sit in the checkpoint's "
                f"folder {inside}; pass --arch with the factory you trust"
            )
        file = candidate
    if not file.is_file():
        raise InputError(f"{label}: model file {file} does not exist; check the path")
    library = next((d for d in _library_dirs() if file.resolve().is_relative_to(d)), None)
    if library is not None:
        raise InputError(
            f"{label}: {file} is part of the Python installation ({library}), not a model "
            "file; give a timm name, your own file.py:factory, or an installed "
            "package.module:factory"
        )
    return file


def _import_file(file: Path, label: str):
    """The module of ``file``, imported by its path under a name of its own (a stable name
    per file, so that repeated builds reuse one import)."""
    name = "infoprobe_user_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the model file's own code may raise anything
            raise InputError(f"{label}: importing {file} failed: {e!r}") from None
        sys.modules[name] = module
    return module


def _import_module(target: str, label: str):
    """An installed module, for a ``package.module:factory`` the user typed."""
    if _stdlib(target):
        raise InputError(
            f"{label}: '{target}' is a Python standard-library module, not a "
            "model factory; give a timm name or your own file.py:factory"
        )
    try:
        return importlib.import_module(target)
    except ImportError as e:
        raise InputError(
            f"{label}: cannot import module '{target}' ({e}); install it or use "
            "path/to/file.py:factory"
        ) from None


def _import_factory(arch: str, base: Path | None = None):
    """The factory of ``file.py:name`` or ``package.module:name``.

    ``base`` None: the user typed ``arch``; a relative ``file.py`` is found from the working
    directory and a module is imported as Python imports it. Else the checkpoint in folder
    ``base`` recorded it: ``file.py`` and ``package.module`` (as ``package/module.py``) are
    looked for in ``base`` only and imported by path, never through ``sys.path``."""
    label = f"--arch {arch}" if base is None else f"recorded arch {allowlist.shown(arch)}"
    target, _, name = arch.rpartition(":")
    if target.endswith(".py"):
        module = _import_file(_model_file(target, base, label), label)
    elif base is not None:
        relative = target.replace(".", "/") + ".py"
        module = _import_file(_model_file(relative, base, label), label)
    else:
        module = _import_module(target, label)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise InputError(
            f"{label}: '{target}' has no callable '{name}'; callables there: {bracketed(found)}"
        )
    return factory


def code_refusal(arch: str, recorded_in: Path | None = None) -> InputError:
    """The error for a custom architecture that ``trust_code`` did not allow."""
    if recorded_in is None:
        what = f"--arch {arch} names Python code outside timm's registry"
    else:
        what = (
            f"checkpoint {recorded_in} records a custom architecture "
            f"({allowlist.shown(arch)}), Python code outside timm's registry"
        )
    return InputError(
        f"{what}; infoprobe imports and runs it only with --trust-code (trust_code=True), "
        "for code you would run yourself. Otherwise give a timm model name"
    )


def _unknown_timm(arch: str) -> InputError:
    import timm

    all_names = timm.list_models()
    close = timm.list_models(f"*{arch.split('.')[0]}*")[:5]
    close += [n for n in difflib.get_close_matches(arch, all_names, n=5) if n not in close]
    hint = f"close names: {', '.join(close[:5])}" if close else "see `timm.list_models()`"
    return InputError(
        f"--arch {arch}: unknown timm model ({hint}); or give a custom model as "
        "path/to/file.py:factory or package.module:factory"
    )


def _accepts(factory, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build_model(
    arch: str,
    *,
    num_classes: int | None,
    in_chans: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    inferred: tuple[str, ...] = (),
    base: Path | None = None,
    trust_code: bool = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Build an untrained model: a timm name (``pretrained=False``, nothing is downloaded) or
    ``path/to/file.py:factory`` / ``package.module:factory``, called with ``num_classes``,
    ``in_chans`` (when given) and ``model_kwargs``.

    A custom factory is code: it is imported only with ``trust_code`` and takes
    ``model_kwargs`` as they are; a timm model takes only the arguments of
    :func:`~infoprobe.allowlist.typed_model_kwargs`. Names in ``inferred`` (values guessed
    from a checkpoint, not given by the user) are dropped for factories that do not take
    them. ``base``: the folder of the checkpoint that recorded a custom ``arch`` (its code is
    looked for there only); None when the user gave ``arch``. ``device="meta"`` builds
    shapes without memory. Arguments that make timm open a file
    (:data:`~infoprobe.allowlist.FORBIDDEN_KWARGS`) are refused from anyone."""
    label = f"--arch {arch}" if base is None else f"recorded arch {allowlist.shown(arch)}"
    kwargs = dict(model_kwargs or {})
    allowlist.check_forbidden(kwargs, label)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None:
            kwargs[key] = allowlist.given_count(key, value, label, f"fix {key}")
    placed = torch.device(device) if device is not None else contextlib.nullcontext()
    if is_custom_arch(arch):
        if not trust_code:
            raise code_refusal(arch, base)
        factory = _import_factory(arch, base)
        for name in inferred:
            if name in kwargs and not _accepts(factory, name):
                del kwargs[name]
        with placed:
            return _call_factory(factory, kwargs, label)
    name = _timm_name(arch, label)
    sizes = {k: kwargs.pop(k) for k in ("num_classes", "in_chans") if k in kwargs}
    kwargs = {**allowlist.typed_model_kwargs(kwargs, label), **sizes}
    import timm

    try:
        with placed:
            return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as e:
        raise InputError(
            f"{label}: timm rejected the model options {sorted(kwargs)} "
            f"({allowlist.shown(str(e))}); fix --model-kwargs"
        ) from None


def _call_factory(factory, kwargs: dict[str, Any], label: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise InputError(
            f"{label}: the factory rejected its arguments {sorted(kwargs)} ({e}); "
            "make it accept num_classes/in_chans, or fix --model-kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{label}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _timm_name(arch: str, label: str) -> str:
    """The timm registry name of ``arch`` (InputError for hub names and unknown names)."""
    import timm

    if arch.partition(":")[0] in ("hf-hub", "hf_hub"):
        raise InputError(
            f"{label}: hub model names are not supported (nothing is "
            "downloaded); give the timm architecture name, or local-dir:FOLDER "
            "for a folder written by save_for_hf"
        )
    if arch.startswith("local-dir:"):
        raise InputError(
            f"{label}: load_model resolves local-dir: names; build_model "
            "takes the timm name its config.json records"
        )
    name = arch.removeprefix("timm:")
    if not timm.is_model(name):
        raise _unknown_timm(name)
    return name


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["depth=3", "act='relu'"]`` -> ``{"depth": 3, "act": "relu"}`` (values parsed as JSON
    when they are JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--model-kwargs {item!r}: expected key=value")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip("'\"")
    return out


def _timm_cfg_value(arch: str | None, key: str) -> Any:
    """A value of timm's pretrained config for ``arch`` (None: not a timm name, or unset)."""
    import timm
    from timm.models import get_pretrained_cfg_value

    name = (arch or "").removeprefix("timm:")
    if not name or is_custom_arch(name) or not timm.is_model(name):
        return None  # unknown names are reported by build_model
    try:
        return get_pretrained_cfg_value(name, key)
    except RuntimeError:  # a name without a pretrained config, or an unknown tag
        return None


def infer_num_classes(state_dict: dict[str, Tensor], arch: str | None = None) -> int | None:
    """Number of classes from the head weight: timm's recorded classifier name for ``arch``,
    else the last 2-D (or 1x1 conv) weight named like a head, else the last 2-D weight."""

    def rows(key: str) -> int | None:
        w = state_dict.get(key)
        if w is not None and (w.ndim == 2 or (w.ndim == 4 and w.shape[2:] == (1, 1))):
            return int(w.shape[0])
        return None

    classifier = _timm_cfg_value(arch, "classifier")
    for name in [classifier] if isinstance(classifier, str) else classifier or []:
        if rows(f"{name}.weight"):
            return rows(f"{name}.weight")
    weights = [k for k in state_dict if k.endswith(".weight") and rows(k)]
    named = [
        k
        for k in weights
        if k[: -len(".weight")].split(".")[-1] in _HEAD_NAMES or k[: -len(".weight")] in _HEAD_NAMES
    ]
    pick = named[-1] if named else (weights[-1] if weights else None)
    return rows(pick) if pick else None


def infer_in_chans(
    state_dict: dict[str, Tensor], arch: str | None, model: nn.Module | None = None
) -> int | None:
    """Input channels: timm's recorded first conv for ``arch``; else, given ``model`` (built
    on ``meta`` will do), the first weight of 3 or more dimensions in the model's own order
    (the layer a forward pass meets first; a file's keys may be sorted by name), read off
    ``state_dict``'s tensor of that name. None when neither applies."""
    first = _timm_cfg_value(arch, "first_conv")
    if isinstance(first, str):
        key = f"{first}.weight"
    elif model is not None:
        shapes = model.state_dict()
        key = next((k for k, v in shapes.items() if k.endswith("weight") and v.ndim >= 3), "")
    else:
        return None
    w = state_dict.get(key)
    return int(w.shape[1]) if w is not None and w.ndim >= 3 else None
