"""Continual-learning strategies: what a run does about forgetting, plugged into the trainer as hooks.

A strategy is a `TrainerHook` (it acts at task switches, mostly) that may start actors of its own
and keep state in checkpoints. The trainer calls it whatever it is, so a new strategy (rehearsal,
reset, ...) is a new class here and a config value, not flags checked across the loop.

    FineTuning   plain Double DQN from task to task: no protection (`agent.ewc_enabled: false`)
    EWC          at each switch, the finished task's Fisher on the consolidation actor
                 (`agents.dqn.consolidation`), whose merged anchors go straight to the learner
    Reset        at each switch, fresh weights and optimizer state: no interference and no
                 retention, the reference for how much a task gains from what came before

The config's `strategy` chooses (`auto`: EWC or FineTuning, as `agent.ewc_enabled` says).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from agents.dqn.consolidation import NO_TASK, Anchors, worth_consolidating
from training.actors import ConsolidationActor
from training.config import RunConfig
from training.hooks import TrainerHook

if TYPE_CHECKING:
    from training.loop import Trainer


class ContinualStrategy(TrainerHook):
    name: str

    def actors(self, config: RunConfig) -> dict[str, Any]:
        """Ray actors this strategy needs, by name (started with the run's other actors)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FineTuning(ContinualStrategy):
    name = "finetune"


class EWC(ContinualStrategy):
    name = "ewc"

    def __init__(self):
        self.consolidator = None

    def actors(self, config: RunConfig) -> dict[str, Any]:
        # Rare, short work beside training: it reserves no CPU.
        self.consolidator = ConsolidationActor.options(num_cpus=0).remote(config, "cpu")
        return {"consolidation": self.consolidator}

    def at_task_switch(self, trainer: Trainer, old: int, new: int | None) -> None:
        if not worth_consolidating(trainer.progress.replay_size, trainer.config.agent):
            return
        learner = trainer.actors.learner
        inputs = learner.consolidation_inputs.remote(old)  # learner -> consolidation actor directly
        anchors = self.consolidator.consolidate.remote(inputs, NO_TASK if new is None else new,
                                                       dict(trainer.progress.counters.frames_per_task))
        learner.set_anchors.remote(anchors)
        trainer.when_done(anchors, lambda result: self._consolidated(trainer, result))

    def _consolidated(self, trainer: Trainer, anchors: Anchors) -> None:
        trainer.progress.counters.consolidations += 1
        frames = trainer.progress.counters.frames
        trainer.writer.scalar("ewc/fisher_mean", anchors.fisher_mean, frames)
        trainer.writer.scalar("ewc/anchored_tasks", len(anchors.tasks), frames)
        trainer.say(f"consolidated task {anchors.fisher_task}: mean Fisher {anchors.fisher_mean:.3g}; "
                    f"penalty now anchors tasks {anchors.tasks}")

    def state_dict(self) -> dict[str, Any]:
        return ray.get(self.consolidator.state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:  # a checkpoint of a run without EWC has none
            ray.get(self.consolidator.load_state_dict.remote(state))


class Reset(ContinualStrategy):
    name = "reset"

    def __init__(self):
        self.resets = 0

    def at_task_switch(self, trainer: Trainer, old: int, new: int | None) -> None:
        if new is None:  # the run's end: nothing more to learn
            return
        self.resets += 1
        # a new seed per reset: a fresh network, not the first one again
        trainer.actors.learner.reset_weights.remote(trainer.config.seed * 100_003 + self.resets)
        trainer.feeder.sync_weights()  # queued after the reset on the learner: the actors play the new task fresh
        trainer.say(f"reset the network and optimizer for task {new} (reset {self.resets})")

    def state_dict(self) -> dict[str, Any]:
        return {"resets": self.resets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resets = int((state or {}).get("resets", 0))


def make_strategy(config: RunConfig) -> ContinualStrategy:
    if config.strategy == "reset":
        return Reset()
    return EWC() if config.agent.ewc_enabled else FineTuning()
