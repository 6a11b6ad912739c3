"""Finding checkpoints: files, ``save_for_hf`` folders, folders of checkpoints, their names."""

from __future__ import annotations

import os
from pathlib import Path

from infoprobe import allowlist
from infoprobe.errors import InputError

#: file name endings treated as checkpoints when a directory is expanded.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pth.tar", ".bin", ".ckpt")


#: weight files of a ``save_for_hf`` folder, in timm's order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


HF_CONFIG = "config.json"


def existing_file(path: str | Path, what: str = "checkpoint") -> Path:
    p = check_name(path, what)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist; check the path")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file; give a file, not a directory")
    return p


def hf_folder(path: str | Path) -> Path | None:
    """The ``save_for_hf`` folder ``path`` names (the folder, its config.json or one of
    :data:`HF_WEIGHT_FILES` in it), else None."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    if not (folder / HF_CONFIG).is_file():
        return None
    if p.is_dir() or p.name == HF_CONFIG or p.name in HF_WEIGHT_FILES:
        return folder
    return None


def folder_weights(folder: Path, given: Path) -> Path:
    """The weights file of a ``save_for_hf`` folder: the file given, else timm's first."""
    if given.is_file() and given.name != HF_CONFIG:
        return given
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"folder {folder} has a {HF_CONFIG} but no weights file (looked for "
        f"{', '.join(HF_WEIGHT_FILES)}); save the weights there"
    )


def check_name(path: str | Path, what: str) -> Path:
    """``path`` as a Path; InputError when a part of it is longer than the file system allows
    (255 bytes on most), which would otherwise fail as an OSError on first use."""
    p = Path(path).expanduser()
    try:
        p.exists()
    except OSError as e:
        longest = max(p.parts, key=lambda part: len(os.fsencode(part)), default=str(p))
        raise InputError(
            f"{what} {allowlist.shown(str(p))}: cannot use this path ({e.strerror}; its longest "
            f"name has {len(os.fsencode(longest))} bytes, most file systems allow 255); "
            "shorten the name"
        ) from None
    return p


def checkpoint_files(paths: list[str | Path]) -> list[Path]:
    """Checkpoints as given: a ``save_for_hf`` folder stays one checkpoint; another folder is
    expanded to the checkpoint files and ``save_for_hf`` folders directly inside it."""
    files: list[Path] = []
    for raw in paths:
        p = check_name(raw, "checkpoint")
        if p.is_dir() and hf_folder(p) is not None:
            files.append(p)  # one save_for_hf checkpoint
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if (f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES))
                or (f.is_dir() and hf_folder(f) is not None)
            )
            if not found:
                raise InputError(
                    f"directory {p} holds no checkpoint files "
                    f"({', '.join(CHECKPOINT_SUFFIXES)}) or save_for_hf folders"
                )
            files.extend(found)
        else:
            files.append(existing_file(p))
    return files


def checkpoint_stem(path: str | Path) -> str:
    """The file name without its checkpoint suffix: ``ls0.1.safetensors`` -> ``ls0.1``,
    ``last.pth.tar`` -> ``last``."""
    name = Path(path).name
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
