"""Checkpoints of one run, ordered by their training step."""

from __future__ import annotations

import filecmp
import re
from dataclasses import dataclass, field
from pathlib import Path

from infoprobe.checkpoints.files import checkpoint_files, checkpoint_stem
from infoprobe.checkpoints.meta import STEP_KEYS
from infoprobe.checkpoints.read import recorded_meta
from infoprobe.errors import InfoprobeError, short_list


def checkpoint_step(path: str | Path, *, trust_checkpoint: bool = False) -> int | None:
    """The 'step', 'global_step' or 'epoch' a checkpoint records (in that order), else None."""
    meta = recorded_meta(path, trust_checkpoint=trust_checkpoint)
    for k in STEP_KEYS:
        if isinstance(meta.get(k), int):
            return meta[k]
    return None


def _natural_key(path: Path) -> tuple:
    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts if s)


#: File names (without suffix) that training code writes as a copy of another checkpoint:
#: timm's last / model_best, Lightning's last (last-v1 on a rerun), best.
_ALIASES = re.compile(r"(last|best|model_best)(-v\d+)?", re.I)


@dataclass(frozen=True)
class SeriesPlan:
    """The checkpoints of one run to measure, and why others are left out.

    ``steps``: ``(path, step)`` in step order; ``skipped``: ``(path, reason)`` of aliases
    that duplicate a step already present; ``note``: why the steps are positions, if so;
    ``unreadable``: ``(path, error)`` of files whose step could not be read (corrupt, or
    pickled without ``trust_checkpoint``), left out of the order.
    """

    steps: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]]
    note: str = ""
    unreadable: list[tuple[Path, InfoprobeError]] = field(default_factory=list)


def _alias_of(alias: Path, step: int | None, others: list[tuple[Path, int | None]]) -> Path | None:
    """The checkpoint ``alias`` duplicates: the one recording the same step, else the one
    with the same bytes (a copy saved without a step)."""
    for path, other in others:
        if step is not None and other == step:
            return path
    for path, _ in others:
        if (
            alias.is_file()
            and path.is_file()
            and path.stat().st_size == alias.stat().st_size
            and filecmp.cmp(alias, path, shallow=False)
        ):
            return path
    return None


def series_plan(paths: list[str | Path], *, trust_checkpoint: bool = False) -> SeriesPlan:
    """Checkpoints of one run with their training step, ordered by it.

    Directories are expanded to the checkpoint files directly inside them. Aliases
    (``last``, ``model_best``, ``best`` and Lightning's ``last-vN``) that duplicate another
    checkpoint, by recorded step or by their bytes, are skipped. When every file records a
    step (:func:`checkpoint_step`) that is the step; otherwise, when every file name holds a
    number, it is the last number in the name (``ep2`` before ``ep10``); otherwise every step
    is the position in natural name order, aliases last. One series never mixes the sources.
    """
    recorded: dict[Path, int | None] = {}
    unreadable = []
    for f in checkpoint_files(paths):
        try:
            recorded[f] = checkpoint_step(f, trust_checkpoint=trust_checkpoint)
        except InfoprobeError as e:  # one bad file does not stop the series (track)
            unreadable.append((f, e))
    files = list(recorded)
    plain = [f for f in files if not _ALIASES.fullmatch(checkpoint_stem(f))]
    kept, skipped = list(plain), []
    for f in files:
        if f in plain:
            continue
        twin = _alias_of(f, recorded[f], [(p, recorded[p]) for p in plain])
        if twin is None:
            kept.append(f)
        else:
            step = recorded[twin] if recorded[twin] is not None else name_number(twin)
            what = f"step {step} ({twin.name})" if step is not None else twin.name
            skipped.append((f, f"an alias of {what}"))
    if kept and all(recorded[f] is not None for f in kept):
        order = sorted(kept, key=lambda f: (recorded[f], _natural_key(f)))
        return SeriesPlan([(f, recorded[f]) for f in order], skipped, "", unreadable)
    numbers = {f: name_number(f) for f in kept}
    if all(n is not None for n in numbers.values()):
        order = sorted(kept, key=lambda f: (numbers[f], _natural_key(f)))
        return SeriesPlan([(f, numbers[f]) for f in order], skipped, "", unreadable)
    order = sorted(kept, key=lambda f: (f not in plain, _natural_key(f)))
    unnumbered = [f.name for f in order if numbers[f] is None]
    note = (
        f"steps are positions: {short_list(unnumbered)} record no step and carry no number "
        "in the file name"
    )
    return SeriesPlan([(f, i) for i, f in enumerate(order)], skipped, note, unreadable)


def name_number(path: Path) -> int | None:
    """The last number in a file name (``ep10.pt`` -> 10), None without one."""
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def series_steps(
    paths: list[str | Path], *, trust_checkpoint: bool = False
) -> list[tuple[Path, int]]:
    """``(path, step)`` of :func:`series_plan`, aliases of a step left out; the error of
    the first file whose step cannot be read."""
    plan = series_plan(paths, trust_checkpoint=trust_checkpoint)
    if plan.unreadable:
        raise plan.unreadable[0][1]
    return plan.steps


def series_order(paths: list[str | Path], *, trust_checkpoint: bool = False) -> list[Path]:
    """The checkpoints of :func:`series_steps`, without their steps."""
    return [f for f, _ in series_steps(paths, trust_checkpoint=trust_checkpoint)]
