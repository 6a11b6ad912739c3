"""Reading checkpoints, resolving architectures and the trust gate.

Formats:

- ``.safetensors``: one flat state dict; string metadata (``CHECKPOINT_META_KEYS``) may
  record the architecture, its constructor arguments and the training step.
- torch files (``.pt .pth .pth.tar .bin .ckpt``), read with ``torch.load(weights_only=True)``:
  a bare state dict, or a dict holding it under ``state_dict`` / ``model`` (``state_dict_ema``
  / ``model_ema`` with ``ema=True``): timm train checkpoints, Lightning checkpoints.
- a folder written by timm's ``save_for_hf`` / ``push_to_hub`` (``config.json`` with
  ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg``, beside
  ``model.safetensors`` or ``pytorch_model.bin``), given as the folder or as a file in it;
  ``arch="local-dir:PATH"`` reads the architecture from such a folder's config as timm does.
  Its ``pretrained_cfg`` (mean, std, input size, crop, interpolation) becomes the model's, so
  it drives the evaluation transform.
- ``safetensors.torch.save_model`` files: tied weights stored once, the dropped names
  recorded in the metadata as ``dropped -> kept``, are restored.
- Whole pickled modules (``torch.save(model)``) and TorchScript archives run code when
  loaded; they are refused unless ``trust_checkpoint=True``. A weights-only load that fails
  because the file holds pickled code never falls back to an unsafe load on its own.

Wrapper prefixes (``module.``, ``_orig_mod.``, Lightning's ``model.``) are stripped when every
key carries them, or the prefix given as ``strip_prefix`` is taken. Loading is strict: a
mismatch raises :class:`InputError` listing missing / unexpected keys and shape mismatches
with the likely cause.

What a checkpoint records is untrusted: the architecture name, class and channel counts and
constructor arguments all pass :mod:`infoprobe.allowlist` (every checkpoint form goes through
:func:`_record_meta`), and a recorded custom architecture (``file.py:factory``,
``module:factory``) is code, run only with ``trust_checkpoint=True`` and, for a file, only
from the checkpoint's own folder. An architecture typed by the user is the user's choice and
runs as given. No custom factory comes from Python's standard library.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import pickle
import re
import struct
import sys
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from infoprobe import allowlist
from infoprobe.errors import InfoprobeError, InputError

__all__ = [
    "CHECKPOINT_META_KEYS",
    "CHECKPOINT_SUFFIXES",
    "LoadedModel",
    "build_model",
    "checkpoint_stem",
    "checkpoint_step",
    "checkpoint_files",
    "clean_keys",
    "hf_folder",
    "infer_num_classes",
    "load_model",
    "parse_model_kwargs",
    "read_hf_config",
    "read_state_dict",
    "series_order",
    "series_plan",
    "series_steps",
]

#: safetensors metadata keys that infoprobe reads (all values are strings).
CHECKPOINT_META_KEYS = ("arch", "num_classes", "in_chans", "model_kwargs", "step", "epoch")
#: file name endings treated as checkpoints when a directory is expanded.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pth.tar", ".bin", ".ckpt")

#: weight files of a ``save_for_hf`` folder, in timm's order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
HF_CONFIG = "config.json"
#: ``pretrained_cfg`` entries that describe the evaluation transform; only these are taken
#: from a config.json (never a file, url or hub id).
_DATA_CFG_KEYS = (
    "input_size",
    "test_input_size",
    "min_input_size",
    "fixed_input_size",
    "interpolation",
    "mean",
    "std",
    "crop_pct",
    "test_crop_pct",
    "crop_mode",
)
#: ``hyper_parameters`` (Lightning) / ``args`` (timm train.py) entries naming the arch.
_ARCH_HPARAMS = ("arch", "architecture", "model_name", "model", "backbone")
_STATE_KEYS = ("state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")
_AUTO_PREFIXES = ("module.", "_orig_mod.", "model.")
_STEP_KEYS = ("step", "global_step", "epoch")
_HEAD_NAMES = ("head.fc", "fc", "head", "classifier", "last_linear", "linear", "out", "logits")
_LIST_MAX = 5
# What a weights-only torch.load of untrusted bytes raises for a file it cannot read; no
# code runs in it, so each of these means "not a readable checkpoint".
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    struct.error,
    zipfile.BadZipFile,
    RecursionError,
    UnicodeDecodeError,
)
# What unpickling a trusted file can raise beyond those: its classes are not importable.
_TRUSTED_LOAD_ERRORS = (*_LOAD_ERRORS, ImportError)
# torch's message when weights_only=True meets pickled objects it will not build
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
_SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RecursionError)
_TRUST_HINT = (
    "loading it unpickles Python objects, which can run arbitrary code; if you trust the "
    "file, pass --trust-checkpoint (trust_checkpoint=True), or re-save it as a state dict "
    "(torch.save(model.state_dict(), ...) or safetensors)"
)


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


# --------------------------------------------------------------------------- files


def _existing_file(path: str | Path, what: str = "checkpoint") -> Path:
    p = check_name(path, what)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist; check the path")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file; give a file, not a directory")
    return p


def hf_folder(path: str | Path) -> Path | None:
    """The ``save_for_hf`` folder ``path`` names (the folder, its config.json or one of
    :data:`HF_WEIGHT_FILES` in it), else None."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    if not (folder / HF_CONFIG).is_file():
        return None
    if p.is_dir() or p.name == HF_CONFIG or p.name in HF_WEIGHT_FILES:
        return folder
    return None


