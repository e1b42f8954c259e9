"""Exploration rates: a linear epsilon schedule with a separate timer per task.

The paper anneals epsilon from 1 to 0.01 over the first 1M agent steps *of each task*,
so a game met for the first time late in the schedule still starts with full exploration.
Evaluation uses a small fixed epsilon (0.05 as in the Nature DQN protocol that the
human-normalised scores come from; 0.001 is the Double DQN paper's tuned value).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import UsageError


@dataclass(frozen=True)
class EpsilonConfig:
    start: float = 1.0
    end: float = 0.01
    decay_steps: int = 1_000_000  # agent steps on the task
    evaluation: float = 0.05


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """start at step 0, end from `decay_steps` on, linear in between."""
    if decay_steps <= 0:
        return end
    fraction = min(max(step, 0) / decay_steps, 1.0)
    return start + fraction * (end - start)


class TaskEpsilon:
    """Per-task linear epsilon: each task's timer counts only the agent steps taken on it."""

    def __init__(self, config: EpsilonConfig = EpsilonConfig()):
        for name in ("start", "end", "evaluation"):
            value = getattr(config, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"epsilon {name} must lie in [0, 1], got {value}")
        if config.decay_steps < 0:
            raise UsageError(f"epsilon decay_steps must be >= 0, got {config.decay_steps}")
        self.config = config
        self._steps: dict[int, int] = {}

    def steps(self, task: int) -> int:
        return self._steps.get(task, 0)

    def value(self, task: int, evaluation: bool = False) -> float:
        """Epsilon for the next action on `task` (the fixed evaluation epsilon if `evaluation`)."""
        if evaluation:
            return self.config.evaluation
        cfg = self.config
        return linear_epsilon(self.steps(task), cfg.start, cfg.end, cfg.decay_steps)

    def advance(self, task: int, steps: int = 1) -> float:
        """Count `steps` agent steps on `task`; returns the task's new epsilon."""
        if steps < 0:
            raise UsageError(f"cannot advance an epsilon timer by {steps} steps")
        self._steps[task] = self.steps(task) + steps
        return self.value(task)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self._steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self._steps = {int(task): int(steps) for task, steps in dict(state["steps"]).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"not a TaskEpsilon state: missing or bad entry {err}") from None
