"""The ``infoprobe`` command line: parse, call the library, render.

Commands are thin: each hands its arguments to one private function, which calls the
Python API (:mod:`infoprobe.api`, the same functions a notebook calls) and renders the
DataFrame it returns. The options every
command shares are declared once, on :class:`Options`, and :func:`_shared_options` adds them
to each command's signature. Failures of the :class:`~infoprobe.errors.InfoprobeError` family
become one line on stderr and the error's exit code (2 bad input, 1 runtime failure); usage
errors exit 2; anything unexpected exits 1 with a hint to rerun with ``--debug``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors

from infoprobe import __version__, allowlist, api, distributed, report
from infoprobe.checkpoint import checkpoint_files
from infoprobe.collapse import NC_COLUMNS
from infoprobe.errors import InfoprobeError, InputError, RunFailure
from infoprobe.info import DEFAULT_BATCH_SIZE, DEFAULT_MAX_EXACT_DIM
from infoprobe.integrations import tensorboard as tensorboard_out
from infoprobe.paths import refuse_overwrite
from infoprobe.rows import PER_CLASS_COLUMNS, SWEEP_COLUMNS, per_class_csv
from infoprobe.slq import PROBES
from infoprobe.sweeps import lmc as lmc_lib
from infoprobe.sweeps import prune as prune_lib

PROG = "infoprobe"
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

# Help panels group the shared options in `--help`.
_MODEL = "Model"
_DATA = "Data"
_COMPUTE = "Compute"
_MEASURE = "Measure"
_OUTPUT = "Output"
_FT = "Fine-tuning"


# ----------------------------------------------------------------------------- errors


def _say_error(message: str) -> None:
    """Print ``infoprobe: error: MESSAGE`` on one line of stderr."""
    one_line = report.printable(" ".join(str(message).split()))
    Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
        f"{PROG}: error: {one_line}", markup=False
    )


@contextmanager
def _errors(debug: bool, resumable: bool = False) -> Iterator[None]:
    """Map the exception family to exit codes; ``debug`` prints the traceback too, and the
    exit code stays the same (2 bad input, 1 runtime failure). ``resumable``: the command
    has --resume, which an interrupted run is pointed to."""
    try:
        yield
    except (typer.Exit, typer.Abort, click_errors.ClickException):
        raise
    except InfoprobeError as e:
        _traceback(debug)
        if _reports(e):
            _say_error(str(e) if distributed.is_main() else f"rank {distributed.rank()}: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _say_error(
            "interrupted (finished rows stay in --csv FILE; rerun with --resume to "
            "compute the rest)"
            if resumable
            else "interrupted"
        )
        raise typer.Exit(INTERRUPTED) from None
    except Exception as e:
        _traceback(debug)
        if not distributed.is_main():
            _say_error(f"rank {distributed.rank()}: unexpected {type(e).__name__}: {e}")
            raise typer.Exit(1) from None
        hint = "" if debug else " (rerun with --debug for the traceback)"
        _say_error(f"unexpected {type(e).__name__}: {e}{hint}")
        raise typer.Exit(1) from None


def _traceback(debug: bool) -> None:
    """With --debug, the traceback of the exception being handled, on stderr."""
    if debug:
        Console(stderr=True).print_exception(show_locals=False)


#: Options that take several values in timm's scripts (argparse ``nargs``); click options
#: take one, so :func:`_timm_values` rewrites them first.
_NUMBER_LISTS = ("--input-size", "--mean", "--std")
_PAIR_LISTS = ("--model-kwargs",)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_KEY_VALUE = re.compile(r"[A-Za-z_][\w.]*=")


def _timm_values(args: list[str]) -> list[str]:
    """timm's several-value spellings as click options: ``--input-size 3 224 224`` ->
    ``--input-size 3,224,224`` (also --mean, --std) and ``--model-kwargs a=1 b=2`` ->
    ``--model-kwargs a=1 --model-kwargs b=2``. Only the tokens that look like the values
    (numbers; key=value) are taken, so a checkpoint path after them stays an argument."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        out.append(flag)
        i += 1
        if flag == "--":
            return out + args[i:]
        if flag not in _NUMBER_LISTS + _PAIR_LISTS or i == len(args):
            continue
        looks = _NUMBER.fullmatch if flag in _NUMBER_LISTS else _KEY_VALUE.match
        values = [args[i]]
        i += 1
        while i < len(args) and looks(args[i]) and looks(values[0]):
            values.append(args[i])
            i += 1
        if flag in _NUMBER_LISTS:
            out.append(",".join(values))
        else:
            out.append(values[0])
            for value in values[1:]:
                out += [flag, value]
    return out


def _reports(e: InfoprobeError) -> bool:
    """Whether this process prints ``e``: under torchrun, rank 0 reports errors shared by
    every process (bad input is the same everywhere); other ranks only their own failures."""
    return distributed.is_main() or not (getattr(e, "shared", False) or isinstance(e, InputError))


