"""The registry of every path a run reads and writes, checked before any work.

Inputs are the checkpoints (folders expanded, and the ``config.json`` of a ``save_for_hf``
folder), every option whose role is ``input`` (``--data``, ``--class-map``,
``--valid-labels`` given as a file, ``--bn-data``, ``--finetune-data``), a typed
``--arch path/to/file.py:factory`` file or ``local-dir:FOLDER``, and, with
``--trust-checkpoint``, the model file a checkpoint records. Outputs are every option whose
role is ``output``, with the files derived from them (``FILE.run.json``,
``FILE.per_class.csv``, one features file per checkpoint).

Every path is resolved (``~``, ``..`` and symbolic links followed); existing files are also
compared by device and inode, so a hard link is caught. :meth:`PathRegistry.check` refuses,
naming both sides:

- an output that is an input, or lies inside an input folder;
- two outputs that are one file;
- an existing output that is not a regular file (a device, FIFO, socket, folder, or a
  symbolic link to one): the atomic rename would replace it. ``-`` writes to standard
  output where the option allows it;
- an output whose folder is missing or not writable, or whose name is too long.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infoprobe.errors import InputError
from infoprobe.options import Role, RunOptions

__all__ = ["STDOUT", "PathEntry", "PathRegistry", "resolved"]

#: The name that means standard output for the options that allow it (--csv, --json).
STDOUT = "-"
#: The longest file name most file systems allow, in bytes.
_NAME_MAX = 255


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~``, ``..`` and symbolic links resolved; InputError when it cannot be
    (a name too long, a symlink loop)."""
    p = Path(path).expanduser()
    try:
        return p.resolve()
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: cannot resolve this path ({e}); check it") from None


@dataclass(frozen=True)
class PathEntry:
    """One path of the run: ``label`` names it in messages (``--csv``, ``checkpoint``),
    ``given`` is how it was typed, ``path`` the resolved path and ``inode`` its
    ``(st_dev, st_ino)`` when it exists."""

    label: str
    given: str
    path: Path
    inode: tuple[int, int] | None
    folder: bool = False

    @classmethod
    def of(cls, label: str, given: str | os.PathLike) -> PathEntry:
        path = resolved(given)
        try:
            st = path.stat()
        except OSError:
            return cls(label, str(given), path, None)
        return cls(label, str(given), path, (st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode))

    def same(self, other: PathEntry) -> bool:
        """Whether both name one file (by path, or by inode for existing files)."""
        return self.path == other.path or (self.inode is not None and self.inode == other.inode)

    def inside(self, folder: PathEntry) -> bool:
        """Whether this path lies inside the folder ``folder``."""
        return folder.folder and self.path.is_relative_to(folder.path)

    def describe(self) -> str:
        return f"{self.label} {self.given}"


class PathRegistry:
    """Every input and output of one run; :meth:`check` before any work."""

    def __init__(self) -> None:
        self.inputs: list[PathEntry] = []
        self.outputs: list[PathEntry] = []
        self._folders: set[str] = set()

    @classmethod
    def of(
        cls, command: str, opts: RunOptions, checkpoints: Sequence[str], given: Sequence[str] = ()
    ) -> PathRegistry:
        """The registry of ``command`` run with ``opts`` on ``checkpoints`` (the files the
        rows measure) given as ``given`` (folders among them, when they differ)."""
        registry = cls()
        for checkpoint in dict.fromkeys([*given, *checkpoints]):
            registry.add_input("checkpoint", checkpoint)
            config = _hf_config(checkpoint)
            if config is not None:
                registry.add_input(f"checkpoint {checkpoint}'s config", config)
        for name, spec in opts.fields(Role.INPUT, command):
            value = getattr(opts, name)
            if isinstance(value, (str, os.PathLike)):
                registry.add_input(spec.flag, value)
        for label, path in _arch_inputs(opts.arch):
            registry.add_input(label, path)
        if opts.trust_checkpoint:  # only then is a recorded model file ever imported
            for checkpoint in checkpoints:
                recorded = _recorded_model_file(checkpoint)
                if recorded is not None:
                    registry.add_input(f"checkpoint {checkpoint}'s model file", recorded)
        for name, spec in opts.fields(Role.OUTPUT, command):
            value = getattr(opts, name)
            if value is None or (spec.stdout and value == STDOUT):
                continue
            if not spec.template:
                registry.add_output(spec.flag, value, folder=spec.folder)
            for label, path in spec.derived(value, opts, checkpoints) if spec.derived else []:
                registry.add_output(label, path)
        return registry

    def add_input(self, label: str, path: str | os.PathLike) -> None:
        self.inputs.append(PathEntry.of(label, path))

    def add_output(self, label: str, path: str | os.PathLike, *, folder: bool = False) -> None:
        entry = PathEntry.of(label, path)
        self.outputs.append(entry)
        if folder:
            self._folders.add(entry.label)

    def check(self) -> None:
        """InputError, naming both sides, for the first conflict (see the module docstring)."""
        for i, out in enumerate(self.outputs):
            folder = out.label in self._folders
            _check_target(out, folder)
            for source in self.inputs:
                if out.same(source):
                    raise InputError(
                        f"{out.describe()} is {source.describe()}, an input of this run: "
                        "writing it would destroy the input; write the output elsewhere"
                    )
                if out.inside(source) or (folder and source.inside(_as_folder(out))):
                    where = "lies inside" if out.inside(source) else "holds"
                    raise InputError(
                        f"{out.describe()} {where} {source.describe()}, an input of this run "
                        "(written there it would become part of the input next time); write "
                        "the output elsewhere"
                    )
            for other in self.outputs[:i]:
                if out.same(other):
                    raise InputError(
                        f"{out.describe()} is also {other.describe()}: two outputs of one "
                        "run cannot be one file; give each its own name"
                    )

    def input_paths(self, label: str) -> list[Path]:
        return [e.path for e in self.inputs if e.label == label]


