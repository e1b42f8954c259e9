"""Evaluation rounds: every game of the schedule played with one snapshot of the learner's weights.

A round runs on the evaluator actor alongside training, one round at a time; the trainer waits on
its refs with everything else and hands each finished one here (`handle`), which returns the
`records.EvalRound` once every game has its scores.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from envs import scores
from training import records
from training.config import RunConfig
from training.placement import Actors
from training.progress import RunProgress


@dataclass
class PendingRound:
    kind: str  # "initial", "periodic", "visit_end" or "final" (see records.EvalRound)
    frames: int
    visit_index: int
    pending: dict[Any, str]  # ref -> game
    scores: dict[str, list[float]] = field(default_factory=dict)


def eval_round(kind: str, frames: int, visit_index: int, episodes: dict[str, list[float]]) -> records.EvalRound:
    """The record of a round from every game's episode scores."""
    means = {game: sum(values) / len(values) for game, values in episodes.items()}
    normalized = {game: scores.normalized(game, score) for game, score in means.items()}
    return records.EvalRound(kind, frames, visit_index, means, normalized, scores.capped_sum(normalized),
                             episodes=episodes)


class EvalRounds:
    def __init__(self, config: RunConfig, actors: Actors, progress: RunProgress, say: Callable[[str], None]):
        self.config, self.actors, self.progress, self.say = config, actors, progress, say
        self.current: PendingRound | None = None

    @property
    def running(self) -> bool:
        return self.current is not None

    def refs(self) -> list[Any]:
        return list(self.current.pending) if self.current else []

    def start(self, kind: str) -> None:
        """Snapshot the learner's weights (after its queued updates) and play every game of the schedule."""
        cfg, evaluator, progress = self.config, self.actors.evaluator, self.progress
        evaluator.set_weights.remote(self.actors.learner.weights.remote())
        pending = {
            evaluator.evaluate.remote(game, progress.task_ids.eval_task(game), cfg.eval.episodes,
                                      cfg.epsilon.evaluation, cfg.eval.max_episode_frames): game
            for game in progress.schedule.games()
        }
        self.current = PendingRound(kind, progress.counters.frames, progress.counters.visit_index, pending)

    def handle(self, ref) -> records.EvalRound | None:
        """One game's scores arrived; the round's record once it is complete."""
        round_ = self.current
        game = round_.pending.pop(ref)
        try:
            round_.scores[game] = ray.get(ref)
        except ray.exceptions.RayActorError:
            self.say(f"the evaluator died while playing {game}; this evaluation round is dropped")
            self.current = None
            return None
        if round_.pending:
            return None
        self.current = None
        return eval_round(round_.kind, round_.frames, round_.visit_index, round_.scores)

    def finish(self) -> records.EvalRound | None:
        """Wait for the round in progress, if any, and return its record."""
        result = None
        while self.current is not None:
            result = self.handle(next(iter(self.current.pending)))
        return result
