"""Where the agent's task id comes from: the schedule's labels, or forget-me-not's inference.

A task id picks the replay buffer, the task-specific gains and biases, the epsilon timer and
what gets consolidated. Two sources, one interface (`TaskIds`), so the trainer never asks
which one it has:

- `ScheduleTaskIds` ("true labels", the paper's baseline): each game gets the next id the
  first time the schedule plays it, and the agent is told at every switch, so it consolidates
  the finished task there.
- `ForgetMeNotTaskIds`: the agent is not told. The learner infers an id from every chunk's
  frames (`fmn/`); when it reports an id other than the current one the trainer treats that
  as the switch (consolidates, moves on). This side keeps, per true game, how many
  transitions got which id: that decides which id plays a game in evaluation, and it is the
  confusion table at the end.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fmn.segmentation import adjusted_rand_index_of
from training.records import FMN_CONFUSION_FILE


class TaskIds(ABC):
    """The source of task ids the trainer uses."""

    told_at_switches: bool  # True: a schedule switch is a task switch (consolidate there)

    @abstractmethod
    def visit_task(self, game: str, current: int) -> int:
        """The task id to play `game` with at the start of its visit (`current`: the id in use)."""

    def note_added(self, game: str, task: int, transitions: int, inferred_frames: Mapping[int, int]) -> None:
        """The learner stored `transitions` of `game` under `task` (`inferred_frames`: frames per id it inferred)."""

    @abstractmethod
    def eval_task(self, game: str) -> int:
        """The task id whose gains and biases play `game` in an evaluation."""

    def fixed_tasks(self) -> set[int]:
        """Ids that mean the same game in every run of the config (a lost run's replay of them is still theirs)."""
        return set()

    def scalars(self, task: int, game: str) -> dict[str, float]:
        """Extra TensorBoard scalars for a log line."""
        return {}

    def finish(self, run_dir: Path, add_text: Callable[[str, str], None], say: Callable[[str], None]) -> None:
        """At the end of a run: what the ids were (text for TensorBoard, lines for the console)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class ScheduleTaskIds(TaskIds):
    """True task labels: each game gets the next id the first time the schedule plays it."""

    told_at_switches = True

    def __init__(self, games: list[str]):
        self.ids = {game: i for i, game in enumerate(dict.fromkeys(games))}

    def visit_task(self, game: str, current: int) -> int:
        return self.ids[game]

    def eval_task(self, game: str) -> int:
        return self.ids[game]

    def fixed_tasks(self) -> set[int]:
        return set(self.ids.values())

    def state_dict(self) -> dict[str, Any]:
        return {"ids": dict(self.ids)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ids = dict(state["ids"])


class ForgetMeNotTaskIds(TaskIds):
    """Ids inferred from frames by the learner's forget-me-not model; here only their bookkeeping."""

    told_at_switches = False

    def __init__(self, games: list[str], max_tasks: int):
        self.games = list(dict.fromkeys(games))
        self.max_tasks = max_tasks
        self.votes: dict[str, dict[int, int]] = {}  # true game -> inferred task -> transitions
        # true game -> inferred id -> frames: the driver keeps this, so no label reaches the learner
        self.confusion: dict[str, dict[int, int]] = {}

    def visit_task(self, game: str, current: int) -> int:
        return current  # not told: go on with the current id until the frames say otherwise

    def note_added(self, game: str, task: int, transitions: int, inferred_frames: Mapping[int, int]) -> None:
        row = self.votes.setdefault(game, {})
        row[task] = row.get(task, 0) + transitions
        row = self.confusion.setdefault(game, {})
        for inferred, frames in inferred_frames.items():
            row[inferred] = row.get(inferred, 0) + frames

    def eval_task(self, game: str) -> int:
        """The id most of the game's frames got; an unseen game gets an unused id (fresh parameters)."""
        votes = self.votes.get(game)
        if votes:
            return max(votes, key=votes.get)
        used = {t for row in self.votes.values() for t in row}
        return min(set(range(self.max_tasks)) - used, default=0)

    def scalars(self, task: int, game: str) -> dict[str, float]:
        return {"fmn/inferred_task": task, "fmn/true_game": self.games.index(game)}

    def finish(self, run_dir: Path, add_text: Callable[[str, str], None], say: Callable[[str], None]) -> None:
        """fmn_confusion.json and a text table (TensorBoard and the console), with the adjusted Rand index of the
        inferred ids against the games played (1: every game its own id, one id per game; 0: chance)."""
        confusion = self.confusion
        tasks = sorted({t for row in confusion.values() for t in row})
        counts = [[row.get(t, 0) for t in tasks] for row in confusion.values()]
        agreement = adjusted_rand_index_of(np.array(counts)) if tasks else None
        (run_dir / FMN_CONFUSION_FILE).write_text(json.dumps(
            {"tasks": tasks, "frames": {g: {str(t): n for t, n in row.items()} for g, row in confusion.items()},
             "adjusted_rand_index": agreement}, indent=2))
        header = "| game | " + " | ".join(f"task {t}" for t in tasks) + " |"
        rows = [f"| {g} | " + " | ".join(map(str, row)) + " |" for g, row in zip(confusion, counts)]
        table = "\n".join([header, "|---" * (len(tasks) + 1) + "|", *rows])
        if agreement is not None:
            table += f"\n\nadjusted Rand index of the inferred ids against the games played: {agreement:.3f}"
        add_text("fmn/confusion", table)
        say("forget-me-not confusion (frames per true game x inferred task):\n" + table)

    def state_dict(self) -> dict[str, Any]:
        return {"votes": {g: dict(row) for g, row in self.votes.items()},
                "confusion": {g: dict(row) for g, row in self.confusion.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.votes = {g: {int(t): int(n) for t, n in row.items()} for g, row in state["votes"].items()}
        self.confusion = {g: {int(t): int(n) for t, n in row.items()} for g, row in state.get("confusion", {}).items()}


def make_task_ids(task_inference: str, games: list[str], max_tasks: int) -> TaskIds:
    """The `task_inference` config value ("schedule" or "fmn") as a TaskIds."""
    if task_inference == "fmn":
        return ForgetMeNotTaskIds(games, max_tasks)
    return ScheduleTaskIds(games)