@contextmanager
def _process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the command (no-op in one process)."""
    try:
        distributed.setup(device)
        yield
    finally:
        distributed.teardown()


class _Group(TyperGroup):
    """Typer's group, with usage errors as one ``infoprobe: error:`` line and exit 2, and
    timm's several-value options (:func:`_timm_values`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = _timm_values(list(sys.argv[1:] if args is None else args))
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:
            e.show()  # a bare `infoprobe analyze` shows the command's help
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx else PROG
            _say_error(f"{e.format_message().rstrip('.')} (see '{where} --help')")
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            _say_error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort as e:  # click's answer to Ctrl-C while parsing
            interrupted = isinstance(e.__cause__, KeyboardInterrupt)
            _say_error("interrupted" if interrupted else "aborted")
            sys.exit(INTERRUPTED if interrupted else 1)
        except KeyboardInterrupt:
            _say_error("interrupted")
            sys.exit(INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
    name=PROG,
    help=(
        "Analyse trained classifiers with matrix information theory: matrix entropy, "
        "mutual information, MIR and HDR between penultimate features and the classifier "
        "head (Song et al., ICML 2024, arXiv 2406.03999)."
    ),
    epilog=(
        "Start with: infoprobe analyze fixtures/lmc/same_init_a.safetensors "
        "--data fixtures/digits/test.safetensors"
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs; examples are code blocks
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        import timm
        import torch

        typer.echo(f"{PROG} {__version__} (torch {torch.__version__}, timm {timm.__version__})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Analyse trained classifiers with matrix information theory (arXiv 2406.03999)."""


# ----------------------------------------------------------------------------- shared options


class Estimate(str, Enum):
    """Which route gives the joint entropy of a row."""

    auto = "auto"
    exact = "exact"
    slq = "slq"
    batch = "batch"


class AmpDtype(str, Enum):
    """Autocast dtype for --amp."""

    bf16 = "bf16"
    fp16 = "fp16"


class PruneMethod(str, Enum):
    """How `prune` chooses the weights to zero."""

    global_magnitude = "global-magnitude"
    layer_magnitude = "layer-magnitude"
    random = "random"


class Optimizer(str, Enum):
    """The optimizer of `prune --finetune-data`."""

    sgd = "sgd"
    adamw = "adamw"


def _opt(*names: str, panel: str, **kwargs: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kwargs)


@dataclass(frozen=True)
class Options:
    """The options every command shares, declared once (see :func:`_shared_options`)."""

    # model
    arch: Annotated[
        str | None,
        _opt(
            "--arch",
            "-m",
            "--model",
            metavar="NAME",
            panel=_MODEL,
            help="Architecture: a timm model name, local-dir:FOLDER (the architecture a "
            "save_for_hf folder's config.json records), or path/to/file.py:factory or "
            "package.module:factory, which imports and runs that code (yours to choose). "
            "Default: the one the checkpoint records; a recorded file.py:factory or "
            "module:factory runs only with --trust-checkpoint.",
        ),
    ] = None
    num_classes: Annotated[
        int | None,
        _opt(
            "--num-classes",
            min=1,
            max=allowlist.MAX_CLASSES,
            panel=_MODEL,
            help="Classes of the head. Default: recorded, else read off the head weight.",
        ),
    ] = None
    in_chans: Annotated[
        int | None,
        _opt(
            "--in-chans",
            min=1,
            max=allowlist.MAX_IN_CHANS,
            panel=_MODEL,
            help="Input channels. Default: recorded, else read off the first layer.",
        ),
    ] = None
    model_kwargs: Annotated[
        list[str] | None,
        _opt(
            "--model-kwargs",
            metavar="KEY=VALUE..",
            panel=_MODEL,
            help="Extra model constructor arguments (values parsed as JSON when they are JSON): "
            "--model-kwargs a=1 b=true, or the flag repeated.",
        ),
    ] = None
    ema: Annotated[
        bool,
        _opt(
            "--ema",
            panel=_MODEL,
            help="Use the EMA weights of a train checkpoint (state_dict_ema / model_ema).",
        ),
    ] = False
    strip_prefix: Annotated[
        str | None,
        _opt(
            "--strip-prefix",
            metavar="PREFIX",
            panel=_MODEL,
            help="Strip this key prefix (default: module., _orig_mod., model. when every key "
            "has it; '' keeps keys as saved).",
        ),
    ] = None
    trust_checkpoint: Annotated[
        bool,
        _opt(
            "--trust-checkpoint",
            panel=_MODEL,
            help="Allow checkpoints that run code when loaded (pickled modules, TorchScript, "
            "a recorded file.py:factory beside the checkpoint). Only for files you trust.",
        ),
    ] = False
    head: Annotated[
        str | None,
        _opt(
            "--head",
            metavar="MODULE",
            panel=_MODEL,
            help="Dotted name of the classifier layer; its own output then gives accuracy and "
            "loss. Default: timm's get_classifier() (several heads: the one linear head their "
            "mean logits use), else the last Linear.",
        ),
    ] = None
    # data
    data: Annotated[
        str | None,
        _opt(
            "--data",
            metavar="DATA",
            panel=_DATA,
            help="Evaluation data: a tensor file (.safetensors/.pt/.npz with x and y), an "
            "image folder or a CIFAR folder. Not needed for features files.",
        ),
    ] = None
    split: Annotated[
        str | None,
        _opt("--split", panel=_DATA, help="Split subfolder of an image dataset (e.g. val)."),
    ] = None
    max_samples: Annotated[
        int | None,
        _opt(
            "--max-samples",
            min=1,
            panel=_DATA,
            help="Seeded class-stratified subsample of this size.",
        ),
    ] = None
    seed: Annotated[
        int,
        _opt(
            "--seed",
            panel=_DATA,
            help="Seed of the subsample, the batch estimate and random pruning.",
        ),
    ] = 0
    input_size: Annotated[
        str | None,
        _opt(
            "--input-size",
            metavar="N|C H W",
            panel=_DATA,
            help="Image size for image folders (C H W as in timm, or C,H,W). Default: the model's.",
        ),
    ] = None
    mean: Annotated[
        str | None,
        _opt(
            "--mean",
            metavar="M1 M2 ..",
            panel=_DATA,
            help="Normalisation mean per channel (space- or comma-separated). Default: the "
            "model's.",
        ),
    ] = None
    std: Annotated[
        str | None,
        _opt(
            "--std",
            metavar="S1 S2 ..",
            panel=_DATA,
            help="Normalisation std per channel (space- or comma-separated). Default: the model's.",
        ),
    ] = None
    crop_pct: Annotated[
        float | None,
        _opt(
            "--crop-pct",
            min=0.0,
            max=1.0,
            panel=_DATA,
            help="Center-crop fraction for image folders.",
        ),
    ] = None
    interpolation: Annotated[
        str | None,
        _opt(
            "--interpolation",
            panel=_DATA,
            help="Resize interpolation for image folders (bilinear, bicubic, ...).",
        ),
    ] = None
    workers: Annotated[
        int,
        _opt(
            "--workers",
            "-j",
            min=0,
            panel=_DATA,
            help="Processes decoding images (image data over 1 GiB decoded streams through "
            "them at every pass).",
        ),
    ] = 0
    class_map: Annotated[
        str | None,
        _opt(
            "--class-map",
            metavar="FILE.txt",
            panel=_DATA,
            help="timm class map for image folders: line i names the folder of model class i; "
            "other folders are left out.",
        ),
    ] = None
    valid_labels: Annotated[
        str | None,
        _opt(
            "--valid-labels",
            metavar="FILE.txt",
            panel=_DATA,
            help="Model class indices, one per line, that the data's labels 0..k-1 stand for: "
            "logits and head rows are restricted to them (timm validate.py).",
        ),
    ] = None
    # compute
    device: Annotated[
        str,
        _opt(
            "--device",
            metavar="auto|cpu|cuda[:k]|mps",
            panel=_COMPUTE,
            help="Where the model runs; auto takes a GPU when there is one.",
        ),
    ] = "auto"
    batch_size: Annotated[
        int,
        _opt(
            "--batch-size",
            "-b",
            min=1,
            panel=_COMPUTE,
            help="Evaluation batch size (halved and retried on out-of-memory).",
        ),
    ] = DEFAULT_BATCH_SIZE
    amp: Annotated[
        bool, _opt("--amp", panel=_COMPUTE, help="Mixed precision (autocast, see --amp-dtype).")
    ] = False
    amp_dtype: Annotated[
        AmpDtype, _opt("--amp-dtype", panel=_COMPUTE, help="Autocast dtype for --amp.")
    ] = AmpDtype.bf16
    channels_last: Annotated[
        bool, _opt("--channels-last", panel=_COMPUTE, help="channels_last memory format (CUDA).")
    ] = False
    # measure
    estimate: Annotated[
        Estimate,
        _opt(
            "--estimate",
            panel=_MEASURE,
            help="auto: exact when the joint eigen-solve fits --max-exact-dim, else slq; exact: "
            "the full-set value (past the limit h_zw/mi/mir are left empty); slq: the stochastic "
            "Lanczos estimate of the full-set value with error bars; batch: the paper's mean over "
            "mini-batches (a different quantity).",
        ),
    ] = Estimate.auto
    probes: Annotated[
        int,
        _opt(
            "--probes",
            min=4,
            panel=_MEASURE,
            help="Probe vectors of the slq estimate (its error bar shrinks as 1/sqrt).",
        ),
    ] = PROBES
    estimate_batch_size: Annotated[
        int,
        _opt(
            "--estimate-batch-size",
            min=1,
            panel=_MEASURE,
            help="Mini-batch size of --estimate batch.",
        ),
    ] = DEFAULT_BATCH_SIZE
    drop_zero_rows: Annotated[
        bool,
        _opt(
            "--drop-zero-rows",
            panel=_MEASURE,
            help="Leave out samples whose features are all zero (else an error).",
        ),
    ] = False
    max_exact_dim: Annotated[
        int | None,
        _opt(
            "--max-exact-dim",
            min=0,
            panel=_MEASURE,
            help=f"Largest exact eigen-solve (default: {DEFAULT_MAX_EXACT_DIM} on CPU, from the "
            "free memory on CUDA; 0: no limit).",
        ),
    ] = None
    # output
    csv: Annotated[
        str | None,
        _opt("--csv", metavar="FILE", panel=_OUTPUT, help="Write rows as CSV ('-': stdout)."),
    ] = None
    json_out: Annotated[
        str | None,
        _opt(
            "--json",
            metavar="FILE",
            panel=_OUTPUT,
            help="Write rows and run metadata as JSON ('-': stdout).",
        ),
    ] = None
    debug: Annotated[
        bool, _opt("--debug", panel=_OUTPUT, help="Show tracebacks instead of one-line errors.")
    ] = False


def _panel(annotation: Any) -> str | None:
    """The help panel named in an ``Annotated[..., typer.Option(...)]``."""
    metadata = getattr(annotation, "__metadata__", ())
    return next((m.rich_help_panel for m in metadata if hasattr(m, "rich_help_panel")), None)


def _shared_options(func: Callable[..., None]) -> Callable[..., None]:
    """Give ``func`` (last parameter ``opts: Options``) every :class:`Options` field as an option.

    typer reads a command's parameters from its signature, so the wrapper's signature is
    ``func``'s own parameters followed by the fields of :class:`Options`; the wrapper collects
    those into one ``Options`` and runs ``func`` under :func:`_errors`.
    """
    own = get_type_hints(func, include_extras=True)
    shared = get_type_hints(Options, include_extras=True)
    names = [f.name for f in dataclasses.fields(Options)]
    params = [
        p.replace(
            annotation=own[p.name],
            kind=inspect.Parameter.KEYWORD_ONLY
            if p.default is not inspect.Parameter.empty
            else p.kind,
        )
        for p in inspect.signature(func).parameters.values()
        if p.name != "opts"
    ]
    params += [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=shared[f.name]
        )
        for f in dataclasses.fields(Options)
    ]
    # help panels appear in order of first use: the command's own panels, then the shared
    # ones, with the command's output options joining the shared Output panel at its end
    params.sort(key=lambda p: _panel(p.annotation) == _OUTPUT and p.name not in names)

    resumable = "resume" in own

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        opts = Options(**{name: kwargs.pop(name) for name in names})
        with _errors(opts.debug, resumable), _process_group(opts.device):
            func(**kwargs, opts=opts)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


# Command-specific options used by more than one command.
SaveFeatures = Annotated[
    str | None,
    _opt(
        "--save-features",
        metavar="FILE",
        panel=_OUTPUT,
        help="Save features, labels, head and logits as .safetensors (use {name} for the "
        "checkpoint's file stem when there are several); analyze such a file without --data.",
    ),
]
Plot = Annotated[
    str | None,
    _opt("--plot", metavar="FILE.png", panel=_OUTPUT, help="Plot the rows (needs matplotlib)."),
]
Resume = Annotated[
    bool,
    _opt(
        "--resume",
        panel=_OUTPUT,
        help="Keep the rows already in --csv FILE and compute only the missing points.",
    ),
]


# ----------------------------------------------------------------------------- commands

_DIGITS = "--data fixtures/digits/test.safetensors"


def _examples(*commands: str) -> str:
    """The epilog of a command's help: one example per paragraph."""
    return "**Examples**\n\n" + "\n\n".join(f"    $ {c}" for c in commands)


_ANALYZE_EXAMPLES = _examples(
    f"infoprobe analyze fixtures/lmc/same_init_a.safetensors {_DIGITS}",
    f"infoprobe analyze fixtures/label_smoothing/*.safetensors {_DIGITS} --csv ls.csv",
    "infoprobe analyze model.pth --arch resnet18 --num-classes 10 --data cifar/ --per-class",
    "infoprobe analyze features.safetensors --json -",
)
_TRACK_EXAMPLES = _examples(
    f"infoprobe track fixtures/series {_DIGITS} --plot series.png",
    "infoprobe track run/ep*.pth --arch resnet18 --data val/ --csv dynamics.csv",
)
_LMC_EXAMPLES = _examples(
    f"infoprobe lmc fixtures/lmc/same_init_a.safetensors fixtures/lmc/same_init_b.safetensors "
    f"{_DIGITS} --steps 5",
    "infoprobe lmc a.pth b.pth --data val/ --alphas 0,0.25,0.5,0.75,1 --reset-bn "
    "--bn-data train/ --bn-batches 20 --csv lmc.csv --resume --plot lmc.png",
)
_PRUNE_EXAMPLES = _examples(
    f"infoprobe prune fixtures/lmc/same_init_a.safetensors {_DIGITS} --ratios 0,0.5,0.9",
    f"infoprobe prune fixtures/lmc/same_init_a.safetensors {_DIGITS} --ratios 0,0.5,0.9 "
    "--method layer-magnitude --finetune-data fixtures/digits/train.safetensors "
    "--finetune-epochs 2",
    "infoprobe prune model.pth --data val/ --ratios 0,0.3,0.6,0.9 --method layer-magnitude "
    "--csv prune.csv --resume --plot prune.png",
)


@app.command(epilog=_ANALYZE_EXAMPLES)
@_shared_options
def analyze(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            metavar="CKPT...",
            help="Checkpoints (or features .safetensors files) to compare.",
            show_default=False,
        ),
    ],
    per_class: Annotated[
        bool,
        _opt(
            "--per-class",
            panel=_OUTPUT,
            help="Add a per-class table: n, accuracy, loss, within-class feature entropy and "
            "the cosine between class mean and head row.",
        ),
    ] = False,
    save_features: SaveFeatures = None,
    resume: Resume = False,
    *,
    opts: Options,
) -> None:
    """Measure checkpoints on one dataset: one row per checkpoint."""
    _analyze(checkpoints, per_class, save_features, resume, opts)


