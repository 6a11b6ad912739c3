"""Bytes to a state dict: the checkpoint formats and the trust gate.

Safetensors files and weights-only torch files are read without running code. Whole pickled
modules and TorchScript archives run code when loaded: they are refused unless the caller
trusts the file, and a weights-only load that fails because the file holds pickled code never
falls back to an unsafe load on its own.
"""

from __future__ import annotations

import argparse
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from infoprobe import allowlist
from infoprobe.checkpoints.meta import record_meta, resolve_checkpoint
from infoprobe.errors import InputError, bracketed
from infoprobe.memory import check_fits

_STATE_KEYS = ("state_dict", "model")


_EMA_KEYS = ("state_dict_ema", "model_ema")


_AUTO_PREFIXES = ("module.", "_orig_mod.", "model.")


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


def _declared_bytes(path: Path) -> int:
    """The bytes reading ``path`` allocates: a zip archive's (torch's format) uncompressed
    members, else the file's size (a sparse file counts at its full size)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return sum(info.file_size for info in z.infolist())
        except (zipfile.BadZipFile, OSError, ValueError):
            pass  # reading it reports the damage
    return path.stat().st_size


def _check_size(path: Path) -> None:
    check_fits(
        _declared_bytes(path),
        f"checkpoint {path}",
        "it is corrupt or not meant for this machine; use one with more memory",
    )


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` holds a well-formed pickle stream (torch's zip format: its
    ``data.pkl``), read without running it: a weights-only load that refuses one refuses
    pickled objects; one that refuses random bytes met no pickle at all."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
                if name is None:
                    return False
                with z.open(name) as f:
                    for _ in pickletools.genops(f):
                        pass
        else:
            with open(path, "rb") as f:
                for _ in pickletools.genops(f):
                    pass
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, struct.error, UnicodeDecodeError):
        return False
    return True


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
    """Return (object, safetensors metadata, format) read from ``path``; applies the gate.
    ``mmap``: map a torch zip file instead of reading it (no size check needed). Only
    ``trust is True`` (``--trust-checkpoint``) ever runs code: any other value is no trust."""
    trust = trust is True  # a truthy non-bool ("false") must never reach the unsafe loads
    if not (mmap and zipfile.is_zipfile(path)):
        _check_size(path)
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
        refused = names or (str(e).startswith(_WEIGHTS_ONLY_REFUSAL) and _is_pickle(path))
        if not refused:  # torch's first line says only that its loader refused
            reason = _weights_only_reason(e) if _WEIGHTS_ONLY_REFUSAL in str(e) else e
            raise _corrupt(path, reason) from None
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


def _select_state(obj: dict, path: Path, ema: bool) -> tuple[Any, str | None]:
    keys = _EMA_KEYS if ema else _STATE_KEYS
    for k in keys:
        if obj.get(k) is not None:
            return obj[k], k
    if ema:
        raise InputError(
            f"checkpoint {path} has no EMA weights (no {' or '.join(_EMA_KEYS)} entry; "
            f"top-level keys: {bracketed(list(obj))}); drop --ema"
        )
    tensors = sum(isinstance(v, Tensor) for v in obj.values())
    if obj and tensors >= max(1, len(obj) // 2):
        return obj, None  # a bare state dict
    raise InputError(
        f"checkpoint {path} holds no state dict (top-level keys: {bracketed(list(obj))}); "
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


def _check_finite(sd: dict[str, Tensor], path: Path) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(
            f"checkpoint {path} has NaN/Inf weights in {len(bad)} tensors ({bracketed(bad)}); "
            "the run that wrote it diverged: use an earlier checkpoint"
        )


def read_checkpoint(
    path: str | Path, *, ema: bool, strip_prefix: str | None, trust: bool
) -> tuple[dict[str, Tensor], dict, nn.Module | None]:
    p, config = resolve_checkpoint(path)
    obj, st_meta, fmt = _read_object(p, trust=trust)
    meta = {**record_meta(obj, st_meta, p), **config}
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
        raise InputError(
            f"checkpoint {p} holds no weight tensors{hint} (keys: {bracketed(list(sd))})"
        )
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
    sd, meta, _ = read_checkpoint(path, ema=ema, strip_prefix=strip_prefix, trust=trust_checkpoint)
    return sd, meta


def recorded_meta(path: str | Path, *, trust_checkpoint: bool = False) -> dict:
    """What a checkpoint records (:func:`~infoprobe.checkpoints.meta.record_meta`), read
    without its tensors where the format allows (a safetensors header)."""
    p, _ = resolve_checkpoint(path)
    if _looks_like_safetensors(p):  # the header alone: no tensor is read
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                obj, st_meta = {}, dict(f.metadata() or {})
        except _SAFETENSORS_ERRORS as e:
            raise _corrupt(p, e) from None
    else:
        obj, st_meta, _ = _read_object(p, trust=trust_checkpoint, mmap=True)
    return record_meta(obj, st_meta, p)
