"""The resume record: what decided a run's numbers, kept beside its CSV as ``FILE.run.json``.

The record holds

- ``command``;
- ``options``: every option whose role is ``value`` (:mod:`infoprobe.options`), as JSON;
- ``inputs``: the identity of every ``input`` option's path (``--data``, ``--class-map``,
  ``--valid-labels`` as a file, ``--bn-data``, ``--finetune-data``);
- ``checkpoints``: the identity of every checkpoint, by the name its rows carry.

An identity is the resolved path, the size and a SHA-256: of the whole content for files up
to :data:`WHOLE_BELOW` bytes (class maps, label lists), else of the size with the first and
last :data:`BLOCK` bytes (checkpoints and large data: a changed file changes its size or
its ends in practice); of the sorted relative names and sizes of the files inside, for a
folder. Paths are compared by content, so ``data/x`` and ``/abs/data/x`` are one input,
and a file edited in place is another.

``--resume`` (:func:`check_resumed`) refuses a record that differs, naming the option, except
for options that only complete failed rows (``completes`` in the spec: ``--arch``,
``--num-classes``...) where the earlier run left them unset, and checkpoints that have no
finished row (a failed one may be fixed and measured again).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infoprobe.errors import InputError
from infoprobe.options import Role, RunOptions, specs

__all__ = ["BLOCK", "WHOLE_BELOW", "check_resumed", "identity", "read_record", "run_record"]

#: Files up to this size are hashed whole.
WHOLE_BELOW = 1 << 20
#: Larger files: the size and this many bytes at each end are hashed.
BLOCK = 1 << 20
#: A record file larger than this is not infoprobe's.
_MAX_RECORD_BYTES = 16 << 20
#: Folders with more files than this are identified by their first files only.
_MAX_LISTED = 2_000_000


def identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file or folder (see the module docstring)."""
    p = Path(path).expanduser().resolve()
    digest = hashlib.sha256()
    if p.is_dir():
        size = 0
        for i, (name, n) in enumerate(_listing(p)):
            if i >= _MAX_LISTED:
                break
            digest.update(f"{name}\0{n}\n".encode("utf-8", "surrogateescape"))
            size += n
    else:
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= WHOLE_BELOW:
                digest.update(f.read())
            else:
                digest.update(size.to_bytes(8, "little"))
                digest.update(f.read(BLOCK))
                f.seek(size - BLOCK)
                digest.update(f.read(BLOCK))
    return {"path": str(p), "size": size, "sha256": digest.hexdigest()}


def _listing(folder: Path) -> Iterable[tuple[str, int]]:
    """``(relative name, size)`` of every file under ``folder``, sorted, each real file
    once (symbolic-link loops are not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            try:
                st = full.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((str(full.relative_to(folder)), st.st_size))
    return sorted(found)


def jsonable(value: Any) -> Any:
    """An option value as JSON: tuples as lists, paths as str."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def run_record(command: str, opts: RunOptions, checkpoints: Sequence[str]) -> dict[str, Any]:
    """The record of ``command`` run with ``opts`` on ``checkpoints`` (names as the rows
    carry them)."""
    values = {n: jsonable(getattr(opts, n)) for n, _ in opts.fields(Role.VALUE, command)}
    inputs = {}
    for name, _ in opts.fields(Role.INPUT, command):
        value = getattr(opts, name)
        if isinstance(value, (str, os.PathLike)):
            inputs[name] = identity(value)
        elif value is not None:  # --valid-labels given as indices is a value
            values[name] = jsonable(value)
    return {
        "command": command,
        "options": values,
        "inputs": inputs,
        "checkpoints": {str(c): identity(c) for c in dict.fromkeys(checkpoints)},
    }


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A ``FILE.run.json`` written by infoprobe; InputError for anything else (missing, not
    a regular file, too large, not JSON, nested past Python's limit, not a record)."""
    p = Path(path)
    how = "remove it and its CSV, or write to another --csv"
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(
            f"--resume: {p.name}, which records the options of the run that wrote the CSV, is "
            f"missing, so its rows cannot be checked; remove the CSV or write to another --csv"
        ) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_RECORD_BYTES:
        raise InputError(f"--resume: {p} is not a run record (not a small regular file); {how}")
    try:
        record = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = type(e).__name__ if isinstance(e, RecursionError) else str(e)[:120]
        raise InputError(f"--resume: cannot read {p} ({reason}); {how}") from None
    fields = ("command", "options", "inputs", "checkpoints")
    if not isinstance(record, dict) or any(
        not isinstance(record.get(k), (str, dict)) for k in fields
    ):
        raise InputError(f"--resume: {p} is not a run record of this version; {how}")
    return record


def check_resumed(
    recorded: Mapping, current: Mapping, finished: Iterable[str], csv: str, *, completes: bool
) -> dict[str, Any]:
    """InputError, naming the first option, input or checkpoint that differs, unless
    ``current`` may continue the rows of ``recorded``; else the record to keep (the current
    one, with the identities of finished checkpoints that this run does not name).

    ``completes``: the rows measure independent checkpoints (analyze, track), so an option
    that only completes failed rows may be set where the earlier run left it unset; in a
    sweep every row measures one model, and any change is another run."""
    again = f"rerun with the same options, or write to another --csv than {csv}"
    if recorded["command"] != current["command"]:
        raise InputError(
            f"--resume: the rows in {csv} come from another run (infoprobe "
            f"{recorded['command']}); {again}"
        )
    completes_rows = {n for n, s in dict(specs()).items() if s.completes} if completes else set()
    differ = [
        f"{_flag(name)} {now['path'] if now else 'unset'} is not the {_flag(name)} they were "
        f"measured on: {_changed(was, now)}"
        for name in sorted(set(recorded["inputs"]) | set(current["inputs"]))
        for was, now in [(recorded["inputs"].get(name), current["inputs"].get(name))]
        if _content(was) != _content(now)
    ]
    differ += [
        f"{_flag(name)} {_text(now)} now, {_text(was)} then"
        for name in sorted(set(recorded["options"]) | set(current["options"]))
        for was, now in [(recorded["options"].get(name), current["options"].get(name))]
        if was != now and not (name in completes_rows and was is None)
    ]
    if differ:
        raise InputError(
            f"--resume: the rows in {csv} come from another run ({'; '.join(differ[:4])}); {again}"
        )
    for name in finished:
        was, now = recorded["checkpoints"].get(name), current["checkpoints"].get(name)
        if now is not None and _content(was) != _content(now):
            raise InputError(
                f"--resume: the rows in {csv} come from another run (checkpoint {name} is "
                f"not the file they were measured on: {_changed(was, now)}); {again}"
            )
    kept = {n: i for n, i in recorded["checkpoints"].items() if n not in current["checkpoints"]}
    return {**current, "checkpoints": {**kept, **current["checkpoints"]}}


def _content(entry: Mapping | None) -> tuple | None:
    return None if entry is None else (entry.get("size"), entry.get("sha256"))


def _changed(was: Mapping | None, now: Mapping | None) -> str:
    if was is None or now is None:
        return "it was unset then" if was is None else "it is unset now"
    if was.get("size") != now.get("size"):
        return f"{now.get('size')} bytes now, {was.get('size')} then"
    return "its content changed"


def _flag(name: str) -> str:
    spec = dict(specs()).get(name)
    return spec.flag if spec is not None else name


def _text(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)