def _folder_weights(folder: Path, given: Path) -> Path:
    """The weights file of a ``save_for_hf`` folder: the file given, else timm's first."""
    if given.is_file() and given.name != HF_CONFIG:
        return given
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"folder {folder} has a {HF_CONFIG} but no weights file (looked for "
        f"{', '.join(HF_WEIGHT_FILES)}); save the weights there"
    )


def read_hf_config(folder: str | Path) -> dict:
    """What a ``save_for_hf`` folder's config.json records, parsed by timm
    (``load_model_config_from_path``, local files only): ``arch``, ``num_classes``,
    ``model_kwargs`` (its ``model_args``) and ``pretrained_cfg`` (the transform entries of
    :data:`_DATA_CFG_KEYS`, lists as tuples)."""
    from timm.models._hub import load_model_config_from_path

    folder = Path(folder).expanduser()
    try:
        cfg, arch, model_args = load_model_config_from_path(folder)
    except FileNotFoundError:
        raise InputError(
            f"local-dir {folder}: no {HF_CONFIG} there; give a folder written by timm's save_for_hf"
        ) from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # JSON errors included
        raise InputError(
            f"{folder / HF_CONFIG} is not a timm model config ({type(e).__name__}: "
            f"{e}); it needs 'architecture' and 'pretrained_cfg'"
        ) from None
    if not isinstance(arch, str) or not arch:
        raise InputError(f"{folder / HF_CONFIG}: 'architecture' must be a timm model name")
    meta: dict[str, Any] = {}
    recorded = {"arch": arch, "num_classes": cfg.get("num_classes"), "model_kwargs": model_args}
    _take(meta, recorded, f"{folder / HF_CONFIG}", overwrite=True)
    meta["pretrained_cfg"] = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in cfg.items()
        if k in _DATA_CFG_KEYS and v is not None
    }
    return meta


def check_name(path: str | Path, what: str) -> Path:
    """``path`` as a Path; InputError when a part of it is longer than the file system allows
    (255 bytes on most), which would otherwise fail as an OSError on first use."""
    p = Path(path).expanduser()
    try:
        p.exists()
    except OSError as e:
        longest = max(p.parts, key=lambda part: len(os.fsencode(part)), default=str(p))
        raise InputError(
            f"{what} {allowlist.shown(str(p))}: cannot use this path ({e.strerror}; its longest "
            f"name has {len(os.fsencode(longest))} bytes, most file systems allow 255); "
            "shorten the name"
        ) from None
    return p


def _looks_like_safetensors(path: Path) -> bool:
    if path.name.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _corrupt(path: Path, err: BaseException | str) -> InputError:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    if len(reason) < 12:  # KeyError('101') says nothing alone
        reason = f"{type(err).__name__} {reason}".strip()
    return InputError(
        f"cannot read checkpoint {path}: the file is corrupt, truncated or not a checkpoint "
        f"({reason}); re-copy or re-save it"
    )


def _unsafe_globals(path: Path, err: BaseException) -> list[str]:
    """Names of the Python objects a weights-only load refused (empty: not pickled code)."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except _LOAD_ERRORS:
            pass
    # legacy (non-zip) files: torch's message names the global ("Unsupported global: GLOBAL
    # x.y", or "unsupported GLOBAL x.y whose module x is blocked")
    return re.findall(r"GLOBAL (\S+)", str(err))


def _weights_only_reason(err: BaseException) -> str:
    """The line of torch's weights-only refusal that says what it could not read."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next(
        (
            line
            for line in lines[1:]
            if "WeightsUnpickler" not in line
            and not line.startswith(("Please file", "Check the documentation"))
        ),
        "an object a weights-only load cannot read",
    )