@app.command(epilog=_TRACK_EXAMPLES)
@_shared_options
def track(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="CKPT...|DIR",
            help="Checkpoints of one run, or folders holding them.",
            show_default=False,
        ),
    ],
    plot: Plot = None,
    save_features: SaveFeatures = None,
    resume: Resume = False,
    tensorboard: Annotated[
        str | None,
        _opt(
            "--tensorboard",
            metavar="DIR",
            panel=_OUTPUT,
            help="Write each checkpoint's values as TensorBoard scalars (interplay/mir, ...) at "
            "its step, in a new event file in DIR (needs infoprobe[tensorboard]).",
        ),
    ] = None,
    *,
    opts: Options,
) -> None:
    """Measure a checkpoint series (training dynamics, grokking): one row per step.

    Checkpoints are ordered by the step, global_step or epoch they record, else by the
    number in their file name, which also gives the step column.
    """
    _track(paths, plot, save_features, resume, opts, tensorboard)


@app.command(epilog=_LMC_EXAMPLES)
@_shared_options
def lmc(
    a: Annotated[str, typer.Argument(metavar="A", help="Checkpoint at alpha = 0.")],
    b: Annotated[str, typer.Argument(metavar="B", help="Checkpoint at alpha = 1.")],
    steps: Annotated[
        int | None,
        _opt(
            "--steps", min=2, panel="Sweep", help="Evenly spaced alphas from 0 to 1 (default 11)."
        ),
    ] = None,
    alphas: Annotated[
        str | None, _opt("--alphas", metavar="A1,A2,..", panel="Sweep", help="Explicit alphas.")
    ] = None,
    reset_bn: Annotated[
        bool,
        _opt(
            "--reset-bn",
            panel="Sweep",
            help="Re-estimate BatchNorm statistics at each alpha from --bn-data (REPAIR-style).",
        ),
    ] = False,
    bn_data: Annotated[
        str | None,
        _opt(
            "--bn-data",
            metavar="DATA",
            panel="Sweep",
            help="Data for --reset-bn, usually the training set.",
        ),
    ] = None,
    bn_batches: Annotated[
        int | None,
        _opt(
            "--bn-batches",
            metavar="K",
            min=1,
            panel="Sweep",
            help="Batches of --bn-data per reset (default: all).",
        ),
    ] = None,
    bn_on_eval_data: Annotated[
        bool,
        _opt(
            "--bn-on-eval-data",
            panel="Sweep",
            help="Allow --bn-data to be the evaluation data (BatchNorm then sees the test set).",
        ),
    ] = False,
    resume: Resume = False,
    plot: Plot = None,
    *,
    opts: Options,
) -> None:
    """Linear mode connectivity: theta(alpha) = (1-alpha) A + alpha B, one row per alpha.

    The loss and accuracy barriers are printed under the table and written to the JSON.
    Each finished row is appended to --csv at once, so an interrupted sweep keeps it.
    """
    sweep = dict(
        steps=steps,
        alphas=alphas,
        reset_bn=reset_bn,
        bn_data=bn_data,
        bn_batches=bn_batches,
        bn_on_eval_data=bn_on_eval_data,
    )
    _lmc(a, b, sweep, resume, plot, opts)


