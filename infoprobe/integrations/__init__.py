"""MIR, HDR and NC1-NC4 while a model trains, in the tools the run already logs to.

* :class:`~infoprobe.integrations.lightning.InterplayCallback`: a Lightning callback that
  measures a fixed probe set every N epochs or steps and logs the values with
  ``pl_module.log_dict``, so every Lightning logger receives them (needs
  ``infoprobe[lightning]``; import it from :mod:`infoprobe.integrations.lightning`).
* :class:`InterplayMonitor`: the same for a plain training loop (timm's ``train.py`` or a
  hand-written one): ``monitor.step(global_step)`` returns the values and writes them to a
  ``SummaryWriter`` or any object with ``add_scalar``.
* :func:`write_rows`: rows of ``infoprobe track`` (or any rows with a step) as TensorBoard
  scalars (needs ``infoprobe[tensorboard]``).

Importing this package needs neither Lightning nor TensorBoard.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "InterplayMonitor": "infoprobe.integrations.monitor",
    "ProbeSet": "infoprobe.integrations.probe_set",
    "SCALAR_COLUMNS": "infoprobe.integrations.scalars",
    "scalars": "infoprobe.integrations.scalars",
    "write_rows": "infoprobe.integrations.tensorboard",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infoprobe.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
