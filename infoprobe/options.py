"""Every option of every command, declared once: :class:`RunOptions`.

Each field carries a :class:`Spec`: its command-line spellings, help text, help panel,
bounds, the commands that take it, and its role:

- ``input``: a path the run reads. The path registry (:mod:`infoprobe.paths`) checks it
  before any work, and the resume record (:mod:`infoprobe.record`) holds its identity;
- ``output``: a path the run writes, with the files derived from it (``FILE.run.json``,
  ``FILE.per_class.csv``, one features file per checkpoint); the registry refuses an output
  that is an input, another output, lies inside an input folder or is not a regular file;
- ``value``: it changes the numbers, so it enters the resume record;
- ``points``: the points of a sweep (ratios, alphas); every row carries its own, and a
  resumed sweep may add points;
- ``display``: where the run happens and how it reports; the numbers do not change.

Everything else follows from the fields: the command line builds its options from them
(:mod:`infoprobe.cli.options`), the Python API validates its keyword arguments with
:meth:`RunOptions.of`, the resume record and the path registry read the roles. A new
option is one new field. This module imports no torch, so ``infoprobe --help`` and
``--version`` start fast.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from infoprobe import parsing
from infoprobe.allowlist import MAX_CLASSES, MAX_IN_CHANS
from infoprobe.defaults import DEFAULT_BATCH_SIZE, ESTIMATES
from infoprobe.errors import InputError

__all__ = ["COMMANDS", "Role", "RunOptions", "Spec", "specs"]

COMMANDS = ("analyze", "track", "lmc", "prune")
_ALL = frozenset(COMMANDS)
_MAX_SEED = (1 << 63) - 1
_MAX_PROBES = 4096

MODEL, DATA, COMPUTE, MEASURE, OUTPUT, SWEEP, FINETUNE = (
    "Model",
    "Data",
    "Compute",
    "Measure",
    "Output",
    "Sweep",
    "Fine-tuning",
)


class Role(str, Enum):
    """What an option is to the run (see the module docstring)."""

    INPUT = "input"
    OUTPUT = "output"
    VALUE = "value"
    POINTS = "points"
    DISPLAY = "display"


@dataclass(frozen=True)
class Spec:
    """How one :class:`RunOptions` field appears and is checked.

    ``kind``: ``bool``, ``int``, ``float``, ``str``, ``choice`` (one of ``choices``) or
    ``parsed`` (``parse`` turns the command line's text or an API value into the field's
    value). ``low``/``high`` bound numbers (``above``: ``low`` itself is excluded).
    ``negatable``: a flag that turns a default-on option off (``--no-dense-metrics``).
    ``several``: ``"numbers"`` takes timm's space-separated values (``--input-size 3 224
    224``) and ``"pairs"`` repeated ``key=value`` items. ``completes``: may be set on
    ``--resume`` where the earlier run left it unset (it only completes failed rows).
    ``derived``: an output's further files, as ``(label, path)`` pairs, given the options
    and the run's checkpoints; ``template``: the value names no file itself, only its
    derived files are written. ``stdout``: ``-`` writes to standard output.
    """

    flags: tuple[str, ...]
    help: str
    panel: str
    role: Role
    kind: str
    commands: frozenset[str] = _ALL
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    several: str | None = None
    completes: bool = False
    negatable: bool = False
    parse: Callable[[Any, str], Any] | None = None
    derived: Callable[[Any, RunOptions, Sequence[str]], list[tuple[str, str]]] | None = None
    stdout: bool = False
    folder: bool = False
    template: bool = False

    @property
    def flag(self) -> str:
        """The main spelling, used in messages."""
        return self.flags[0]


def _option(
    default: Any, *flags: str, kind: str, help: str, panel: str, role: Role, **more: Any
) -> Any:
    spec = Spec(flags=flags, help=help, panel=panel, role=role, kind=kind, **more)
    return field(default=default, metadata={"spec": spec})


def _per_class_file(csv: str) -> str:
    return parsing.per_class_csv(csv)


def _csv_files(csv: Any, opts: RunOptions, _: Sequence[str]) -> list[tuple[str, str]]:
    """``--csv FILE``'s record (``FILE.run.json``) and, with --per-class, its per-class rows."""
    out = [("--csv's run record", f"{csv}.run.json")]
    if opts.per_class:
        out.append(("--csv's per-class rows", _per_class_file(csv)))
    return out


