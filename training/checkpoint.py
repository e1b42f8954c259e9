"""Checkpoints: their files and the one place that knows what is inside them.

Files: a run directory's `checkpoints/` holds `ckpt_<frames>.pt`, written atomically
(temporary file, then rename), the last K kept. Loading takes the newest one that reads
back; a truncated or corrupt file is reported by name and the previous one is used instead.

Layout: `make_state` writes it and the accessors below read it (`policy`, `task_fisher`,
`num_updates`), so no other module spells out the nested keys.

    config         the resolved run config (a dict)
    counters       the driver's counters (`training.loop.Counters`)
    epsilon        the per-task epsilon timers
    task_ids       the task-id source's state (`training.task_ids`)
    current_task   the task being trained
    learner        `LearnerService.state_dict()`: {"learner": Learner state, "updates_per_task", "fmn", ...}
    consolidation  `ConsolidationService.state_dict()`: {"terms": {task: (fisher, anchors)}, ...}
    replay         the manifest of the replay files beside it (`training.replay_files`), or None
"""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import UsageError, disk_full_aborts, free_bytes
from training.replay_files import ReplayExport, ReplayFiles

PREFIX, SUFFIX = "ckpt_", ".pt"
LAYOUT = {"config", "counters", "epsilon", "task_ids", "current_task", "learner", "consolidation"}


FULL_BELOW_BYTES = 16 * 2**20  # a failed write that left less room than this ran out of disk


def save(directory: Path, state: dict[str, Any], frames: int, *, keep: int,
         replay: tuple[ReplayFiles, Mapping[int, ReplayExport]] | None = None) -> Path:
    """Write a checkpoint: first what `replay` (the run's replay files, what the buffers added) adds to
    the replay files, then the checkpoint file naming them; then drop what the last `keep` do not need."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PREFIX}{frames:012d}{SUFFIX}"
    temporary = path.with_suffix(".tmp")
    after = full_disk_hint(directory)
    state["replay"] = None
    if replay is not None:
        files, exports = replay
        with disk_full_aborts(files.directory / "task*.npz", "the replay buffers of a checkpoint", after):
            state["replay"] = files.write(exports, frames)
    try:
        with disk_full_aborts(path, "a checkpoint", after), open(temporary, "wb") as handle:
            try:
                torch.save(state, handle)
            except RuntimeError as err:  # torch's zip writer reports a failed write without its errno
                if free_bytes(directory) < FULL_BELOW_BYTES:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from err
                raise
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)  # a partial file would only take the space the next try needs
        raise
    os.replace(temporary, path)  # atomic: a reader sees the old file or the whole new one
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    if replay is not None:
        replay[0].prune(int(p.name[len(PREFIX):-len(SUFFIX)]) for p in list_checkpoints(directory))
    return path


def full_disk_hint(directory: Path) -> str:
    """What is left when the disk fills up: the newest complete checkpoint and how to continue from it."""
    kept = list_checkpoints(directory)
    return (f"; the newest complete checkpoint is {kept[-1].name}: free space, then continue with "
            f"`python run.py train --resume {directory.parent}`" if kept else "; no checkpoint was complete yet")


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))


def resume_hint(directory: Path, run_dir: Path) -> str:
    """What a user who lost a run can do: the last good checkpoint and the command that continues from it."""
    files = list_checkpoints(directory)
    if not files:
        return "no checkpoint was written yet"
    return f"last good checkpoint: {files[-1]}; continue with: python run.py train --resume {run_dir}"


def load(path: Path) -> dict[str, Any]:
    """One checkpoint file; UsageError naming the file if it is missing, truncated or not ours."""
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise UsageError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not LAYOUT <= set(state):
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


# ---- the layout ----------------------------------------------------------------------------


def make_state(*, config: dict, counters: dict, epsilon: dict, task_ids: dict, current_task: int,
               learner: dict, consolidation: dict) -> dict[str, Any]:
    """A checkpoint's contents (see the module docstring)."""
    return {"config": config, "counters": counters, "epsilon": epsilon, "task_ids": task_ids,
            "current_task": current_task, "learner": learner, "consolidation": consolidation}


def num_updates(state: Mapping[str, Any]) -> int:
    """Learner updates taken when the checkpoint was written."""
    return int(state["learner"]["learner"]["num_updates"])


def has_replay(state: Mapping[str, Any]) -> bool:
    return bool(state.get("replay"))


def task_fisher(state: Mapping[str, Any], task: int) -> dict[str, Any] | None:
    """The Fisher the consolidation actor kept for `task`, if any (online EWC keeps none per task)."""
    term = (state["consolidation"].get("terms") or {}).get(task)
    if term is None:
        return None
    return term[0] or None


@dataclass
class Policy:
    """What playing a checkpoint's agent needs: its config, weights and the task id of each game."""

    path: Path
    config: Any  # training.config.RunConfig
    frames: int
    weights: dict[str, Any]  # the online network's state_dict
    game_tasks: dict[str, int]


def policy(path: str | Path) -> tuple[Policy, dict[str, Any]]:
    """The trained agent in a checkpoint file or run directory, and the checkpoint's whole state."""
    from training.config import config_from_dict
    from training.task_ids import make_task_ids

    file, state = resolve(path)
    config = config_from_dict(state["config"], check_memory=False)
    task_ids = make_task_ids(config.task_inference, list(config.games), config.agent.network.max_tasks)
    task_ids.load_state_dict(state["task_ids"])
    return Policy(
        path=file, config=config, frames=int(state["counters"]["frames"]),
        weights=state["learner"]["learner"]["online"],
        game_tasks={game: task_ids.eval_task(game) for game in config.games},
    ), state
