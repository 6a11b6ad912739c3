"""Sweeps: one model object, modified weights, one row per point.

* :mod:`infoprobe.sweeps.lmc`: linear mode connectivity, ``theta(alpha)`` between two
  checkpoints, with REPAIR-style BatchNorm resets and the loss/accuracy barriers;
* :mod:`infoprobe.sweeps.prune`: unstructured pruning ratios through ``torch.nn.utils.prune``,
  optionally fine-tuned after each by :mod:`infoprobe.sweeps.finetune`.

Both follow one protocol. The caller decodes the data once (a
:class:`~infoprobe.data.LabelledTensors` in memory) and passes one model object; the sweep
changes that object's weights in place (no deep copy per point), evaluates it with
:func:`infoprobe.probe.evaluate`, and yields each row as soon as it is complete, so a caller
that appends rows to a file keeps the finished ones when a sweep is interrupted. ``skip``
holds point values already done (resume); they are not evaluated. ``progress`` (a
:class:`~infoprobe.probe.ProgressSink`) gets one step per yielded row.

Their shared helpers live in :mod:`infoprobe.sweeps.common`.
"""

from infoprobe.parsing import VALUE_TOL
from infoprobe.sweeps.finetune import FinetuneOptions, finetune
from infoprobe.sweeps.lmc import (
    barriers,
    batchnorm_layers,
    check_compatible,
    interpolate_state,
    lmc_sweep,
    parse_alphas,
    reset_bn_statistics,
)
from infoprobe.sweeps.prune import (
    METHODS,
    measured_sparsity,
    parse_ratios,
    prunable_parameters,
    prune_sweep,
)

__all__ = [
    "METHODS",
    "FinetuneOptions",
    "VALUE_TOL",
    "barriers",
    "batchnorm_layers",
    "check_compatible",
    "finetune",
    "interpolate_state",
    "lmc_sweep",
    "measured_sparsity",
    "parse_alphas",
    "parse_ratios",
    "prunable_parameters",
    "prune_sweep",
    "reset_bn_statistics",
]