def _features_files(
    template: Any, _: RunOptions, checkpoints: Sequence[str]
) -> list[tuple[str, str]]:
    return [
        (f"--save-features for {c}", t)
        for c, t in parsing.features_targets(template, checkpoints).items()
    ]


@dataclass(frozen=True)
class RunOptions:
    """The options of every command with their defaults (``None``: decided later, as the
    help says). Build one with :meth:`of`, which checks every value."""

    # fmt: off
    # ---------------------------------------------------------------- model
    arch: str | None = _option(None, "--arch", "-m", "--model", kind="str", panel=MODEL,
        role=Role.VALUE, completes=True, metavar="NAME",
        help="timm name, local-dir:DIR or file.py:fn")
    num_classes: int | None = _option(None, "--num-classes", kind="int", low=1, high=MAX_CLASSES,
        panel=MODEL, role=Role.VALUE, completes=True, help="Head classes (default: recorded)")
    in_chans: int | None = _option(None, "--in-chans", kind="int", low=1, high=MAX_IN_CHANS,
        panel=MODEL, role=Role.VALUE, completes=True, help="Input channels (default: recorded)")
    model_kwargs: dict | None = _option(None, "--model-kwargs", kind="parsed",
        parse=parsing.model_kwargs, several="pairs", metavar="KEY=VALUE..", panel=MODEL,
        role=Role.VALUE, completes=True, help="Constructor arguments: a=1 b=true")
    ema: bool = _option(False, "--ema", kind="bool", panel=MODEL, role=Role.VALUE,
        help="Use the EMA weights")
    strip_prefix: str | None = _option(None, "--strip-prefix", kind="str", metavar="PREFIX",
        panel=MODEL, role=Role.VALUE, completes=True, help="Key prefix to strip ('' keeps keys)")
    trust_checkpoint: bool = _option(False, "--trust-checkpoint", kind="bool", panel=MODEL,
        role=Role.DISPLAY, help="Allow pickled/TorchScript files")
    trust_code: bool = _option(False, "--trust-code", kind="bool", panel=MODEL,
        role=Role.DISPLAY, help="Allow code outside timm (file.py:fn, module:fn)")
    head: str | None = _option(None, "--head", kind="str", metavar="MODULE", panel=MODEL,
        role=Role.VALUE, help="Classifier module (default: timm's)")
    # ---------------------------------------------------------------- data
    data: str | None = _option(None, "--data", kind="str", metavar="DATA", panel=DATA,
        role=Role.INPUT, help="Tensor file, image or CIFAR folder")
    split: str | None = _option(None, "--split", kind="str", panel=DATA, role=Role.VALUE,
        help="Split subfolder of --data")
    max_samples: int | None = _option(None, "--max-samples", kind="int", low=1, high=1 << 40,
        panel=DATA, role=Role.VALUE, help="Stratified subsample size")
    seed: int = _option(0, "--seed", kind="int", low=0, high=_MAX_SEED, panel=DATA,
        role=Role.VALUE, help="Seed of subsample, estimates, pruning")
    input_size: int | tuple[int, ...] | None = _option(None, "--input-size", kind="parsed",
        parse=parsing.input_size, several="numbers", metavar="N|C H W", panel=DATA,
        role=Role.VALUE, help="Image size: N or C H W")
    mean: tuple[float, ...] | None = _option(None, "--mean", kind="parsed", parse=parsing.floats,
        several="numbers", metavar="M1 M2 ..", panel=DATA, role=Role.VALUE,
        help="Normalisation mean per channel")
    std: tuple[float, ...] | None = _option(None, "--std", kind="parsed",
        parse=parsing.positive_floats, several="numbers", metavar="S1 S2 ..", panel=DATA,
        role=Role.VALUE, help="Normalisation std per channel")
    crop_pct: float | None = _option(None, "--crop-pct", kind="float", low=0.0, above=True,
        high=1.0, panel=DATA, role=Role.VALUE, help="Center-crop fraction, in (0, 1]")
    interpolation: str | None = _option(None, "--interpolation", kind="choice", panel=DATA,
        role=Role.VALUE, choices=("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"),
        metavar="MODE", help="Resize interpolation (bicubic...)")
    workers: int = _option(0, "--workers", "-j", kind="int", low=0, high=256, panel=DATA,
        role=Role.DISPLAY, help="Image decoding processes")
    class_map: str | None = _option(None, "--class-map", kind="str", metavar="FILE.txt",
        panel=DATA, role=Role.INPUT, help="timm class map (.txt)")
    valid_labels: str | tuple[int, ...] | None = _option(None, "--valid-labels", kind="parsed",
        parse=parsing.valid_labels, metavar="FILE.txt", panel=DATA, role=Role.INPUT,
        help="Model classes of labels 0..k-1")
    # ---------------------------------------------------------------- compute
    device: str = _option("auto", "--device", kind="str", metavar="DEVICE", panel=COMPUTE,
        role=Role.DISPLAY, help="auto, cpu, cuda[:k] or mps")
    batch_size: int = _option(DEFAULT_BATCH_SIZE, "--batch-size", "-b", kind="int", low=1,
        high=1 << 20, panel=COMPUTE, role=Role.VALUE, help="Evaluation batch size")
    amp: bool = _option(False, "--amp", kind="bool", panel=COMPUTE, role=Role.VALUE,
        help="Mixed precision (autocast)")
    amp_dtype: str | None = _option(None, "--amp-dtype", kind="choice", choices=("bf16", "fp16"),
        panel=COMPUTE, role=Role.VALUE, metavar="DTYPE", help="bf16 or fp16  [default: bf16]")
    channels_last: bool = _option(False, "--channels-last", kind="bool", panel=COMPUTE,
        role=Role.VALUE, help="channels_last memory format")
    # ---------------------------------------------------------------- measure
    estimate: str = _option("auto", "--estimate", kind="choice", choices=ESTIMATES, panel=MEASURE,
        role=Role.VALUE, metavar="ROUTE", help="auto|exact|slq|batch  [default: auto]")
    probes: int | None = _option(None, "--probes", kind="int", low=4, high=_MAX_PROBES,
        panel=MEASURE, role=Role.VALUE, help="slq probe vectors  [default: 24]")
    estimate_batch_size: int | None = _option(None, "--estimate-batch-size", kind="int", low=2,
        high=1 << 20, panel=MEASURE, role=Role.VALUE, help="Batch size of --estimate batch")
    drop_zero_rows: bool = _option(False, "--drop-zero-rows", kind="bool", panel=MEASURE,
        role=Role.VALUE, help="Drop all-zero feature rows")
    max_exact_dim: int | None = _option(None, "--max-exact-dim", kind="int", low=0, high=1 << 31,
        panel=MEASURE, role=Role.VALUE, help="Largest exact solve (0: no limit)")
    layers: str | tuple[str | int, ...] | None = _option(None, "--layers", kind="parsed",
        parse=parsing.layers, metavar="stages|all|NAMES", panel=MEASURE, role=Role.VALUE,
        commands=frozenset({"analyze", "track"}),
        help="A row per layer: stages (timm's taps), all, or names/indices a,b")
    # ---------------------------------------------------------------- sweeps
    steps: int | None = _option(None, "--steps", kind="int", low=2, high=10001, panel=SWEEP,
        role=Role.POINTS, commands=frozenset({"lmc"}), help="Evenly spaced alphas  [default: 11]")
    alphas: tuple[float, ...] | None = _option(None, "--alphas", kind="parsed",
        parse=parsing.alphas, several="numbers", metavar="A1 A2 ..", panel=SWEEP, role=Role.POINTS,
        commands=frozenset({"lmc"}), help="Explicit alphas in [0, 1]")
    reset_bn: bool = _option(False, "--reset-bn", kind="bool", panel=SWEEP, role=Role.VALUE,
        commands=frozenset({"lmc"}), help="Re-estimate BatchNorm at each alpha")
    bn_data: str | None = _option(None, "--bn-data", kind="str", metavar="DATA", panel=SWEEP,
        role=Role.INPUT, commands=frozenset({"lmc"}), help="Data for --reset-bn (training set)")
    bn_split: str | None = _option(None, "--bn-split", kind="str", panel=SWEEP, role=Role.VALUE,
        commands=frozenset({"lmc"}), help="Split subfolder of --bn-data")
    bn_batches: int | None = _option(None, "--bn-batches", kind="int", low=1, high=1 << 30,
        metavar="K", panel=SWEEP, role=Role.VALUE, commands=frozenset({"lmc"}),
        help="Batches per reset  [default: all]")
    bn_on_eval_data: bool = _option(False, "--bn-on-eval-data", kind="bool", panel=SWEEP,
        role=Role.DISPLAY, commands=frozenset({"lmc"}), help="Allow --bn-data = --data")
    ratios: tuple[float, ...] | None = _option(None, "--ratios", kind="parsed",
        parse=parsing.ratios, several="numbers", metavar="R1 R2 ..", panel=SWEEP, role=Role.POINTS,
        commands=frozenset({"prune"}), help="Fractions to prune, each in [0, 1)")
    method: str = _option("global-magnitude", "--method", kind="choice", panel=SWEEP,
        role=Role.VALUE, choices=("global-magnitude", "layer-magnitude", "random"),
        commands=frozenset({"prune"}), metavar="METHOD",
        help="global-magnitude (default), layer-magnitude or random")
    include_head: bool = _option(False, "--include-head", kind="bool", panel=SWEEP,
        role=Role.VALUE, commands=frozenset({"prune"}), help="Prune the head too")
    iterative: bool = _option(False, "--iterative", kind="bool", panel=SWEEP, role=Role.VALUE,
        commands=frozenset({"prune"}), help="Prune on top of the last ratio")
    dense_metrics: bool = _option(True, "--no-dense-metrics", kind="bool", negatable=True,
        panel=SWEEP, role=Role.VALUE, commands=frozenset({"prune"}),
        help="Skip mir_dense, hdr_dense")
    finetune_data: str | None = _option(None, "--finetune-data", kind="str", metavar="DATA",
        panel=FINETUNE, role=Role.INPUT, commands=frozenset({"prune"}),
        help="Fine-tune each ratio on this data")
    finetune_split: str | None = _option(None, "--finetune-split", kind="str", panel=FINETUNE,
        role=Role.VALUE, commands=frozenset({"prune"}), help="Split subfolder of --finetune-data")
    finetune_epochs: int | None = _option(None, "--finetune-epochs", kind="int", low=1,
        high=100000, metavar="E", panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}),
        help="Epochs per ratio  [default: 1]")
    lr: float | None = _option(None, "--lr", kind="float", low=0.0, above=True, high=1000000.0,
        panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}),
        help="Learning rate  [default: 0.01/0.001]")
    finetune_batch_size: int | None = _option(None, "--finetune-batch-size", kind="int", low=1,
        high=1 << 20, metavar="B", panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}),
        help="Training batch size  [default: 64]")
    optimizer: str | None = _option(None, "--optimizer", kind="choice", choices=("sgd", "adamw"),
        panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}), metavar="NAME",
        help="sgd or adamw  [default: sgd]")
    momentum: float | None = _option(None, "--momentum", kind="float", low=0.0, high=1.0,
        panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}),
        help="SGD momentum  [default: 0.9]")
    weight_decay: float | None = _option(None, "--weight-decay", kind="float", low=0.0,
        high=1000000.0, panel=FINETUNE, role=Role.VALUE, commands=frozenset({"prune"}),
        help="Weight decay  [default: 0/0.01]")
    # ---------------------------------------------------------------- output
    per_class: bool = _option(False, "--per-class", kind="bool", panel=OUTPUT, role=Role.VALUE,
        commands=frozenset({"analyze"}), help="Per-class rows (FILE.per_class.csv)")
    save_features: str | None = _option(None, "--save-features", kind="str", metavar="FILE",
        panel=OUTPUT, role=Role.OUTPUT, commands=frozenset({"analyze", "track"}),
        derived=_features_files, template=True, help="Save features ({name}: file stem)")
    csv: str | None = _option(None, "--csv", kind="str", metavar="FILE", panel=OUTPUT,
        role=Role.OUTPUT, stdout=True, derived=_csv_files, help="Rows as CSV ('-': stdout)")
    json_out: str | None = _option(None, "--json", kind="str", metavar="FILE", panel=OUTPUT,
        role=Role.OUTPUT, stdout=True, help="Rows and metadata as JSON ('-': stdout)")
    tensorboard: str | None = _option(None, "--tensorboard", kind="str", metavar="DIR",
        panel=OUTPUT, role=Role.OUTPUT, folder=True, commands=frozenset({"track"}),
        help="TensorBoard scalars at each step")
    plot: str | None = _option(None, "--plot", kind="str", metavar="FILE.png", panel=OUTPUT,
        role=Role.OUTPUT, help="Plot the rows (matplotlib)")
    resume: bool = _option(False, "--resume", kind="bool", panel=OUTPUT, role=Role.DISPLAY,
        help="Keep rows in --csv, compute the rest")
    debug: bool = _option(False, "--debug", kind="bool", panel=OUTPUT, role=Role.DISPLAY,
        help="Tracebacks instead of one-line errors")
    # fmt: on

    @classmethod
    def of(cls, command: str, options: Mapping[str, Any]) -> RunOptions:
        """Checked options of ``command`` from keyword arguments (the API's, or the command
        line's). TypeError for a name ``command`` does not take; InputError, naming the
        keyword and its flag, for a value of the wrong type or out of bounds."""
        known = {name: spec for name, spec in specs(command)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"{command}() got unknown option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(known))}"
            )
        values = {name: _checked(name, known[name], v) for name, v in options.items()}
        return cls(**values)

    def given(self, name: str) -> bool:
        """Whether option ``name`` differs from its default (the user set it)."""
        return getattr(self, name) != _defaults()[name]

    def spec(self, name: str) -> Spec:
        return _spec_map()[name]

    def fields(self, role: Role, command: str | None = None) -> Iterator[tuple[str, Spec]]:
        """``(name, spec)`` of every field with ``role`` (that ``command`` takes)."""
        return ((n, s) for n, s in specs(command) if s.role is role)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)