def _restore_tied(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Undo ``safetensors.torch.save_model``'s deduplication: it stores a tied tensor once
    and records each dropped name as metadata ``dropped -> kept``. Adds the dropped names
    to ``tensors`` (the same tensor object) and returns the remaining metadata."""
    rest = {}
    for k, v in meta.items():
        if k not in tensors and isinstance(v, str) and v in tensors:
            tensors[k] = tensors[v]
        else:
            rest[k] = v
    return rest


def _torch_load_safe(path: Path, *, mmap: bool = False) -> Any:
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    if mmap and zipfile.is_zipfile(path):
        kwargs["mmap"] = True
    # timm train checkpoints store argparse.Namespace under 'args' (timm allowlists it too)
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(str(path), **kwargs)


def _read_object(path: Path, *, trust: bool, mmap: bool = False) -> tuple[Any, dict, str]:
    """Return (object, safetensors metadata, format) read from ``path``; applies the gate."""
    if _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except _SAFETENSORS_ERRORS as e:
            raise _corrupt(path, e) from None
        return tensors, _restore_tied(tensors, meta), "safetensors"
    if _is_torchscript(path):
        if not trust:
            raise InputError(f"refusing TorchScript file {path}: {_TRUST_HINT}")
        try:
            return torch.jit.load(str(path), map_location="cpu"), {}, "torchscript"
        except _TRUSTED_LOAD_ERRORS as e:
            raise _corrupt(path, e) from None
    try:
        return _torch_load_safe(path, mmap=mmap), {}, "torch"
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        refused = names or str(e).startswith(_WEIGHTS_ONLY_REFUSAL)
        if not refused:
            raise _corrupt(path, e) from None
        if not trust:
            what = (
                ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                if names
                else _weights_only_reason(e)
            )
            raise InputError(
                f"refusing checkpoint {path}: it holds pickled Python objects "
                f"({allowlist.shown(what)}); {_TRUST_HINT}"
            ) from None
    except _LOAD_ERRORS as e:
        raise _corrupt(path, e) from None
    # only reached when the file holds pickled code and the user trusts it
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), {}, "pickled"
    except _TRUSTED_LOAD_ERRORS as e:
        raise _corrupt(path, e) from None


# --------------------------------------------------------------------------- state dicts


def _parse_step(value: Any) -> Any:
    """A recorded step/epoch as an int (strings of digits too); fractional epochs stay float."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,19}", value.strip()):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{0,19}\.\d{1,19}", value.strip()):
        value = float(value)  # e.g. epoch "10.0000"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _parse_kwargs(value: Any, where: str) -> dict:
    """Recorded constructor arguments: a dict, or a JSON object in a string."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nesting too deep
        parsed = None
    if not isinstance(parsed, dict):
        raise InputError(
            f"{where}: model_kwargs {allowlist.shown(value)} is not a JSON object; "
            "re-save the metadata or pass --model-kwargs"
        )
    return parsed


def _take(meta: dict, src: Mapping, where: str, *, overwrite: bool) -> None:
    """Copy what ``src`` records into ``meta``, every value checked (:mod:`allowlist`).

    The one way a checkpoint's metadata enters infoprobe: every form (safetensors metadata,
    a torch dict's top level, timm ``args``, Lightning ``hyper_parameters``) goes through it.
    """

    def put(key: str, value: Any) -> None:
        if overwrite or key not in meta:
            meta[key] = value

    if "arch" in src:
        put("arch", allowlist.recorded_arch(src["arch"], where))
    kwargs = (
        _parse_kwargs(src["model_kwargs"], f"{where} model_kwargs")
        if src.get("model_kwargs")
        else {}
    )
    for key in ("num_classes", "in_chans"):
        # timm's save_for_hf also records them among the model arguments: they must agree
        values = {
            allowlist.recorded_count(key, v.item() if isinstance(v, Tensor) else v, where)
            for v in (src.get(key), kwargs.pop(key, None))
            if v is not None
        }
        if len(values) > 1:
            raise InputError(
                f"{where}: records {key} twice, as {sorted(values)}; pass --{key.replace('_', '-')}"
            )
        if values:
            put(key, values.pop())
    if kwargs:
        put("model_kwargs", kwargs)
    for key in _STEP_KEYS:
        if isinstance(src.get(key), (str, int, float, Tensor)):
            put(key, _parse_step(src[key]))


def _record_meta(obj: Any, st_meta: dict, path: Path) -> dict:
    """Architecture, sizes, constructor arguments and step a checkpoint records.

    Sources, first wins: safetensors metadata (only :data:`CHECKPOINT_META_KEYS`), a torch
    dict's top level, then timm's train ``args`` (Namespace) and Lightning's
    ``hyper_parameters`` (dict) for what the first two leave unset.
    """
    meta: dict[str, Any] = {}
    known = {k: v for k, v in st_meta.items() if k in CHECKPOINT_META_KEYS}
    _take(meta, known, f"checkpoint {path} metadata", overwrite=True)
    if isinstance(obj, dict):
        top = {k: obj[k] for k in ("arch", "num_classes", "in_chans", *_STEP_KEYS) if k in obj}
        _take(meta, top, f"checkpoint {path}", overwrite=True)
        for entry in ("args", "hyper_parameters"):
            holder = obj.get(entry)
            src = vars(holder) if isinstance(holder, argparse.Namespace) else holder
            if isinstance(src, dict):
                taken = {k: src[k] for k in ("num_classes", "in_chans", "model_kwargs") if k in src}
                # 'model' etc. may name anything: only a timm name counts as the arch
                named = next((src[k] for k in _ARCH_HPARAMS if _is_timm_name(src.get(k))), None)
                if named:
                    taken["arch"] = named
                _take(meta, taken, f"checkpoint {path} {entry}", overwrite=False)
    return meta


def _is_timm_name(value: Any) -> bool:
    """Whether ``value`` is a timm architecture name (only these are taken from
    hyper-parameters, whose 'model' entry may name anything)."""
    if not isinstance(value, str) or not value or _is_custom(value) or ":" in value:
        return False
    import timm

    return timm.is_model(value)


def _select_state(obj: dict, path: Path, ema: bool) -> tuple[Any, str | None]:
    keys = _EMA_KEYS if ema else _STATE_KEYS
    for k in keys:
        if obj.get(k) is not None:
            return obj[k], k
    if ema:
        raise InputError(
            f"checkpoint {path} has no EMA weights (no {' or '.join(_EMA_KEYS)} entry; "
            f"top-level keys: {_short(list(obj))}); drop --ema"
        )
    tensors = sum(isinstance(v, Tensor) for v in obj.values())
    if obj and tensors >= max(1, len(obj) // 2):
        return obj, None  # a bare state dict
    raise InputError(
        f"checkpoint {path} holds no state dict (top-level keys: {_short(list(obj))}); "
        "save model.state_dict(), or a dict with a 'state_dict' or 'model' entry"
    )


def clean_keys(state_dict: dict[str, Tensor], strip_prefix: str | None = None) -> dict:
    """Remove wrapper prefixes from state-dict keys.

    ``strip_prefix=None``: timm's ``clean_state_dict`` (``module.``/``_orig_mod.`` per key),
    then any of ``module.``, ``_orig_mod.``, ``model.`` that *every* key carries.
    ``strip_prefix="p."``: keep only the keys under ``p.``, without it.
    ``strip_prefix=""``: keys as they are.
    """
    from timm.models._helpers import clean_state_dict

    if strip_prefix == "":
        return dict(state_dict)
    if strip_prefix is not None:
        return {
            k[len(strip_prefix) :]: v for k, v in state_dict.items() if k.startswith(strip_prefix)
        }
    sd = clean_state_dict(dict(state_dict))
    changed = True
    while changed and sd:
        changed = False
        for p in _AUTO_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = clean_state_dict({k[len(p) :]: v for k, v in sd.items()})
                changed = True
    return sd


def _checkpoint_file(path: str | Path) -> tuple[Path, dict]:
    """The file to read for ``path`` and what a ``save_for_hf`` folder's config records
    (empty for a plain file)."""
    p = check_name(path, "checkpoint")
    folder = hf_folder(p) if p.exists() else None
    if folder is None:
        return _existing_file(p), {}
    return _folder_weights(folder, p), read_hf_config(folder)


def _check_finite(sd: dict[str, Tensor], path: Path) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(
            f"checkpoint {path} has NaN/Inf weights in {len(bad)} tensors ({_short(bad)}); "
            "the run that wrote it diverged: use an earlier checkpoint"
        )


def _read(
    path: str | Path, *, ema: bool, strip_prefix: str | None, trust: bool
) -> tuple[dict[str, Tensor], dict, nn.Module | None]:
    p, config = _checkpoint_file(path)
    obj, st_meta, fmt = _read_object(p, trust=trust)
    meta = {**_record_meta(obj, st_meta, p), **config}
    meta["format"] = fmt
    meta["source_key"] = None
    module = None
    if isinstance(obj, dict) and fmt != "safetensors":
        state, meta["source_key"] = _select_state(obj, p, ema)
    elif isinstance(obj, dict):
        if ema:
            raise InputError(f"safetensors file {p} holds one set of weights, no EMA; drop --ema")
        state = obj
    else:
        state = obj
    if isinstance(state, nn.Module):  # a trusted pickled module or TorchScript
        module, state = state, state.state_dict()
    if not isinstance(state, dict):
        raise InputError(
            f"checkpoint {p} holds a {type(state).__name__}, not a state dict or a model; "
            "save model.state_dict()"
        )
    sd = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    cleaned = clean_keys(sd, strip_prefix)
    if not cleaned:
        hint = f" under --strip-prefix {strip_prefix!r}" if strip_prefix else ""
        raise InputError(f"checkpoint {p} holds no weight tensors{hint} (keys: {_short(list(sd))})")
    _check_finite(cleaned, p)
    return cleaned, meta, module


def read_state_dict(
    path: str | Path,
    *,
    ema: bool = False,
    strip_prefix: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint's weights and recorded metadata.

    Returns ``(state_dict, meta)``: tensors on cpu in their stored dtype with wrapper
    prefixes removed (see :func:`clean_keys`), and ``meta`` as in :class:`LoadedModel`.
    Raises :class:`InputError` for missing/corrupt files, refused pickles, NaN/Inf weights.
    """
    sd, meta, _ = _read(path, ema=ema, strip_prefix=strip_prefix, trust=trust_checkpoint)
    return sd, meta


