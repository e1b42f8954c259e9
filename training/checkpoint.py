"""Checkpoint files: written atomically (temporary file, then rename), the last K kept.

A run directory's `checkpoints/` holds `ckpt_<frames>.pt` files. Loading takes the newest
one that reads back; a truncated or corrupt file is reported by name and the previous
one is used instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from common.errors import UsageError

PREFIX, SUFFIX = "ckpt_", ".pt"


def save(directory: Path, state: dict[str, Any], frames: int, *, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PREFIX}{frames:012d}{SUFFIX}"
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # atomic: a reader sees the old file or the whole new one
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))


def load(path: Path) -> dict[str, Any]:
    """One checkpoint file; UsageError naming the file if it is missing, truncated or not ours."""
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise UsageError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "config" not in state or "learner" not in state:
        raise UsageError(f"{str(path)!r} is not a checkpoint of this trainer")
    return state


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint under `directory`, skipping (and reporting) damaged ones."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise UsageError(f"no checkpoint in {str(directory)!r}")
    for path in reversed(candidates):
        try:
            return path, load(path)
        except UsageError as err:
            print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr)
    raise UsageError(f"every checkpoint in {str(directory)!r} is unreadable")


def resolve(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, a `checkpoints/` directory or a run directory -> (file, state)."""
    path = Path(path)
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        return load_latest(directory)
    return path, load(path)