@app.command(epilog=_PRUNE_EXAMPLES)
@_shared_options
def prune(
    checkpoint: Annotated[str, typer.Argument(metavar="CKPT", help="Dense checkpoint.")],
    ratios: Annotated[
        str,
        _opt(
            "--ratios",
            metavar="R1,R2,..",
            panel="Sweep",
            help="Fractions of the prunable weights to zero, each in [0, 1).",
        ),
    ],
    method: Annotated[
        PruneMethod,
        _opt(
            "--method",
            panel="Sweep",
            help="global-magnitude (one L1 threshold over all layers), layer-magnitude (per "
            "layer) or random.",
        ),
    ] = PruneMethod.global_magnitude,
    include_head: Annotated[
        bool, _opt("--include-head", panel="Sweep", help="Prune the classifier head too.")
    ] = False,
    iterative: Annotated[
        bool,
        _opt(
            "--iterative",
            panel="Sweep",
            help="Prune each ratio on top of the previous one instead of from the dense weights.",
        ),
    ] = False,
    dense_metrics: Annotated[
        bool,
        _opt(
            "--dense-metrics/--no-dense-metrics",
            panel="Sweep",
            help="Compute mir_dense/hdr_dense (pruned vs dense features): one more exact "
            "eigen-solve per ratio, up to n x n.",
        ),
    ] = True,
    finetune_data: Annotated[
        str | None,
        _opt(
            "--finetune-data",
            metavar="DATA",
            panel=_FT,
            help="Fine-tune each pruned model on this data (masks fixed), then measure it "
            "again: the ft_* columns. Read like --data; use the training set.",
        ),
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        _opt(
            "--finetune-epochs",
            metavar="E",
            min=1,
            panel=_FT,
            help="Epochs over --finetune-data per ratio.  [default: 1]",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        _opt(
            "--lr",
            panel=_FT,
            help="Constant learning rate.  [default: 0.01 with sgd, 0.001 with adamw]",
        ),
    ] = None,
    finetune_batch_size: Annotated[
        int | None,
        _opt(
            "--finetune-batch-size",
            metavar="B",
            min=1,
            panel=_FT,
            help="Training batch size.  [default: 64]",
        ),
    ] = None,
    optimizer: Annotated[
        Optimizer | None,
        _opt("--optimizer", panel=_FT, help="sgd (with --momentum) or adamw.  [default: sgd]"),
    ] = None,
    momentum: Annotated[
        float | None, _opt("--momentum", panel=_FT, help="SGD momentum.  [default: 0.9]")
    ] = None,
    weight_decay: Annotated[
        float | None,
        _opt(
            "--weight-decay",
            panel=_FT,
            help="Weight decay.  [default: 0 with sgd, 0.01 with adamw]",
        ),
    ] = None,
    resume: Resume = False,
    plot: Plot = None,
    *,
    opts: Options,
) -> None:
    """Unstructured pruning sweep of Conv/Linear weights: one row per ratio.

    Each row measures the pruned weights as they are. With --finetune-data each pruned model
    is then fine-tuned with its masks fixed and measured again (ft_* columns). mir_dense and
    hdr_dense compare the pruned model's features with the dense model's on the same samples.
    """
    sweep = dict(
        ratios=ratios,
        method=method.value,
        include_head=include_head,
        iterative=iterative,
        dense_metrics=dense_metrics,
        finetune_data=finetune_data,
        finetune_epochs=finetune_epochs,
        lr=lr,
        finetune_batch_size=finetune_batch_size,
        optimizer=optimizer.value if optimizer else None,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    _prune(checkpoint, sweep, resume, plot, opts)


def main() -> None:
    """Console-script entry point."""
    app(prog_name=PROG)


# ----------------------------------------------------------------------------- option helpers


def _api_options(opts: Options) -> dict[str, Any]:
    """The shared options as :func:`infoprobe.api.analyze` & co. take them."""
    names = {f.name for f in dataclasses.fields(api.RunOptions)}
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(Options) if f.name in names}


def _preflight(
    opts: Options,
    *,
    plot: str | None = None,
    save_features: str | None = None,
    resume: bool = False,
    several: bool = False,
    checkpoints: Sequence[str] = (),
    expand: bool = False,
    **more_inputs: str | None,
) -> None:
    """Every check that needs no model: conflicts, output paths, the device, option values.

    Runs before any computation, so a typo costs nothing and leaves no partial output.
    ``checkpoints`` (folders expanded when ``expand``) and ``more_inputs`` (``bn_data=...``)
    are the run's inputs besides ``--data``: no output may overwrite one.
    """
    api.RunOptions.of(_api_options(opts)).check()
    if opts.csv == report.STDOUT and opts.json_out == report.STDOUT:
        raise InputError("--csv - and --json - both write to stdout; send one to a file")
    if resume and (opts.csv is None or opts.csv == report.STDOUT):
        raise InputError("--resume continues the rows in --csv FILE; give --csv FILE")
    report.check_output(opts.csv, "--csv")
    report.check_output(opts.json_out, "--json")
    if plot is not None:
        report.check_plot_path(plot)
    if save_features is not None:
        if several and "{name}" not in save_features:
            raise InputError(
                f"--save-features {save_features}: several checkpoints need a "
                "{name} placeholder, e.g. feats-{name}.safetensors"
            )
        report.check_output(save_features.replace("{name}", "x"), "--save-features")
    _refuse_overwrite(opts, plot, save_features, checkpoints, expand, more_inputs)


def _refuse_overwrite(
    opts: Options,
    plot: str | None,
    save_features: str | None,
    checkpoints: Sequence[str],
    expand: bool,
    more_inputs: dict[str, str | None],
) -> None:
    """InputError when an output (each --save-features file included) is an input."""
    files = [str(f) for f in checkpoint_files(checkpoints)] if expand else list(checkpoints)
    record = None if opts.csv in (None, report.STDOUT) else f"{opts.csv}.run.json"
    outputs = [
        ("--csv", opts.csv),
        ("--csv record", record),
        ("--json", opts.json_out),
        ("--plot", plot),
    ]
    outputs += [("--save-features", t) for t in api.features_targets(save_features, files).values()]
    inputs = [("checkpoint", c) for c in [*checkpoints, *files]]
    inputs += [("--data", opts.data)]
    inputs += [(f"--{k.replace('_', '-')}", v) for k, v in more_inputs.items()]
    refuse_overwrite(outputs, inputs)


# ----------------------------------------------------------------------------- running


def _stdout() -> Console:
    # a pipe or file gets wide tables rather than folded cells; a terminal keeps its width
    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)