# --------------------------------------------------------------------------- architectures


def _is_custom(arch: str) -> bool:
    left, sep, right = arch.rpartition(":")
    return bool(sep) and bool(right) and left not in ("hf-hub", "hf_hub", "timm", "local-dir")


def _stdlib(target: str) -> bool:
    top = target.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _model_file(target: str, base: Path | None, label: str) -> Path:
    """The file of ``file.py:factory``: as typed (``base`` None), or a recorded relative
    path inside ``base``, the checkpoint's folder (never the working directory)."""
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
    return file


def _import_factory(arch: str, base: Path | None = None):
    """The factory of ``file.py:name`` or ``package.module:name``.

    ``base`` None: the user typed ``arch``; a relative ``file.py`` is found from the working
    directory. Else the checkpoint in folder ``base`` recorded it; the file is looked for in
    ``base`` only. A module of Python's standard library is never a factory's home (its
    callables run commands, not build models)."""
    label = f"--arch {arch}" if base is None else f"recorded arch {allowlist.shown(arch)}"
    target, _, name = arch.rpartition(":")
    if target.endswith(".py"):
        file = _model_file(target, base, label)
        # a stable module name per file so repeated builds reuse one import
        mod_name = "infoprobe_user_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # the model file's own code may raise anything
                raise InputError(f"{label}: importing {file} failed: {e!r}") from None
            sys.modules[mod_name] = module
    else:
        if _stdlib(target):
            raise InputError(
                f"{label}: '{target}' is a Python standard-library module, not a "
                "model factory; give a timm name or your own file.py:factory"
            )
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise InputError(
                f"{label}: cannot import module '{target}' ({e}); install it or use "
                "path/to/file.py:factory"
            ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise InputError(
            f"{label}: '{target}' has no callable '{name}'; callables there: {_short(found)}"
        )
    return factory


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
) -> nn.Module:
    """Build an untrained model: a timm name (``pretrained=False``, nothing is downloaded) or
    ``path/to/file.py:factory`` / ``package.module:factory``, called with ``num_classes``,
    ``in_chans`` (when given) and ``model_kwargs``. Names in ``inferred`` (values guessed from
    a checkpoint, not given by the user) are dropped for factories that do not take them.
    ``base``: the folder of the checkpoint that recorded a custom ``arch`` (its ``file.py`` is
    looked for there only); None when the user gave ``arch``. Arguments that make timm open a
    file (:data:`~infoprobe.allowlist.FORBIDDEN_KWARGS`) are refused."""
    label = f"--arch {arch}" if base is None else f"recorded arch {allowlist.shown(arch)}"
    kwargs = dict(model_kwargs or {})
    allowlist.check_forbidden(kwargs, label)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if in_chans is not None:
        kwargs["in_chans"] = int(in_chans)
    if _is_custom(arch):
        factory = _import_factory(arch, base)
        for name in inferred:
            if name in kwargs and not _accepts(factory, name):
                del kwargs[name]
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
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as e:
        raise InputError(
            f"{label}: timm rejected the model options {sorted(kwargs)} "
            f"({allowlist.shown(str(e))}); fix --model-kwargs"
        ) from None


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
    if not name or _is_custom(name) or not timm.is_model(name):
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


