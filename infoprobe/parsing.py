"""Option values from the command line's text (or the API's values), and the names of the
files derived from them. Pure functions, no torch: :mod:`infoprobe.options` uses them.

Every parser takes the value and the flag it came with, and raises
:class:`~infoprobe.errors.InputError` naming the flag and the bad part.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infoprobe.allowlist import MAX_CLASSES
from infoprobe.errors import InputError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "VALUE_TOL",
    "alphas",
    "checkpoint_stem",
    "features_targets",
    "floats",
    "input_size",
    "layers",
    "model_kwargs",
    "per_class_csv",
    "points",
    "positive_floats",
    "ratios",
    "read_class_map",
    "read_valid_labels",
    "valid_labels",
]

#: file name endings treated as checkpoints when a directory is expanded.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pth.tar", ".bin", ".ckpt")
#: Two point values closer than this are the same point (duplicates, resume matching).
#: Values read back from a CSV written with full precision match exactly; the tolerance
#: absorbs CSVs written with 6 significant digits (1/3 -> 0.333333).
VALUE_TOL = 1e-6
#: Largest text file read as a class map or label list (a list of 2**20 names fits).
_MAX_TEXT_BYTES = 64 << 20
#: Largest image side and channel count of --input-size.
_MAX_SIDE = 8192
_MAX_CHANS = 4096
_SPLIT = re.compile(r"[,\s]+")


def _items(value: Any, flag: str, what: str) -> list:
    """``"a,b c"`` -> ``["a", "b", "c"]``; a sequence as it is."""
    if isinstance(value, str):
        items = [s for s in _SPLIT.split(value.strip()) if s]
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise InputError(f"{flag} is empty: give {what} separated by spaces or commas")
    return items


def _finite(item: Any, flag: str, what: str) -> float:
    if isinstance(item, bool):
        raise InputError(f"{flag}: {item!r} is not a number; give {what}")
    try:
        number = float(item)
    except (TypeError, ValueError):
        raise InputError(f"{flag}: {item!r} is not a number; give {what}") from None
    if not math.isfinite(number):
        raise InputError(f"{flag}: {item!r} is not finite; give {what}")
    return number


def floats(value: Any, flag: str) -> tuple[float, ...]:
    """Finite numbers, one per channel: ``"0.5 0.5 0.5"`` or ``"0.5,0.5,0.5"``."""
    return tuple(
        _finite(v, flag, "numbers, one per channel") for v in _items(value, flag, "numbers")
    )


def positive_floats(value: Any, flag: str) -> tuple[float, ...]:
    """:func:`floats`, each > 0 (a standard deviation divides)."""
    values = floats(value, flag)
    if min(values) <= 0:
        raise InputError(f"{flag}: {min(values):g} is not positive; give values > 0")
    return values


def input_size(value: Any, flag: str) -> int | tuple[int, ...]:
    """``N`` or ``C H W`` (timm's ``--input-size``), each a positive integer within bounds."""
    items = _items(value, flag, "N or C H W")
    sizes = []
    for item in items:
        number = _finite(item, flag, "N or C H W integers")
        if not number.is_integer():
            raise InputError(f"{flag}: {item!r} is not an integer; give N or C H W")
        sizes.append(int(number))
    if len(sizes) not in (1, 3) or min(sizes) < 1:
        raise InputError(f"{flag} {value!r}: give N or C H W with positive integers")
    sides = sizes if len(sizes) == 1 else sizes[1:]
    if max(sides) > _MAX_SIDE or (len(sizes) == 3 and sizes[0] > _MAX_CHANS):
        raise InputError(
            f"{flag} {value!r}: image sides are at most {_MAX_SIDE} and channels at most "
            f"{_MAX_CHANS}"
        )
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def model_kwargs(value: Any, flag: str) -> dict[str, Any]:
    """``["depth=3", "act='relu'"]`` (or a dict) -> ``{"depth": 3, "act": "relu"}``: values
    parsed as JSON when they are JSON, else kept as strings."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and k for k in value):
            raise InputError(f"{flag}: every key must be a non-empty string")
        return dict(value)
    if not isinstance(value, (str, Iterable)):
        raise InputError(f"{flag}: give key=value items, not {type(value).__name__}")
    out: dict[str, Any] = {}
    for item in [value] if isinstance(value, str) else list(value):
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {item!r}: expected key=value")
        try:
            out[key.strip()] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            out[key.strip()] = raw.strip("'\"")
    return out


def _index(item: Any, flag: str, where: str) -> int:
    try:
        number = int(str(item).strip()) if not isinstance(item, int) else item
    except ValueError:
        raise InputError(f"{flag}{where}: {str(item)[:40]!r} is not a class index") from None
    if isinstance(number, bool) or not 0 <= number < MAX_CLASSES:
        raise InputError(f"{flag}{where}: class index {number} is outside [0, {MAX_CLASSES})")
    return number


def valid_labels(value: Any, flag: str) -> str | tuple[int, ...]:
    """A label-list file (kept as its path: an input of the run) or model class indices."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    indices = tuple(_index(v, flag, "") for v in _items(value, flag, "class indices"))
    if len(set(indices)) != len(indices):
        raise InputError(f"{flag} lists a class index twice; list each once")
    return indices


def _text_lines(path: str | os.PathLike, flag: str) -> list[str]:
    """The lines of a small UTF-8 text file; InputError for a missing, huge or binary one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{flag} {p} does not exist or is not a file; check the path")
    if p.stat().st_size > _MAX_TEXT_BYTES:
        raise InputError(f"{flag} {p} is over {_MAX_TEXT_BYTES >> 20} MiB: not a text list")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{flag} {p} is not UTF-8 text: give one entry per line") from None
    if "\x00" in text:
        raise InputError(f"{flag} {p} is binary, not text: give one entry per line")
    return text.splitlines()


def read_valid_labels(path: str | os.PathLike, flag: str = "--valid-labels") -> tuple[int, ...]:
    """Model class indices from a text file, one per line (blank lines ignored), as timm's
    validate.py reads ``--valid-labels``; each within bounds, none twice."""
    lines = [line.strip() for line in _text_lines(path, flag)]
    indices = tuple(_index(v, flag, f" {path}") for v in lines if v)
    if not indices:
        raise InputError(f"{flag} {path} lists no class index")
    if len(set(indices)) != len(indices):
        raise InputError(f"{flag} {path} lists a class index twice; list each once")
    return indices


def read_class_map(path: str | os.PathLike, flag: str = "--class-map") -> dict[str, int]:
    """timm's class-map text file: line i names the folder of model class i. An empty map,
    a blank line and a name given twice are refused (timm would let the later line win)."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".txt":
        raise InputError(f"{flag} {p}: give a .txt file with one class folder name per line")
    names = [line.strip() for line in _text_lines(p, flag)]
    while names and not names[-1]:
        names.pop()  # a final newline is not a class
    if not names:
        raise InputError(f"{flag} {p} names no class: give one folder name per line")
    if "" in names:
        raise InputError(f"{flag} {p}: line {names.index('') + 1} is blank; name a folder")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(
                f"{flag} {p}: {name[:60]!r} is on lines {seen[name] + 1} and {i + 1}; "
                "name each class folder once"
            )
        seen[name] = i
    return seen


def points(value: Any, flag: str, *, what: str, closed: bool) -> tuple[float, ...]:
    """Sweep points from ``"0,0.25,1"`` / ``"0 0.25 1"`` or numbers, ascending: each finite,
    in [0, 1] (``closed``) or [0, 1), none within :data:`VALUE_TOL` of another."""
    values = sorted(
        _finite(v, flag, f"{what}s like 0 0.5") for v in _items(value, flag, what + "s")
    )
    top = "1]" if closed else "1)"
    for v in values:
        if not (0.0 <= v <= 1.0) or (v == 1.0 and not closed):
            raise InputError(f"{flag}: {what} {v:g} is outside [0, {top}; use values in [0, {top}")
    for low, high in zip(values, values[1:], strict=False):
        if high - low <= VALUE_TOL:
            raise InputError(f"{flag}: {what} {high:g} is given twice; list each {what} once")
    return tuple(values)


def alphas(value: Any, flag: str) -> tuple[float, ...]:
    return points(value, flag, what="alpha", closed=True)


def ratios(value: Any, flag: str) -> tuple[float, ...]:
    return points(value, flag, what="ratio", closed=False)


def per_class_csv(csv: str) -> str:
    """Where ``--per-class`` rows go beside ``--csv FILE``: ``FILE`` with ``.per_class``
    before its suffix (``runs.csv`` -> ``runs.per_class.csv``)."""
    p = Path(csv)
    return str(p.with_name(f"{p.stem}.per_class{p.suffix or '.csv'}"))


def checkpoint_stem(path: str | os.PathLike) -> str:
    """The file name without its checkpoint suffix: ``ls0.1.safetensors`` -> ``ls0.1``,
    ``last.pth.tar`` -> ``last``."""
    name = Path(path).name
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def features_targets(template: str | None, checkpoints: Sequence[str]) -> dict[str, str]:
    """Each checkpoint's ``--save-features`` file: ``{name}`` is its file stem. InputError
    when several checkpoints lack the placeholder or two would write one file."""
    if template is None:
        return {}
    if len(checkpoints) > 1 and "{name}" not in template:
        raise InputError(
            f"--save-features {template}: several checkpoints need a {{name}} placeholder, "
            "e.g. feats-{name}.safetensors"
        )
    targets = {c: template.replace("{name}", checkpoint_stem(c)) for c in checkpoints}
    seen: dict[str, str] = {}
    for checkpoint, target in targets.items():
        if target in seen:
            raise InputError(
                f"--save-features {template}: {seen[target]} and {checkpoint} would both write "
                f"{target}; give checkpoints with distinct file names"
            )
        seen[target] = checkpoint
    return targets


#: A module name of ``--layers``: dotted Python identifiers or indices (``layer1``,
#: ``stages.0``, ``blocks.11.mlp``).
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_LAYER_INDEX = re.compile(r"-?[0-9]+")


def layers(value: Any, flag: str) -> str | tuple[str | int, ...] | None:
    """``--layers``: ``stages`` or ``all`` as they are; otherwise layer names and timm tap
    indices (``"layer1,layer3"``, ``"0 -1"``, or a sequence), indices as ints, none twice.
    ``True`` is ``stages`` and ``False`` (like None) no layers."""
    if value is None or value is False:
        return None
    if value is True:
        return "stages"
    if isinstance(value, str) and value.strip().lower() in ("stages", "all"):
        return value.strip().lower()
    out: list[str | int] = []
    for item in _items(value, flag, "layer names or indices"):
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
            continue
        text = str(item).strip()
        if _LAYER_INDEX.fullmatch(text):
            out.append(int(text))
        elif _MODULE_NAME.fullmatch(text) and text.lower() not in ("stages", "all"):
            out.append(text)
        else:
            raise InputError(
                f"{flag}: {text[:40]!r} is not a layer; give stages, all, or module names "
                "(layer3, blocks.11) and tap indices (0, -1) separated by commas"
            )
    if len(set(out)) != len(out):
        raise InputError(f"{flag} lists a layer twice; list each layer once")
    return tuple(out)