def specs(command: str | None = None) -> list[tuple[str, Spec]]:
    """``(name, spec)`` of every option (that ``command`` takes), in declaration order."""
    if command is not None and command not in _ALL:
        raise ValueError(f"unknown command {command!r}")
    return [(n, s) for n, s in _spec_map().items() if command is None or command in s.commands]


def _spec_map() -> dict[str, Spec]:
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(RunOptions)}


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunOptions)}


def _checked(name: str, spec: Spec, value: Any) -> Any:
    """``value`` checked against ``spec`` (None passes: the default)."""
    if value is None:
        return None
    where = f"{spec.flag} {value!r} ({name})"
    if isinstance(value, Enum):
        value = value.value
    if spec.kind == "bool":
        if value is not True and value is not False:
            raise InputError(f"{where}: give True or False")
        return value
    if spec.kind == "parsed":
        return spec.parse(value, spec.flag)
    if spec.kind in ("str", "choice"):
        if not isinstance(value, (str, os.PathLike)):
            raise InputError(f"{where}: give a string")
        value = os.fspath(value)
        if spec.choices is not None and value not in spec.choices:
            raise InputError(f"{where}: use one of {', '.join(spec.choices)}")
        return value
    number = _number(value, spec.kind == "int", where)
    _check_bounds(number, spec, where)
    return number


def _number(value: Any, integer: bool, where: str) -> int | float:
    if isinstance(value, bool):
        raise InputError(f"{where}: give a number, not a bool")
    try:
        return (
            operator.index(value)
            if integer
            else float(operator.index(value) if isinstance(value, int) else value)
        )
    except (TypeError, ValueError):
        raise InputError(f"{where}: give {'an integer' if integer else 'a number'}") from None


def _check_bounds(number: float, spec: Spec, where: str) -> None:
    if isinstance(number, float) and not math.isfinite(number):
        raise InputError(f"{where}: give a finite number")
    low, high = spec.low, spec.high
    if low is not None and (number < low or (spec.above and number == low)):
        raise InputError(f"{where}: must be {'>' if spec.above else '>='} {low:g}")
    if high is not None and number > high:  # integral bounds in full: 2**63 - 1, not 9.2e+18
        raise InputError(f"{where}: must be <= {int(high) if float(high).is_integer() else high}")
