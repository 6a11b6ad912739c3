"""The ``infoprobe`` application: the command group, usage errors as one line, timm's
several-value spellings, and ``--version`` (answered without importing torch)."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Annotated

import typer
from typer.core import TyperGroup

from infoprobe import __version__
from infoprobe.cli.errors import INTERRUPTED, PROG, click_errors, say_error
from infoprobe.options import specs

__all__ = ["app", "main", "timm_values"]


def _looks_like_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return not token.lower().lstrip("+-").startswith(("inf", "nan"))


def _looks_like_pair(token: str) -> bool:
    key, sep, _ = token.partition("=")
    return bool(sep) and key.replace("_", "a").replace(".", "a").isidentifier()


def timm_values(args: list[str]) -> list[str]:
    """timm's several-value spellings as click options: ``--input-size 3 224 224`` ->
    ``--input-size 3,224,224`` (every option declared with ``several="numbers"``), and
    ``--model-kwargs a=1 b=2`` -> ``--model-kwargs a=1 --model-kwargs b=2`` (``"pairs"``).
    Only tokens that look like such values are taken, so a path after them stays an
    argument."""
    kinds = {flag: spec.several for _, spec in specs() if spec.several for flag in spec.flags}
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        out.append(flag)
        i += 1
        if flag == "--":
            return out + args[i:]
        kind = kinds.get(flag)
        if kind is None or i == len(args):
            continue
        looks = _looks_like_number if kind == "numbers" else _looks_like_pair
        values = [args[i]]
        i += 1
        while i < len(args) and looks(args[i]) and looks(values[0]):
            values.append(args[i])
            i += 1
        if kind == "numbers":
            out.append(",".join(values))
        else:
            out.append(values[0])
            for value in values[1:]:
                out += [flag, value]
    return out


class _Group(TyperGroup):
    """Typer's group, with usage errors as one ``infoprobe: error:`` line and exit 2, and
    timm's several-value options (:func:`timm_values`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = timm_values(list(sys.argv[1:] if args is None else args))
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:
            e.show()  # a bare `infoprobe analyze` shows the command's help
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx else PROG
            say_error(f"{e.format_message().rstrip('.')} (see '{where} --help')")
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            say_error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort as e:  # click's answer to Ctrl-C while parsing
            interrupted = isinstance(e.__cause__, KeyboardInterrupt)
            say_error("interrupted" if interrupted else "aborted")
            sys.exit(INTERRUPTED if interrupted else 1)
        except KeyboardInterrupt:
            say_error("interrupted")
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


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _show_version(value: bool) -> None:
    if value:  # from the installed metadata: torch is not imported for this
        typer.echo(f"{PROG} {__version__} (torch {_installed('torch')}, timm {_installed('timm')})")
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name=PROG)