def _log(message: str) -> None:
    if not distributed.is_main():
        return
    # soft_wrap: one log line stays one line, however narrow the terminal
    Console(stderr=True, highlight=False, emoji=False, soft_wrap=True).print(
        report.printable(message), style="dim", markup=False
    )


def _progress():
    return report.RichProgress(enabled=None if distributed.is_main() else False)


def _tables(
    console: Console,
    command: str,
    rows: list[dict],
    columns: tuple[str, ...],
    *,
    title: str,
    key: str | None,
    caption: str | None,
) -> None:
    """The rows as two tables that fit a terminal: the information measures, then NC1-NC4
    (each row named by its checkpoint and sweep point; the notes come once)."""
    report.render_rows(
        console,
        rows,
        [c for c in columns if c not in NC_COLUMNS],
        title=title,
        key=key,
        caption=caption,
    )
    point = [c for c in SWEEP_COLUMNS[command][:1]]
    report.render_rows(
        console,
        [{**r, "note": ""} for r in rows],
        [*point, "checkpoint", *NC_COLUMNS],
        title="neural collapse",
        key=key,
    )


def _plot_title(rows: list[dict], opts: Options, what: str) -> str:
    """A plot's title: what was swept, the model (arch) and the data it was measured on."""
    model = next((r["model"] for r in rows if r.get("model")), None) or "model"
    data = "/".join(Path(str(opts.data)).parts[-2:])
    return f"{what}\n{model} on {data}"