def _infer_in_chans(state_dict: dict[str, Tensor], arch: str | None) -> int | None:
    """Input channels from timm's recorded first conv, else the first conv-shaped weight."""
    first = _timm_cfg_value(arch, "first_conv")
    if isinstance(first, str):
        w = state_dict.get(f"{first}.weight")
    else:
        w = next((v for k, v in state_dict.items() if k.endswith("weight") and v.ndim >= 3), None)
    return int(w.shape[1]) if w is not None and w.ndim >= 3 else None


# --------------------------------------------------------------------------- strict loading


def _short(items: list, n: int = _LIST_MAX) -> str:
    return "[" + short_list(items, n) + "]"


def short_list(items: list, n: int = _LIST_MAX) -> str:
    """The first ``n`` items, comma-separated, then ``+K more``: for one-line errors."""
    items = [str(i) for i in items]
    more = f", +{len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


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


def _load_strict(
    model: nn.Module, sd: dict[str, Tensor], path: Path, arch: str, num_classes: int | None
) -> None:
    diff = compare_states(sd, model.state_dict())
    missing, unexpected, mismatched = diff.only_b, diff.only_a, diff.mismatched
    if diff:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}) {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}) {_short(unexpected)}")
        if mismatched:
            shown = [f"{k} checkpoint {c} vs model {m}" for k, c, m in mismatched]
            parts.append(f"shape mismatches ({len(mismatched)}) {_short(shown, 3)}")
        cause = _pos_embed_cause(model, mismatched) or _likely_cause(
            missing, unexpected, mismatched, arch, num_classes
        )
        raise InputError(
            f"checkpoint {path} does not fit model '{arch}': "
            f"{'; '.join(parts)}. Likely cause: {cause}"
        )
    model.load_state_dict(sd, strict=False)


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
) -> LoadedModel:
    """Load a checkpoint into its architecture, strictly; eval mode, cpu, float32.

    ``path`` is a file or a ``save_for_hf`` folder. ``arch`` defaults to the one the
    checkpoint records (a folder's config.json, safetensors metadata, timm's 'arch', a timm
    name among Lightning's ``hyper_parameters``); ``local-dir:FOLDER`` takes it, with its
    arguments and data config, from that folder's config.json, as a recorded one. A recorded
    ``file.py:factory`` / ``module:factory`` imports code, so it needs ``trust_checkpoint``,
    and a recorded ``file.py`` is looked for in the recording folder only. Recorded
    constructor arguments pass :func:`~infoprobe.allowlist.recorded_model_kwargs` (all of
    them, unchecked, only for a trusted custom factory); ``model_kwargs`` (the user's) win
    over them, and their ``num_classes`` / ``in_chans`` count as given directly.
    ``num_classes`` and ``in_chans`` default to the recorded values,
    then to the head / first-conv weight shapes. A trusted pickled module or TorchScript is
    used as it is unless ``arch`` is given, then only its weights are loaded into ``arch``.
    """
    p = Path(path).expanduser()
    sd, meta, module = _read(p, ema=ema, strip_prefix=strip_prefix, trust=trust_checkpoint)
    local = None
    if arch is not None and arch.startswith("local-dir:"):
        # as in timm: the folder's config.json gives the architecture, its arguments and
        # its data config (all recorded, so untrusted); the weights are the checkpoint's
        local = Path(arch.removeprefix("local-dir:")).expanduser()
        meta = {**meta, **read_hf_config(local)}
        arch = None
    num_classes, in_chans, typed_kwargs = _typed_sizes(num_classes, in_chans, model_kwargs)
    if module is not None and arch is None and local is None:
        model = module.float().eval()
        n = num_classes or meta.get("num_classes") or infer_num_classes(sd) or 0
        return LoadedModel(
            model=model, arch=meta.get("arch"), num_classes=int(n), path=p, meta=meta
        )
    # a recorded file.py is looked for beside what recorded it, only
    recorder = local or (p if p.is_dir() else p.parent)
    base = None if arch else recorder
    arch = arch or _recorded_arch(meta, p, trust_checkpoint)
    guessed = tuple(
        k
        for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
        if v is None and k not in meta
    )
    num_classes = num_classes or meta.get("num_classes") or infer_num_classes(sd, arch)
    in_chans = in_chans or meta.get("in_chans") or _infer_in_chans(sd, arch)
    # the user's arguments replace recorded ones, which are then not checked
    recorded = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k not in typed_kwargs}
    if not (trust_checkpoint and _is_custom(arch)):  # a trusted custom factory takes them all
        recorded = allowlist.recorded_model_kwargs(recorded, f"checkpoint {p} model_kwargs")
    kwargs = {**recorded, **typed_kwargs}
    model = build_model(
        arch,
        num_classes=num_classes,
        in_chans=in_chans,
        model_kwargs=kwargs,
        inferred=guessed,
        base=base,
    )
    _load_strict(model, sd, p, arch, num_classes)
    model = model.float().eval()
    if meta.get("pretrained_cfg"):  # the folder's data config drives the eval transform
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **meta["pretrained_cfg"]}
    if num_classes is None:
        num_classes = infer_num_classes(model.state_dict()) or 0
    return LoadedModel(model=model, arch=arch, num_classes=int(num_classes), path=p, meta=meta)


