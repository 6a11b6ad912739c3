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
  ``timm.create_model`` open, download or unpickle a file;
- :func:`typed_model_kwargs`: the same check for the arguments a user gives a timm model
  (``--model-kwargs``); only a custom factory, code run with ``trust_code``, takes others;
- :func:`recorded_data_cfg`: the evaluation transform a ``config.json`` records
  (:data:`ALLOWED_DATA_CFG`: input sizes, mean, std, crop, interpolation), typed and bounded.

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
    "ALLOWED_DATA_CFG",
    "ALLOWED_KWARGS",
    "FORBIDDEN_KWARGS",
    "MAX_CLASSES",
    "MAX_IN_CHANS",
    "check_forbidden",
    "given_count",
    "recorded_arch",
    "recorded_count",
    "recorded_data_cfg",
    "recorded_model_kwargs",
    "shown",
    "typed_model_kwargs",
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

#: The constructor arguments a checkpoint may record, and the ones infoprobe passes to a timm
#: model from ``--model-kwargs``: ``name -> (kind, low, high)``.
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
    "dynamic_img_pad": (_BOOL, 0, 0),
    "zero_init_last": (_BOOL, 0, 0),
    "avg_down": (_BOOL, 0, 0),
    "stem_type": (_NAME_KIND, 0, 0),
    "act_layer": (_NAME_KIND, 0, 0),
    "norm_layer": (_NAME_KIND, 0, 0),
    "block_type": (_NAME_KIND, 0, 0),
    "pos_embed": (_NAME_KIND, 0, 0),
}


#: Interpolations of timm's eval transform, and its crop modes.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")
#: Largest image side and the channels of an input size, from any source (as --input-size).
MAX_SIDE = 8192
_IMAGE_SIZE, _ABOVE, _POSITIVES = "image size", "above", "positives"
_INTERPOLATION, _CROP_MODE = "interpolation", "crop mode"

#: The ``pretrained_cfg`` entries taken from a ``config.json``: ``name -> (kind, low, high)``.
#: An image size is [C, H, W] with C in [1, MAX_IN_CHANS] and sides in [low, high]; "above"
#: is a number in (low, high], "positives" a list of such numbers.
ALLOWED_DATA_CFG: dict[str, tuple[str, float, float]] = {
    "input_size": (_IMAGE_SIZE, 1, MAX_SIDE),
    "test_input_size": (_IMAGE_SIZE, 1, MAX_SIDE),
    "min_input_size": (_IMAGE_SIZE, 1, MAX_SIDE),
    "fixed_input_size": (_BOOL, 0, 0),
    "interpolation": (_INTERPOLATION, 0, 0),
    "mean": (_FLOATS, -1e6, 1e6),
    "std": (_POSITIVES, 0.0, 1e6),
    "crop_pct": (_ABOVE, 0.0, 1.0),
    "test_crop_pct": (_ABOVE, 0.0, 1.0),
    "crop_mode": (_CROP_MODE, 0, 0),
}


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and 0 < len(value) <= _MAX_LIST


def _fits(value: Any, kind: str, low: float, high: float) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool) or value is None
    if kind == _NAME_KIND:
        return isinstance(value, str) and _NAME.fullmatch(value) is not None
    if kind in (_INTERPOLATION, _CROP_MODE):
        return value in (INTERPOLATIONS if kind == _INTERPOLATION else CROP_MODES)
    if kind == _IMAGE_SIZE:
        return (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and _fits(value[0], _INT, 1, MAX_IN_CHANS)
            and all(_fits(v, _INT, low, high) for v in value[1:])
        )
    if kind == _ABOVE:
        return _number(value, False) and low < value <= high
    if kind == _POSITIVES:
        return _sequence(value) and all(_fits(v, _ABOVE, low, high) for v in value)
    integer = kind in (_INT, _INTS)
    if kind in (_INTS, _FLOATS) and isinstance(value, (list, tuple)):
        return _sequence(value) and all(_fits(v, kind[:-1], low, high) for v in value)
    return _number(value, integer) and low <= value <= high


def _describe(kind: str, low: float, high: float) -> str:
    if kind == _BOOL:
        return "true or false"
    if kind == _NAME_KIND:
        return "a name of letters, digits, '_' or '-'"
    if kind in (_INTERPOLATION, _CROP_MODE):
        return "one of " + ", ".join(INTERPOLATIONS if kind == _INTERPOLATION else CROP_MODES)
    if kind == _IMAGE_SIZE:
        return f"[C, H, W]: C in [1, {MAX_IN_CHANS}], H and W in [{low:g}, {high:g}]"
    if kind in (_ABOVE, _POSITIVES):
        lists = f"a list of at most {_MAX_LIST} numbers" if kind == _POSITIVES else "a number"
        return f"{lists} in ({low:g}, {high:g}]"
    what = "an integer" if kind in (_INT, _INTS) else "a number"
    lists = f" (or a list of at most {_MAX_LIST})" if kind in (_INTS, _FLOATS) else ""
    return f"{what} in [{low:g}, {high:g}]{lists}"


