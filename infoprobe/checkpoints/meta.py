"""What a checkpoint records about itself: architecture, sizes, arguments and step.

What a checkpoint records is untrusted: the architecture name, class and channel counts and
constructor arguments all pass :mod:`infoprobe.allowlist`, and every checkpoint form
(safetensors metadata, a torch dict's top level, timm's ``args``, Lightning's
``hyper_parameters``, a ``save_for_hf`` folder's config.json) goes through :func:`record_meta`
or :func:`read_hf_config`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from infoprobe import allowlist
from infoprobe.checkpoints.build import is_custom_arch
from infoprobe.checkpoints.files import (
    HF_CONFIG,
    check_name,
    existing_file,
    folder_weights,
    hf_folder,
)
from infoprobe.errors import InputError

#: safetensors metadata keys that infoprobe reads (all values are strings).
CHECKPOINT_META_KEYS = ("arch", "num_classes", "in_chans", "model_kwargs", "step", "epoch")


#: Largest config.json read (timm's are a few KiB; 21k label names fit in a few MiB).
MAX_CONFIG_BYTES = 64 << 20


#: ``hyper_parameters`` (Lightning) / ``args`` (timm train.py) entries naming the arch.
_ARCH_HPARAMS = ("arch", "architecture", "model_name", "model", "backbone")


STEP_KEYS = ("step", "global_step", "epoch")


def read_hf_config(folder: str | Path) -> dict:
    """What a ``save_for_hf`` folder's config.json records, parsed by timm
    (``load_model_config_from_path``, local files only): ``arch``, ``num_classes``,
    ``model_kwargs`` (its ``model_args``) and ``pretrained_cfg`` (the transform entries of
    :data:`~infoprobe.allowlist.ALLOWED_DATA_CFG`, checked, lists as tuples)."""
    from timm.models._hub import load_model_config_from_path

    folder = Path(folder).expanduser()
    config = folder / HF_CONFIG
    if config.is_file() and config.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(
            f"{config} has {config.stat().st_size} bytes, over {MAX_CONFIG_BYTES >> 20} MiB: "
            "not a timm model config"
        )
    try:
        cfg, arch, model_args = load_model_config_from_path(folder)
    except FileNotFoundError:
        raise InputError(
            f"local-dir {folder}: no {HF_CONFIG} there; give a folder written by timm's save_for_hf"
        ) from None
    # JSON errors are ValueErrors; RecursionError: nesting too deep for the parser
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
        raise InputError(
            f"{folder / HF_CONFIG} is not a timm model config ({type(e).__name__}: "
            f"{e}); it needs 'architecture' and 'pretrained_cfg'"
        ) from None
    if not isinstance(arch, str) or not arch:
        raise InputError(f"{folder / HF_CONFIG}: 'architecture' must be a timm model name")
    meta: dict[str, Any] = {}
    recorded = {"arch": arch, "num_classes": cfg.get("num_classes"), "model_kwargs": model_args}
    _take(meta, recorded, f"{config}", overwrite=True)
    meta["pretrained_cfg"] = allowlist.recorded_data_cfg(cfg, f"{config}")
    return meta


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
    for key in STEP_KEYS:
        if isinstance(src.get(key), (str, int, float, Tensor)):
            put(key, _parse_step(src[key]))


def record_meta(obj: Any, st_meta: dict, path: Path) -> dict:
    """Architecture, sizes, constructor arguments and step a checkpoint records.

    Sources, first wins: safetensors metadata (only :data:`CHECKPOINT_META_KEYS`), a torch
    dict's top level, then timm's train ``args`` (Namespace) and Lightning's
    ``hyper_parameters`` (dict) for what the first two leave unset.
    """
    meta: dict[str, Any] = {}
    known = {k: v for k, v in st_meta.items() if k in CHECKPOINT_META_KEYS}
    _take(meta, known, f"checkpoint {path} metadata", overwrite=True)
    if isinstance(obj, dict):
        top = {k: obj[k] for k in ("arch", "num_classes", "in_chans", *STEP_KEYS) if k in obj}
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
    if not isinstance(value, str) or not value or is_custom_arch(value) or ":" in value:
        return False
    import timm

    return timm.is_model(value)


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The file to read for ``path`` and what a ``save_for_hf`` folder's config records
    (empty for a plain file)."""
    p = check_name(path, "checkpoint")
    folder = hf_folder(p) if p.exists() else None
    if folder is None:
        return existing_file(p), {}
    return folder_weights(folder, p), read_hf_config(folder)
