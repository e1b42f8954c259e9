"""EWC's consolidation, in one place: which tasks are anchored, when, and with which Fisher.

At a task switch the finished task's diagonal Fisher is taken on a sample of its buffer and
anchored at the learner's current shared weights (`ConsolidationInputs`). One Fisher and one
anchor are kept per task, so a task visited again replaces its own term instead of counting
twice. The learner gets one merged quadratic (`Anchors`) over the tasks that qualify: every
consolidated task except the one being trained now, once it was played `agent.ewc_min_frames`
frames. With online EWC the terms are folded into one running quadratic instead. Either way the
learner's cost per update stays that of one quadratic.

Plain classes (no Ray): the distribution layer's consolidation actor only wraps `Consolidation`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.dqn.config import DQNConfig
from agents.dqn.fisher import normalized, q_network_fisher
from agents.dqn.networks import QNetwork, shared_parameter_names
from ewc import EWCPenalty

NO_TASK = -1  # `current_task` at the end of a schedule: no task is being trained


@dataclass(frozen=True)
class ConsolidationInputs:
    """What a Fisher needs from the learner: the finished task, its weights and a sample of its buffer."""

    task: int
    online: dict[str, Tensor]
    target: dict[str, Tensor]
    batch: Any  # `agents.dqn.fisher.fisher_batch` of the task's buffer


@dataclass(frozen=True)
class Anchors:
    """The merged penalty the learner applies from now on, and what it was made of."""

    penalty: dict[str, Any]  # an `ewc.EWCPenalty` state
    tasks: list[int]  # the tasks it anchors
    fisher_task: int = NO_TASK  # the task whose Fisher was just taken
    fisher_mean: float = 0.0  # that Fisher's mean, for logging


def worth_consolidating(replay_size: int, agent: DQNConfig) -> bool:
    """When: a task's Fisher is taken only if its buffer holds at least one minibatch."""
    return replay_size >= agent.batch_size


class Consolidation:
    def __init__(self, agent: DQNConfig, device: str = "cpu", seed: int = 0):
        self.agent = agent
        self.device = torch.device(device)
        self.online = QNetwork(agent.network).to(self.device)
        self.target = QNetwork(agent.network).to(self.device)
        self.shared_names = shared_parameter_names(self.online)
        self.terms: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}  # task -> (fisher, anchors)
        self.online_penalty = self._new_penalty()  # used by online EWC only
        self.generator = torch.Generator().manual_seed(seed)

    def _new_penalty(self) -> EWCPenalty:
        agent = self.agent
        return EWCPenalty(agent.ewc_lambda, online=agent.ewc_online, gamma=agent.ewc_online_gamma,
                          include=self.shared_names)

    def eligible(self, frames_per_task: Mapping[int, int]) -> set[int]:
        """Which tasks may be anchored: those played at least `agent.ewc_min_frames` frames."""
        return {int(t) for t, n in frames_per_task.items() if n >= self.agent.ewc_min_frames}

    def consolidate(self, inputs: ConsolidationInputs, current_task: int,
                    frames_per_task: Mapping[int, int]) -> Anchors:
        """The finished task's Fisher, then the merged anchors over the eligible tasks but `current_task`."""
        task = inputs.task
        self.online.load_state_dict(inputs.online)
        self.target.load_state_dict(inputs.target)
        computed = q_network_fisher(self.online, self.target, inputs.batch, task, kind=self.agent.fisher_kind,
                                    generator=self.generator)
        fisher = normalized(computed, self.agent.fisher_normalization)
        anchors = {n: inputs.online[n].to(self.device) for n in self.shared_names}
        eligible = self.eligible(frames_per_task)
        if self.agent.ewc_online:
            if task in eligible:
                self.online_penalty.consolidate(anchors, fisher)
                self.terms[task] = ({}, {})  # remembered only as "anchored"
            tasks = sorted(self.terms)
            state = self.online_penalty.state_dict()
        else:
            self.terms[task] = (fisher, anchors)
            penalty = self._new_penalty()
            tasks = [t for t in sorted(self.terms) if t != current_task and t in eligible]
            for t in tasks:
                penalty.consolidate(self.terms[t][1], self.terms[t][0])
            state = penalty.state_dict()
        fisher_mean = float(np.mean([f.mean().item() for f in computed.values()]))
        return Anchors(state, tasks, task, fisher_mean)

    def state_dict(self) -> dict[str, Any]:
        return {
            "terms": {t: ({n: v.cpu() for n, v in f.items()}, {n: v.cpu() for n, v in a.items()})
                      for t, (f, a) in self.terms.items()},
            "online_penalty": self.online_penalty.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.terms = {int(t): ({n: v.to(self.device) for n, v in f.items()}, {n: v.to(self.device) for n, v in a.items()})
                      for t, (f, a) in dict(state["terms"]).items()}
        self.online_penalty.load_state_dict(state["online_penalty"])
        self.online_penalty.to(self.device)
