"""The game schedule and the source of task ids.

A schedule is a list of visits, each `frames_per_visit` frames of one game. With
`order: random` each round is a seeded shuffle of the games (never the same game twice in
a row across a round boundary), as in the paper's random order with repeats.

Task ids say which replay buffer, which task-specific gains/biases and which epsilon
timer a chunk belongs to. `ScheduleTaskIds` gives the true labels (the game's order of
first appearance); forget-me-not inference plugs in behind the same `TaskIds` interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agents.replay import TransitionChunk
from training.config import ScheduleConfig


@dataclass(frozen=True)
class Visit:
    index: int
    game: str
    start_frame: int
    end_frame: int


class Schedule:
    def __init__(self, games: list[str], config: ScheduleConfig):
        rng = np.random.default_rng(config.seed)
        order: list[str] = []
        for _ in range(config.repeats):
            round_games = list(games)
            if config.order == "random":
                round_games = [round_games[i] for i in rng.permutation(len(round_games))]
                if order and len(round_games) > 1 and round_games[0] == order[-1]:
                    round_games[0], round_games[1] = round_games[1], round_games[0]
            order.extend(round_games)
        step = config.frames_per_visit
        self.visits = [Visit(i, game, i * step, (i + 1) * step) for i, game in enumerate(order)]
        self.total_frames = len(self.visits) * step

    def visit_at(self, frame: int) -> Visit | None:
        """The visit that covers `frame`, or None once the schedule is over."""
        if frame >= self.total_frames:
            return None
        return self.visits[frame // self.visits[0].end_frame]

    def games(self) -> list[str]:
        return list(dict.fromkeys(v.game for v in self.visits))


class TaskIds(Protocol):
    """Where task ids come from: the schedule's labels, or inferred from the frames (FMN)."""

    def task_for(self, game: str, chunk: TransitionChunk | None) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ScheduleTaskIds:
    """True task labels: each game gets the next id the first time the schedule plays it."""

    def __init__(self, games: list[str]):
        self.ids = {game: i for i, game in enumerate(dict.fromkeys(games))}

    def task_for(self, game: str, chunk: TransitionChunk | None = None) -> int:
        return self.ids[game]

    def state_dict(self) -> dict:
        return {"ids": dict(self.ids)}

    def load_state_dict(self, state: dict) -> None:
        self.ids = dict(state["ids"])