def check_forbidden(kwargs: Mapping[str, Any], where: str) -> None:
    """InputError when ``kwargs`` names an argument that would make timm open a file."""
    bad = sorted(str(k) for k in kwargs if k in FORBIDDEN_KWARGS)
    if bad:
        raise InputError(
            f"{where}: model argument {', '.join(bad)} is not accepted: it makes timm open "
            "or download weights, and infoprobe loads weights only from the checkpoint"
        )


def _checked(
    raw: Any, where: str, allowed: dict, what: str, unknown: str, fix: str
) -> dict[str, Any]:
    """``raw`` (a mapping; None -> {}) with every entry checked against ``allowed``. The
    error names the entry as ``what`` and the key; one not in ``allowed`` ends with
    ``unknown``, a value out of its bounds with ``fix``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping of names to values, not {shown(raw)}; {fix}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        spec = allowed.get(key) if isinstance(key, str) else None
        if spec is None:
            raise InputError(f"{where}: {what}{shown(key)} {unknown}")
        if not _fits(value, *spec):
            raise InputError(
                f"{where}: {what}{key} must be {_describe(*spec)}, not {shown(value)}; {fix}"
            )
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def recorded_model_kwargs(raw: Any, where: str) -> dict[str, Any]:
    """The constructor arguments a checkpoint records, checked against :data:`ALLOWED_KWARGS`.

    ``raw`` is the recorded mapping (None or {} -> {}); ``where`` names the checkpoint and
    the metadata entry for the error. Raises :class:`InputError` naming the first argument
    that is not allowed or out of bounds; nothing is dropped silently (a dropped argument
    could build another model).
    """
    check_forbidden(raw if isinstance(raw, Mapping) else {}, where)
    return _checked(
        raw,
        where,
        ALLOWED_KWARGS,
        "model argument ",
        "is not one infoprobe takes from a checkpoint; pass it yourself with "
        "--model-kwargs KEY=VALUE if you trust the value",
        "fix the metadata or pass --model-kwargs",
    )


def typed_model_kwargs(raw: Any, where: str) -> dict[str, Any]:
    """The constructor arguments a user gives a timm model, checked as recorded ones are
    (:data:`ALLOWED_KWARGS`): a typed value is as likely to come from a shared script or a
    config file. Only a custom factory, which is code run with ``trust_code``, takes
    arguments off this list."""
    check_forbidden(raw if isinstance(raw, Mapping) else {}, where)
    return _checked(
        raw,
        where,
        ALLOWED_KWARGS,
        "model argument ",
        "is not one infoprobe passes to a timm model; it takes "
        f"{', '.join(sorted(ALLOWED_KWARGS))}",
        "fix --model-kwargs",
    )


def recorded_data_cfg(raw: Any, where: str) -> dict[str, Any]:
    """The evaluation transform a ``config.json``'s ``pretrained_cfg`` records: the entries
    of :data:`ALLOWED_DATA_CFG`, each typed and bounded (lists come back as tuples, None
    values are left out). Other entries (urls, hub ids, licences, classifier names) do not
    describe the transform and are not taken."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: pretrained_cfg must be a JSON object, not {shown(raw)}")
    taken = {k: v for k, v in raw.items() if k in ALLOWED_DATA_CFG and v is not None}
    fix = "fix the config or pass --input-size/--mean/--std/--crop-pct/--interpolation"
    checked = _checked(taken, f"{where} pretrained_cfg", ALLOWED_DATA_CFG, "", "", fix)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in checked.items()}


def recorded_count(key: str, value: Any, where: str) -> int:
    """A recorded ``num_classes`` or ``in_chans`` as a checked int (strings of digits pass)."""
    parsed: Any = value
    if isinstance(value, str) and re.fullmatch(r"\s*\+?\d{1,19}\s*", value):
        parsed = int(value)
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    fix = f"fix the metadata or pass --{key.replace('_', '-')}"
    return given_count(key, parsed, where, fix, shown_as=value)


def given_count(key: str, value: Any, where: str, fix: str, shown_as: Any = None) -> int:
    """``num_classes`` or ``in_chans`` as given: an int (not a bool) in ``[1, MAX_CLASSES]``
    / ``[1, MAX_IN_CHANS]``; the error ends with ``fix``."""
    high = MAX_CLASSES if key == "num_classes" else MAX_IN_CHANS
    if not _number(value, True) or not 1 <= value <= high:
        bad = shown(value if shown_as is None else shown_as)
        raise InputError(f"{where}: {key} must be an integer in [1, {high}], not {bad}; {fix}")
    return value


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
