"""The replay ratio: how many updates the learner is owed, and whether the actors may collect more.

One update per `agent.update_period` agent steps, counted only for steps added while their task's
buffer was ready for training (a fresh task first fills `agent.learning_starts`). The actors may
run at most `max_lead` agent steps ahead of the learner: the steps stored but not yet trained
on, plus the steps being played or on their way to the replay. Ray-free, so the trainer and the
benchmark share this arithmetic instead of each recomputing it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Pacing:
    update_period: int  # agent steps per update
    max_lead: int  # agent steps the actors may run ahead of the learner
    trainable_steps: int = 0  # agent steps added while their task's buffer was ready for training
    trainable_steps_per_task: dict[int, int] = field(default_factory=dict)
    updates_submitted: int = 0  # sent to the learner
    updates_done: int = 0  # reported back by the learner
    steps_in_flight: int = 0  # being played, or played and not yet stored (not saved: nothing is in flight on resume)

    @classmethod
    def for_run(cls, update_period: int, steps_per_collect: int, num_env_actors: int) -> Pacing:
        """Two collects per actor of lead: enough to keep the learner fed, little enough to stay on the ratio."""
        return cls(update_period, max_lead=2 * steps_per_collect * num_env_actors)

    def owed_updates(self) -> int:
        """Updates the replay ratio asks for that have not been sent to the learner yet."""
        return self.trainable_steps // self.update_period - self.updates_submitted

    def lead(self) -> int:
        """Agent steps the actors are ahead of the learner's updates."""
        return self.trainable_steps - self.updates_done * self.update_period + self.steps_in_flight

    def may_collect(self, replay_ready: bool) -> bool:
        """Until the buffer is ready nothing is trained, so nothing holds the actors back."""
        return not replay_ready or self.lead() < self.max_lead

    def collect_started(self, steps: int) -> None:
        self.steps_in_flight += steps

    def collect_lost(self, steps: int) -> None:
        self.steps_in_flight -= steps

    def collect_stored(self, steps: int, task: int, transitions: int, ready: bool) -> None:
        self.steps_in_flight -= steps
        if ready:
            self.trainable_steps += transitions
            self.trainable_steps_per_task[task] = self.trainable_steps_per_task.get(task, 0) + transitions

    def next_slice(self, max_updates: int) -> int:
        """Updates to send now (0: none owed), counted as submitted."""
        n = min(max_updates, self.owed_updates())
        self.updates_submitted += max(n, 0)
        return max(n, 0)

    def trained(self, total_updates: int) -> int:
        """The learner reports `total_updates` so far; returns how many are new."""
        done = total_updates - self.updates_done
        self.updates_done = total_updates
        return done

    def resume_at(self, updates: int) -> None:
        """A checkpoint's learner took `updates`; owed updates that were not taken go with the replay they sampled."""
        self.updates_done = self.updates_submitted = updates
        self.trainable_steps = updates * self.update_period

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        for transient in ("update_period", "max_lead", "steps_in_flight"):
            del state[transient]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = {f.name for f in fields(self)} - {"update_period", "max_lead", "steps_in_flight"}
        for name in saved:
            setattr(self, name, state[name])
        self.trainable_steps_per_task = {int(t): int(n) for t, n in self.trainable_steps_per_task.items()}
