"""The column schema every command shares (the CLI and CSV contract), in snake_case.

Every command emits rows with :data:`COLUMNS`; lmc adds ``alpha``, prune adds ``ratio,
sparsity, mir_dense, hdr_dense`` and the after-fine-tuning :data:`FT_COLUMNS`, track adds
``step`` (:data:`SWEEP_COLUMNS`), so CSV from any command loads straight into pandas and
rows from different commands join on these names. No torch here: the command line reads
the names without loading it.
"""

from __future__ import annotations

#: The neural-collapse measures of :mod:`infoprobe.collapse`.
NC_COLUMNS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")

COLUMNS: tuple[str, ...] = (
    "checkpoint",
    "model",
    "param_count",
    "img_size",
    "n_samples",
    "n_classes",
    "classes_present",
    "accuracy",
    "accuracy_top5",
    "top1",
    "top5",
    "loss",
    "h_z",
    "h_w",
    "h_zw",
    "mi",
    "mir",
    "hdr",
    "mir_nc",
    "hdr_nc",
    *NC_COLUMNS,
    "h_zw_err",
    "mi_err",
    "mir_err",
    "mir_lower",
    "estimate",
    "n_used",
    "n_batches",
    "note",
)


#: A fine-tuned prune row's values after fine-tuning (NaN when the sweep does not fine-tune).
FT_COLUMNS: tuple[str, ...] = (
    "ft_accuracy",
    "ft_loss",
    "ft_mir",
    "ft_hdr",
    "ft_mir_dense",
    "ft_hdr_dense",
)


#: Extra columns each command puts before the shared ones.
SWEEP_COLUMNS: dict[str, tuple[str, ...]] = {
    "analyze": (),
    "track": ("step",),
    "lmc": ("alpha",),
    "prune": ("ratio", "sparsity", "mir_dense", "hdr_dense", *FT_COLUMNS),
}


#: Columns holding integers (nullable: a row without numbers leaves them empty).
INT_COLUMNS = frozenset(
    {
        "n_samples",
        "n_classes",
        "classes_present",
        "step",
        "class",
        "n",
        "n_used",
        "n_batches",
        "img_size",
        "layer_dim",
    }
)


#: The columns that describe the model and its input rather than the evaluation; named and
#: defined as in timm's validate.py results (see :func:`model_columns`).
MODEL_COLUMNS: tuple[str, ...] = ("model", "param_count", "img_size")


#: Columns holding text: an unknown value is an empty string there, NaN elsewhere.
TEXT_COLUMNS = frozenset({"checkpoint", "model", "estimate", "note", "name", "layer", "pooling"})


#: A layer row's columns (``--layers``): :data:`COLUMNS` with the layer (its name, width and
#: the pooling of its output) after ``checkpoint``, and its label information ``h_y``,
#: ``mi_y`` after ``mi``.
LAYER_COLUMNS: tuple[str, ...] = (
    "checkpoint",
    "layer",
    "layer_dim",
    "pooling",
    *COLUMNS[1 : COLUMNS.index("mi") + 1],
    "h_y",
    "mi_y",
    *COLUMNS[COLUMNS.index("mi") + 1 :],
)


#: Columns of the per-class table (``infoprobe analyze --per-class``).
PER_CLASS_COLUMNS: tuple[str, ...] = (
    "checkpoint",
    "class",
    "name",
    "n",
    "accuracy",
    "loss",
    "h_z",
    "h_z_max",
    "cos_head",
)