def _typed_sizes(
    num_classes: int | None, in_chans: int | None, model_kwargs: dict[str, Any] | None
) -> tuple[int | None, int | None, dict]:
    """``num_classes`` / ``in_chans`` given in ``model_kwargs`` count as given directly (so a
    recorded value never overrides them); the same name given twice must agree."""
    kwargs = dict(model_kwargs or {})
    sizes = {"num_classes": num_classes, "in_chans": in_chans}
    for key in sizes:
        if key not in kwargs:
            continue
        value = kwargs.pop(key)
        flag = f"--{key.replace('_', '-')}"
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(
                f"--model-kwargs {key}={value!r}: give a positive integer, or use {flag}"
            )
        if sizes[key] is not None and sizes[key] != value:
            raise InputError(
                f"--model-kwargs {key}={value} conflicts with {flag} {sizes[key]}; give one of them"
            )
        sizes[key] = value
    return sizes["num_classes"], sizes["in_chans"], kwargs


def _recorded_arch(meta: dict, path: Path, trust: bool) -> str:
    """The architecture the checkpoint records; a custom one (code) only when trusted."""
    recorded = meta.get("arch")
    if not recorded:
        raise InputError(
            f"checkpoint {path} does not record its architecture; pass --arch (a timm model "
            "name or path/to/file.py:factory)"
        )
    if _is_custom(recorded) and not trust:
        raise InputError(
            f"checkpoint {path} records a custom architecture ({allowlist.shown(recorded)}), "
            "which would import and run code named by the file; infoprobe runs it only with "
            "--trust-checkpoint, for a file whose source you trust. Otherwise pass --arch with "
            "a timm name or a factory of your own"
        )
    return recorded