def _as_folder(entry: PathEntry) -> PathEntry:
    return PathEntry(entry.label, entry.given, entry.path, entry.inode, folder=True)


def _check_target(out: PathEntry, folder: bool) -> None:
    """InputError unless ``out`` can be written as a regular file (or made as a folder)."""
    what = out.describe()
    if any(len(os.fsencode(part)) > _NAME_MAX for part in out.path.parts):
        raise InputError(f"{what}: a name in this path is over {_NAME_MAX} bytes; shorten it")
    try:  # the name as given, followed by the kernel: /dev/stdout -> /proc/self/fd/1 -> a pipe
        mode = os.stat(Path(out.given).expanduser()).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise InputError(f"{what}: cannot use this path ({e.strerror}); check it") from None
    if mode is not None:
        kind = _kind(mode)
        wanted = "folder" if folder else "regular file"
        if kind != wanted:
            hint = " (or '-' for standard output)" if not folder and "--csv" in what else ""
            raise InputError(
                f"{what} is a {kind}, not a {wanted}: writing it would replace it; give a "
                f"{wanted}{hint}"
            )
        if not os.access(out.path, os.W_OK):
            raise InputError(f"{what}: the {kind} exists and is not writable")
    parent = out.path if folder and mode is not None else out.path.parent
    if not parent.is_dir():
        raise InputError(f"{what}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: folder {parent} is not writable")


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


def _hf_config(checkpoint: str) -> Path | None:
    """The ``config.json`` beside a checkpoint in a ``save_for_hf`` folder, if any."""
    p = Path(checkpoint).expanduser()
    folder = p if p.is_dir() else p.parent
    config = folder / "config.json"
    return config if config.is_file() else None


def _recorded_model_file(checkpoint: str) -> Path | None:
    """The ``file.py`` beside a safetensors checkpoint whose metadata records
    ``arch = "file.py:factory"`` (only the header is read)."""
    p = Path(checkpoint).expanduser()
    if not p.is_file() or not p.name.endswith(".safetensors"):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            arch = (f.metadata() or {}).get("arch", "")
    except (SafetensorError, OSError, ValueError):
        return None  # the loader reports an unreadable checkpoint
    target = arch.rpartition(":")[0] if isinstance(arch, str) else ""
    return p.parent / target if target.endswith(".py") else None


def _arch_inputs(arch: str | None) -> Iterable[tuple[str, Path]]:
    """The file of a typed ``file.py:factory`` and the folder of ``local-dir:FOLDER``."""
    if not arch:
        return []
    if arch.startswith("local-dir:"):
        return [("--arch local-dir", Path(arch.removeprefix("local-dir:")).expanduser())]
    target = arch.rpartition(":")[0]
    if target.endswith(".py"):
        return [("--arch's model file", Path(target).expanduser())]
    return []
