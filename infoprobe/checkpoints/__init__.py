"""Checkpoints: find them, read them through the trust gate, build and load their models.

One job per module: :mod:`~infoprobe.checkpoints.files` finds checkpoint files and folders;
:mod:`~infoprobe.checkpoints.meta` parses what a checkpoint records about itself (every value
through :mod:`infoprobe.allowlist`); :mod:`~infoprobe.checkpoints.read` turns bytes into a
state dict and applies the trust gate; :mod:`~infoprobe.checkpoints.build` turns an
architecture into an untrained model; :mod:`~infoprobe.checkpoints.load` loads a checkpoint
into it strictly; :mod:`~infoprobe.checkpoints.series` orders the checkpoints of one run.

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
mismatch raises :class:`~infoprobe.errors.InputError` listing missing / unexpected keys and
shape mismatches with the likely cause.
"""

from infoprobe.checkpoints.build import (
    build_model,
    code_refusal,
    infer_num_classes,
    is_custom_arch,
    parse_model_kwargs,
)
from infoprobe.checkpoints.files import (
    CHECKPOINT_SUFFIXES,
    checkpoint_files,
    checkpoint_stem,
    hf_folder,
)
from infoprobe.checkpoints.load import LoadedModel, compare_states, load_model
from infoprobe.checkpoints.meta import CHECKPOINT_META_KEYS, read_hf_config
from infoprobe.checkpoints.read import clean_keys, read_state_dict
from infoprobe.checkpoints.series import (
    SeriesPlan,
    checkpoint_step,
    name_number,
    series_order,
    series_plan,
    series_steps,
)

__all__ = [
    "CHECKPOINT_META_KEYS",
    "CHECKPOINT_SUFFIXES",
    "LoadedModel",
    "SeriesPlan",
    "build_model",
    "checkpoint_files",
    "checkpoint_stem",
    "checkpoint_step",
    "clean_keys",
    "code_refusal",
    "compare_states",
    "hf_folder",
    "infer_num_classes",
    "is_custom_arch",
    "load_model",
    "name_number",
    "parse_model_kwargs",
    "read_hf_config",
    "read_state_dict",
    "series_order",
    "series_plan",
    "series_steps",
]