# --------------------------------------------------------------------------- series


def checkpoint_step(path: str | Path, *, trust_checkpoint: bool = False) -> int | None:
    """The 'step', 'global_step' or 'epoch' a checkpoint records (in that order), else None."""
    p, _ = _checkpoint_file(path)
    if _looks_like_safetensors(p):  # the header alone: no tensor is read
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                obj, st_meta = {}, dict(f.metadata() or {})
        except _SAFETENSORS_ERRORS as e:
            raise _corrupt(p, e) from None
    else:
        obj, st_meta, _ = _read_object(p, trust=trust_checkpoint, mmap=True)
    meta = _record_meta(obj, st_meta, p)
    for k in _STEP_KEYS:
        if isinstance(meta.get(k), int):
            return meta[k]
    return None


def _natural_key(path: Path) -> tuple:
    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts if s)


def checkpoint_files(paths: list[str | Path]) -> list[Path]:
    """Checkpoints as given: a ``save_for_hf`` folder stays one checkpoint; another folder is
    expanded to the checkpoint files and ``save_for_hf`` folders directly inside it."""
    files: list[Path] = []
    for raw in paths:
        p = check_name(raw, "checkpoint")
        if p.is_dir() and hf_folder(p) is not None:
            files.append(p)  # one save_for_hf checkpoint
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if (f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES))
                or (f.is_dir() and hf_folder(f) is not None)
            )
            if not found:
                raise InputError(
                    f"directory {p} holds no checkpoint files "
                    f"({', '.join(CHECKPOINT_SUFFIXES)}) or save_for_hf folders"
                )
            files.extend(found)
        else:
            files.append(_existing_file(p))
    return files


#: File names (without suffix) that training code writes as a copy of another checkpoint:
#: timm's last / model_best, Lightning's last (last-v1 on a rerun), best.
_ALIASES = re.compile(r"(last|best|model_best)(-v\d+)?", re.I)


