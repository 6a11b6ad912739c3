"""What infoprobe takes from a checkpoint's metadata: an allowlist, with types and bounds.

A checkpoint is untrusted input. Its metadata (safetensors ``__metadata__``, a timm train
checkpoint's ``arch`` / ``args``, Lightning ``hyper_parameters``, a Hugging Face
``config.json``) may name the architecture and its constructor arguments, but every value
goes through this module before it reaches a model constructor:

- :func:`recorded_arch`: a printable name of at most :data:`MAX_ARCH_CHARS` characters;
- :func:`recorded_count`: ``num_classes`` / ``in_chans`` as an integer in
  ``[1, MAX_CLASSES]`` / ``[1, MAX_IN_CHANS]`` (a head of 4e9 classes would try to allocate
  terabytes, so the cap is an error, not a clamp);
- :func:`recorded_model_kwargs`: only the constructor arguments of :data:`ALLOWED_KWARGS`,
  each a number, bool, short name or short flat list of numbers within its bounds. Paths,
  pretrained flags, configs and anything else are refused, so a checkpoint can never make
  ``timm.create_model`` open, download or unpickle a file.

:data:`FORBIDDEN_KWARGS` are never passed to a constructor, whoever gives them (timm opens
or downloads weights for them; infoprobe loads weights only from the checkpoint itself).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from infoprobe.errors import InputError

__all__ = [
    "ALLOWED_KWARGS",
    "FORBIDDEN_KWARGS",
    "MAX_CLASSES",
    "MAX_IN_CHANS",
    "check_forbidden",
    "recorded_arch",
    "recorded_count",
    "recorded_model_kwargs",
    "shown",
]

#: Largest class count taken from metadata or given (2**20; ImageNet-21k has 21,843).
MAX_CLASSES = 1 << 20
#: Largest input channel count taken from metadata or given.
MAX_IN_CHANS = 4096
MAX_ARCH_CHARS = 256
_MAX_LIST = 64
_NAME = re.compile(r"[A-Za-z0-9_\-]{0,64}")  # no dots or slashes: never a path

#: Constructor arguments that make timm open, download or unpickle a file.
FORBIDDEN_KWARGS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "pretrained_strict",
        "file",
        "url",
        "hf_hub_id",
    }
)

# kind, lower bound, upper bound; "ints"/"floats" also take a flat list of such numbers
_INT, _INTS, _FLOAT, _FLOATS, _BOOL, _NAME_KIND = "int", "ints", "float", "floats", "bool", "name"
_RATE = (_FLOAT, 0.0, 1.0)
_SIZE = (_INTS, 1, 8192)
_WIDTH = (_INTS, 1, 65536)

#: The constructor arguments a checkpoint may record: ``name -> (kind, low, high)``.
ALLOWED_KWARGS: dict[str, tuple[str, float, float]] = {
    # regularisation (inactive in eval mode, but part of a recorded config)
    "drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "attn_drop_rate": _RATE,
    "proj_drop_rate": _RATE,
    "pos_drop_rate": _RATE,
    "patch_drop_rate": _RATE,
    "drop_block_rate": _RATE,
    # geometry
    "img_size": _SIZE,
    "patch_size": (_INTS, 1, 1024),
    "window_size": (_INTS, 1, 1024),
    "output_stride": (_INT, 1, 64),
    "global_pool": (_NAME_KIND, 0, 0),
    # widths and depths
    "embed_dim": _WIDTH,
    "embed_dims": _WIDTH,
    "dims": _WIDTH,
    "channels": _WIDTH,
    "widths": _WIDTH,
    "stem_width": _WIDTH,
    "num_features": _WIDTH,
    "head_hidden_size": _WIDTH,
    "hidden_size": _WIDTH,
    "base_width": _WIDTH,
    "depth": (_INTS, 0, 1024),
    "depths": (_INTS, 0, 1024),
    "layers": (_INTS, 0, 1024),
    "num_heads": (_INTS, 1, 1024),
    "cardinality": (_INT, 1, 65536),
    "reg_tokens": (_INT, 0, 1024),
    "num_reg_tokens": (_INT, 0, 1024),
    "mlp_ratio": (_FLOATS, 0.0, 64.0),
    "mlp_ratios": (_FLOATS, 0.0, 64.0),
    "width_multiplier": (_FLOAT, 0.0, 64.0),
    "channel_multiplier": (_FLOAT, 0.0, 64.0),
    "depth_multiplier": (_FLOAT, 0.0, 64.0),
    "init_values": (_FLOAT, 0.0, 1e3),
    # switches and named parts (timm resolves the names from its own registry)
    "class_token": (_BOOL, 0, 0),
    "no_embed_class": (_BOOL, 0, 0),
    "qkv_bias": (_BOOL, 0, 0),
    "qk_norm": (_BOOL, 0, 0),
    "pre_norm": (_BOOL, 0, 0),
    "fc_norm": (_BOOL, 0, 0),
    "dynamic_img_size": (_BOOL, 0, 0),
    "avg_down": (_BOOL, 0, 0),
    "stem_type": (_NAME_KIND, 0, 0),
    "act_layer": (_NAME_KIND, 0, 0),
    "norm_layer": (_NAME_KIND, 0, 0),
    "block_type": (_NAME_KIND, 0, 0),
    "pos_embed": (_NAME_KIND, 0, 0),
}


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fits(value: Any, kind: str, low: float, high: float) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool) or value is None
    if kind == _NAME_KIND:
        return isinstance(value, str) and _NAME.fullmatch(value) is not None
    integer = kind in (_INT, _INTS)
    if kind in (_INTS, _FLOATS) and isinstance(value, (list, tuple)):
        return 0 < len(value) <= _MAX_LIST and all(_fits(v, kind[:-1], low, high) for v in value)
    return _number(value, integer) and low <= value <= high


def _describe(kind: str, low: float, high: float) -> str:
    if kind == _BOOL:
        return "true or false"
    if kind == _NAME_KIND:
        return "a name of letters, digits, '_' or '-'"
    what = "an integer" if kind in (_INT, _INTS) else "a number"
    lists = " (or a list of them)" if kind in (_INTS, _FLOATS) else ""
    return f"{what} in [{low:g}, {high:g}]{lists}"


def check_forbidden(kwargs: Mapping[str, Any], where: str) -> None:
    """InputError when ``kwargs`` names an argument that would make timm open a file."""
    bad = sorted(k for k in kwargs if k in FORBIDDEN_KWARGS)
    if bad:
        raise InputError(
            f"{where}: model argument {', '.join(bad)} is not accepted: it makes timm open "
            "or download weights, and infoprobe loads weights only from the checkpoint"
        )


def recorded_model_kwargs(raw: Any, where: str) -> dict[str, Any]:
    """The constructor arguments a checkpoint records, checked against :data:`ALLOWED_KWARGS`.

    ``raw`` is the recorded mapping (None or {} -> {}); ``where`` names the checkpoint and
    the metadata entry for the error. Raises :class:`InputError` naming the first argument
    that is not allowed or out of bounds; nothing is dropped silently (a dropped argument
    could build another model).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(
            f"{where}: model arguments must be a mapping, not "
            f"{type(raw).__name__}; re-save the metadata or pass --model-kwargs"
        )
    check_forbidden(raw, where)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        spec = ALLOWED_KWARGS.get(key) if isinstance(key, str) else None
        if spec is None:
            raise InputError(
                f"{where}: model argument {key!r} is not one infoprobe takes from a "
                "checkpoint; pass it yourself with --model-kwargs KEY=VALUE if you trust "
                "the value"
            )
        if not _fits(value, *spec):
            raise InputError(
                f"{where}: model argument {key} must be {_describe(*spec)}, "
                f"not {shown(value)}; fix the metadata or pass --model-kwargs"
            )
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def recorded_count(key: str, value: Any, where: str) -> int:
    """A recorded ``num_classes`` or ``in_chans`` as a checked int (strings of digits pass)."""
    high = MAX_CLASSES if key == "num_classes" else MAX_IN_CHANS
    parsed: Any = value
    if isinstance(value, str) and re.fullmatch(r"\s*\+?\d{1,19}\s*", value):
        parsed = int(value)
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    if not _number(parsed, True) or not 1 <= parsed <= high:
        raise InputError(
            f"{where}: {key} must be an integer in [1, {high}], not {shown(value)}; fix the "
            f"metadata or pass --{key.replace('_', '-')}"
        )
    return parsed


def recorded_arch(value: Any, where: str) -> str:
    """A recorded architecture name: a printable string of at most MAX_ARCH_CHARS."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ARCH_CHARS
        or not value.isprintable()
    ):
        raise InputError(
            f"{where}: the recorded architecture {shown(value)} is not a model name; pass --arch"
        )
    return value


def shown(value: Any) -> str:
    """A short, escaped rendering of an untrusted value for an error line."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."