def _emit(
    command: str,
    rows: list[dict],
    opts: Options,
    *,
    title: str,
    key: str | None = None,
    extra: dict | None = None,
    after: Callable[[Console], None] | None = None,
) -> None:
    """Table on stdout (unless CSV/JSON go there), then the CSV and JSON files (rank 0)."""
    if not distributed.is_main():
        return
    columns = api.columns(command)
    if report.STDOUT not in (opts.csv, opts.json_out):
        console = _stdout()
        _tables(
            console,
            command,
            rows,
            columns,
            title=title,
            key=key,
            caption=report.transform_caption((extra or {}).get("transform")),
        )
        if after is not None:
            after(console)
    if opts.csv is not None:
        report.write_csv(opts.csv, rows, columns)
    if opts.json_out is not None:
        report.write_json(
            opts.json_out, report.run_payload(command, rows, columns, **(extra or {}))
        )
    for target in (opts.csv, opts.json_out):
        if target not in (None, report.STDOUT):
            _log(f"wrote {target}")


def _measured_csv(
    command: str, resume: bool, opts: Options, **command_options: Any
) -> report.SweepCsv:
    """analyze/track's CSV, rewritten as each checkpoint's row finishes (error rows too);
    with ``--resume`` its measured rows are kept and their checkpoints not measured again."""
    run = _run_record(command, opts, **command_options)
    log = report.SweepCsv(opts.csv, api.columns(command), "checkpoint", resume=resume, run=run)
    if not distributed.is_main():
        log.path = None  # every rank reads the finished rows; rank 0 writes
    return log