@dataclass(frozen=True)
class SeriesPlan:
    """The checkpoints of one run to measure, and why others are left out.

    ``steps``: ``(path, step)`` in step order; ``skipped``: ``(path, reason)`` of aliases
    that duplicate a step already present; ``note``: why the steps are positions, if so;
    ``unreadable``: ``(path, error)`` of files whose step could not be read (corrupt, or
    pickled without ``trust_checkpoint``), left out of the order.
    """

    steps: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]]
    note: str = ""
    unreadable: list[tuple[Path, InfoprobeError]] = field(default_factory=list)


def checkpoint_stem(path: str | Path) -> str:
    """The file name without its checkpoint suffix: ``ls0.1.safetensors`` -> ``ls0.1``,
    ``last.pth.tar`` -> ``last``."""
    name = Path(path).name
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _alias_of(alias: Path, step: int | None, others: list[tuple[Path, int | None]]) -> Path | None:
    """The checkpoint ``alias`` duplicates: the one recording the same step, else the one
    with the same bytes (a copy saved without a step)."""
    for path, other in others:
        if step is not None and other == step:
            return path
    for path, _ in others:
        if (
            alias.is_file()
            and path.is_file()
            and path.stat().st_size == alias.stat().st_size
            and filecmp.cmp(alias, path, shallow=False)
        ):
            return path
    return None


def series_plan(paths: list[str | Path], *, trust_checkpoint: bool = False) -> SeriesPlan:
    """Checkpoints of one run with their training step, ordered by it.

    Directories are expanded to the checkpoint files directly inside them. Aliases
    (``last``, ``model_best``, ``best`` and Lightning's ``last-vN``) that duplicate another
    checkpoint, by recorded step or by their bytes, are skipped. When every file records a
    step (:func:`checkpoint_step`) that is the step; otherwise, when every file name holds a
    number, it is the last number in the name (``ep2`` before ``ep10``); otherwise every step
    is the position in natural name order, aliases last. One series never mixes the sources.
    """
    recorded: dict[Path, int | None] = {}
    unreadable = []
    for f in checkpoint_files(paths):
        try:
            recorded[f] = checkpoint_step(f, trust_checkpoint=trust_checkpoint)
        except InfoprobeError as e:  # one bad file does not stop the series (track)
            unreadable.append((f, e))
    files = list(recorded)
    plain = [f for f in files if not _ALIASES.fullmatch(checkpoint_stem(f))]
    kept, skipped = list(plain), []
    for f in files:
        if f in plain:
            continue
        twin = _alias_of(f, recorded[f], [(p, recorded[p]) for p in plain])
        if twin is None:
            kept.append(f)
        else:
            step = recorded[twin] if recorded[twin] is not None else name_number(twin)
            what = f"step {step} ({twin.name})" if step is not None else twin.name
            skipped.append((f, f"an alias of {what}"))
    if kept and all(recorded[f] is not None for f in kept):
        order = sorted(kept, key=lambda f: (recorded[f], _natural_key(f)))
        return SeriesPlan([(f, recorded[f]) for f in order], skipped, "", unreadable)
    numbers = {f: name_number(f) for f in kept}
    if all(n is not None for n in numbers.values()):
        order = sorted(kept, key=lambda f: (numbers[f], _natural_key(f)))
        return SeriesPlan([(f, numbers[f]) for f in order], skipped, "", unreadable)
    order = sorted(kept, key=lambda f: (f not in plain, _natural_key(f)))
    unnumbered = [f.name for f in order if numbers[f] is None]
    note = (
        f"steps are positions: {short_list(unnumbered)} record no step and carry no number "
        "in the file name"
    )
    return SeriesPlan([(f, i) for i, f in enumerate(order)], skipped, note, unreadable)


def name_number(path: Path) -> int | None:
    """The last number in a file name (``ep10.pt`` -> 10), None without one."""
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def series_steps(
    paths: list[str | Path], *, trust_checkpoint: bool = False
) -> list[tuple[Path, int]]:
    """``(path, step)`` of :func:`series_plan`, aliases of a step left out; the error of
    the first file whose step cannot be read."""
    plan = series_plan(paths, trust_checkpoint=trust_checkpoint)
    if plan.unreadable:
        raise plan.unreadable[0][1]
    return plan.steps


def series_order(paths: list[str | Path], *, trust_checkpoint: bool = False) -> list[Path]:
    """The checkpoints of :func:`series_steps`, without their steps."""
    return [f for f, _ in series_steps(paths, trust_checkpoint=trust_checkpoint)]
