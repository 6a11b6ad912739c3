"""The typer options of each command, built from :class:`~infoprobe.options.RunOptions`.

Nothing here lists an option: :func:`command` reads every field the command takes (its
flags, help, panel, kind and choices) and gives the command one typer option per field.
The values reach the command as the API's keyword arguments, so the API checks them
(:meth:`~infoprobe.options.RunOptions.of`) for both.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from enum import Enum
from functools import cache
from typing import Annotated, Any

import typer

from infoprobe.cli.app import app
from infoprobe.cli.errors import failures
from infoprobe.options import Spec, specs

__all__ = ["argument", "command", "parameters"]

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "parsed": str}


@cache
def _choices(name: str, choices: tuple[str, ...]) -> type[Enum]:
    """A str Enum of ``choices`` (typer shows and checks them)."""
    return Enum(name, {c: c for c in choices}, type=str)  # type: ignore[return-value]


def _annotation(name: str, spec: Spec) -> Any:
    if spec.kind == "bool":
        kind: Any = bool
    elif spec.kind == "choice":
        kind = _choices(name, spec.choices)
    elif spec.several == "pairs":
        kind = list[str]
    else:
        kind = _TYPES[spec.kind]
    # a flag that turns a default-on option off declares click's secondary name only
    flags = (f" /{spec.flags[0]}",) if spec.negatable else spec.flags
    # a flag needs no metavar; defaults are in the help, where they fit one line at 80 columns
    metavar = "" if spec.kind == "bool" else spec.metavar
    option = typer.Option(
        *flags,
        help=spec.help,
        rich_help_panel=spec.panel,
        metavar=metavar,
        show_default=False,
    )
    return Annotated[kind if spec.kind == "bool" else kind | None, option]


def _parameter(name: str, spec: Spec, default: Any) -> inspect.Parameter:
    if spec.kind == "choice" and default is not None:
        default = _choices(name, spec.choices)(default)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_annotation(name, spec)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return value or None  # typer gives [] for a list option not given
    return value


def parameters(command: str) -> list[inspect.Parameter]:
    """One typer option per :class:`RunOptions` field that ``command`` takes."""
    from infoprobe import options

    defaults = {f.name: f.default for f in dataclasses.fields(options.RunOptions)}
    return [_parameter(n, s, defaults[n]) for n, s in specs(command)]


def command(name: str, *, arguments: list[inspect.Parameter], epilog: str) -> Callable:
    """Register ``body(*arguments, options)`` as command ``name``, taking every option of
    :class:`RunOptions` that ``name`` takes; ``options`` is a dict of their values, as the
    API takes them. The body runs under :func:`~infoprobe.cli.errors.failures` (inside the
    torchrun process group, so that a failure is reported once)."""

    def register(body: Callable[..., None]) -> Callable[..., None]:
        def run(**kwargs: Any) -> None:
            positional = {p.name: kwargs.pop(p.name) for p in arguments}
            values = {n: _plain(v) for n, v in kwargs.items()}
            debug, resumable = bool(values.get("debug")), "resume" in values
            with ExitStack() as stack:
                stack.enter_context(failures(debug, resumable))
                stack.enter_context(_process_group(values.get("device", "auto")))
                stack.enter_context(failures(debug, resumable))
                body(**positional, options=values)

        run.__signature__ = inspect.Signature([*arguments, *parameters(name)])  # type: ignore[attr-defined]
        run.__doc__ = body.__doc__
        app.command(name, epilog=epilog)(run)
        return body

    return register


@contextmanager
def _process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the command (no-op in one process)."""
    from infoprobe import distributed  # imports torch: only once a command runs

    try:
        distributed.setup(device)
        yield
    finally:
        distributed.teardown()


def argument(name: str, kind: Any, *, metavar: str, help: str) -> inspect.Parameter:
    """A positional argument of a command (the checkpoints)."""
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[kind, typer.Argument(metavar=metavar, help=help, show_default=False)],
    )