def _check_failed(frame: Any, opts: Options) -> None:
    """After the output is written: exit non-zero when a checkpoint failed (2 when any failed
    for bad input, else 1), naming the first and how to finish the run."""
    failed = frame.attrs["failed"]
    if not failed:
        return
    kept = opts.csv not in (None, report.STDOUT)
    how = (
        f"the other rows are in {opts.csv}; fix the checkpoint and rerun with --resume to "
        "measure only the failed ones"
        if kept
        else "with --csv FILE the other rows are kept and --resume measures only the failed ones"
    )
    first = failed[0]
    kind = InputError if max(f["exit_code"] for f in failed) == 2 else RunFailure
    error = kind(
        f"{len(failed)} of {len(frame)} checkpoints failed ({first['checkpoint']}: "
        f"{first['error']}); {how}"
    )
    error.shared = True  # every process holds the same rows: rank 0 alone reports it
    raise error


def _analyze(
    checkpoints: list[str], per_class: bool, save_features: str | None, resume: bool, opts: Options
) -> None:
    _preflight(
        opts,
        save_features=save_features,
        several=len(checkpoints) > 1,
        checkpoints=checkpoints,
        resume=resume,
    )
    if per_class and opts.csv not in (None, report.STDOUT):
        report.check_output(per_class_csv(opts.csv), "--csv (its per-class file)")
    log = _measured_csv("analyze", resume, opts, checkpoints=list(checkpoints))
    with _progress() as progress:
        frame = api.analyze(
            checkpoints,
            opts.data,
            per_class=per_class,
            save_features=save_features,
            progress=progress,
            log=_log,
            on_row=log.add,
            done=log.rows,
            **_api_options(opts),
        )
    rows = api.records(frame)
    classes_rows = api.records(frame.attrs["per_class"]) if per_class else []

    def per_class_tables(console: Console) -> None:
        for path in dict.fromkeys(r["checkpoint"] for r in rows):
            mine = [r for r in classes_rows if r["checkpoint"] == path]
            report.render_rows(console, mine, PER_CLASS_COLUMNS, title=f"per class: {path}")

    extra = {"data": opts.data, "transform": frame.attrs["transform"]}
    if per_class:
        extra["per_class"] = classes_rows
    _emit(
        "analyze",
        rows,
        opts,
        title="infoprobe analyze",
        extra=extra,
        after=per_class_tables if per_class else None,
    )
    if per_class and opts.csv not in (None, report.STDOUT):
        target = per_class_csv(opts.csv)
        report.write_csv(target, classes_rows, PER_CLASS_COLUMNS)
        _log(f"wrote {target}")
    _check_failed(frame, opts)


def _track(
    paths: list[str],
    plot: str | None,
    save_features: str | None,
    resume: bool,
    opts: Options,
    tensorboard: str | None = None,
) -> None:
    _preflight(
        opts,
        plot=plot,
        save_features=save_features,
        several=True,
        checkpoints=paths,
        expand=True,
        resume=resume,
    )
    if tensorboard is not None:
        tensorboard_out.check_log_dir(tensorboard, "--tensorboard")
        inputs = [("checkpoint", p) for p in paths] + [("--data", opts.data)]
        refuse_overwrite([("--tensorboard", tensorboard)], inputs)
    log = _measured_csv("track", resume, opts, paths=list(paths))
    with _progress() as progress:
        frame = api.track(
            paths,
            opts.data,
            save_features=save_features,
            progress=progress,
            log=_log,
            on_row=log.add,
            done=log.rows,
            **_api_options(opts),
        )
    rows = api.records(frame)
    _emit(
        "track",
        rows,
        opts,
        title="infoprobe track",
        extra={"data": opts.data, "transform": frame.attrs["transform"]},
    )
    if plot is not None and distributed.is_main():
        report.plot_track(rows, plot, title=_plot_title(rows, opts, "training run"))
        _log(f"wrote {plot}")
    if tensorboard is not None and distributed.is_main():
        written = tensorboard_out.write_rows(rows, tensorboard)
        _log(f"wrote {written}" if written else "--tensorboard: no row had values to write")
    _check_failed(frame, opts)


