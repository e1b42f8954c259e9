"""The game schedule: which game each visit plays.

A schedule is a list of visits, each `frames_per_visit` frames of one game. With
`order: random` each round is a seeded shuffle of the games (never the same game twice in
a row across a round boundary), as in the paper's random order with repeats. Task ids
(which game's buffer, gains and biases a chunk belongs to) come from `training.task_ids`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.config import ScheduleConfig


@dataclass(frozen=True)
class Visit:
    """One visit as planned: `start_frame` and `end_frame` are where the plan puts it. The trainer
    plays each visit for `frames_per_visit` frames from whenever it really began, so a real run
    drifts later; `reporting.runs.played_visits` recovers the frames it really played."""

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

    def games(self) -> list[str]:
        return list(dict.fromkeys(v.game for v in self.visits))