# ----------------------------------------------------------------------------- sweeps


def _run_record(command: str, opts: Options, **command_options: Any) -> dict[str, Any]:
    """Every option that decides the rows' numbers (:func:`infoprobe.api.run_record`)."""
    return api.run_record(command, opts.data, **command_options, **_api_options(opts))


def _sweep_csv(
    command: str,
    key: str,
    resume: bool,
    opts: Options,
    total: Callable[[], int],
    run: dict[str, Any],
) -> tuple[report.SweepCsv, Callable[[dict], None]]:
    """The sweep's incremental CSV and the ``on_row`` that records each finished row.
    ``run`` (:func:`_run_record`) is recorded beside the CSV; ``--resume`` compares it."""
    log = report.SweepCsv(opts.csv, api.columns(command), key, resume=resume, run=run)
    if not distributed.is_main():
        log.path = None  # every rank reads the finished rows; rank 0 writes

    def record(row: dict) -> None:
        log.add(row)
        tuned = row.get("ft_accuracy")
        after = (
            ""
            if tuned is None or math.isnan(tuned)
            else f"; fine-tuned: accuracy {tuned:.4f}, "
            f"mir {report.format_value('mir', row['ft_mir'])}"
        )
        _log(
            f"[{len(log.rows)}/{total()}] {key} {report.format_value(key, row[key])}: "
            f"accuracy {row['accuracy']:.4f}, mir {report.format_value('mir', row['mir'])}"
            f"{after}"
        )

    return log, record


def _lmc(
    a: str, b: str, sweep: dict[str, Any], resume: bool, plot: str | None, opts: Options
) -> None:
    _preflight(opts, plot=plot, resume=resume, checkpoints=[a, b], bn_data=sweep["bn_data"])
    run = _run_record("lmc", opts, a=a, b=b, **sweep)
    log, record = _sweep_csv(
        "lmc",
        "alpha",
        resume,
        opts,
        lambda: len(lmc_lib.parse_alphas(sweep["steps"], sweep["alphas"])),
        run,
    )
    with _progress() as progress:
        frame = api.lmc(
            a,
            b,
            opts.data,
            **sweep,
            progress=progress,
            log=_log,
            on_row=record,
            done=log.rows,
            **_api_options(opts),
        )
    rows, found = api.records(frame), frame.attrs["barriers"]
    name = f"{a}→{b}"

    def show_barriers(console: Console) -> None:
        report.render_barriers(console, found)

    _emit(
        "lmc",
        rows,
        opts,
        title=f"infoprobe lmc {name}",
        key="alpha",
        extra={
            "data": opts.data,
            "transform": frame.attrs["transform"],
            "a": a,
            "b": b,
            "reset_bn": sweep["reset_bn"],
            "barriers": found,
            "options": run,
        },
        after=show_barriers,
    )
    if plot is not None and distributed.is_main():
        report.plot_lmc(
            rows, plot, title=_plot_title(rows, opts, f"lmc {Path(a).name} → {Path(b).name}")
        )
        _log(f"wrote {plot}")


def _prune(
    checkpoint: str, sweep: dict[str, Any], resume: bool, plot: str | None, opts: Options
) -> None:
    prune_lib.parse_ratios(sweep["ratios"])
    # the fine-tuning options with their defaults filled in, so the record holds the values
    tune = {k: sweep[k] for k in api.FINETUNE_FLAGS}
    sweep = {**sweep, **api.finetune_settings(sweep["finetune_data"], seed=opts.seed, **tune)}
    _preflight(
        opts,
        plot=plot,
        resume=resume,
        checkpoints=[checkpoint],
        finetune_data=sweep["finetune_data"],
    )
    run = _run_record("prune", opts, checkpoint=checkpoint, **sweep)
    log, record = _sweep_csv(
        "prune", "ratio", resume, opts, lambda: len(prune_lib.parse_ratios(sweep["ratios"])), run
    )
    with _progress() as progress:
        frame = api.prune(
            checkpoint,
            opts.data,
            **sweep,
            progress=progress,
            log=_log,
            on_row=record,
            done=log.rows,
            **_api_options(opts),
        )
    rows, method, tuned = api.records(frame), sweep["method"], frame.attrs["finetune"]
    how = (
        "no fine-tuning"
        if tuned is None
        else f"fine-tuned {tuned['epochs']} epoch(s) on {sweep['finetune_data']}"
    )
    _emit(
        "prune",
        rows,
        opts,
        title=f"infoprobe prune {checkpoint} ({method}, {how})",
        key="ratio",
        extra={
            "data": opts.data,
            "transform": frame.attrs["transform"],
            "method": method,
            "include_head": sweep["include_head"],
            "iterative": sweep["iterative"],
            "finetune": tuned,
            "options": run,
        },
    )
    if plot is not None and distributed.is_main():
        report.plot_prune(
            rows,
            plot,
            title=_plot_title(rows, opts, f"prune {Path(checkpoint).name}: {method}, {how}"),
        )
        _log(f"wrote {plot}")
