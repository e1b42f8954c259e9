"""What the learner and consolidation actors do, as plain classes (the Ray actors only wrap them).

`LearnerService`: per-task replay + the Double-DQN `Learner` + the task-id source. Chunks
from env actors go in, minibatch updates come out, weights are published for actors.

`ConsolidationService`: at each task switch, the Fisher of the finished task on a sample
of its buffer, anchored at the learner's current shared weights. It keeps one Fisher and
one anchor per task, so a task visited again replaces its own term rather than counting
twice, and it ships the learner one merged quadratic over the tasks that qualify: every
consolidated task except the one now being trained, once it was played
`agent.ewc_min_frames` frames (as the driver counts them). This is the one place that rule
lives. The learner's cost per update stays that of one quadratic.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.dqn.fisher import fisher_batch, normalized, q_network_fisher
from agents.dqn.learning import Learner
from agents.dqn.networks import QNetwork, shared_parameter_names
from agents.replay import TaskReplay, TransitionChunk
from common.errors import UsageError
from ewc import EWCPenalty
from fmn import ForgetMeNot
from training.config import RunConfig

PENALTY_REPORT_S = 5.0  # seconds between computations of the EWC penalty's value (a logged metric)


class LearnerService:
    def __init__(self, config: RunConfig, device: str = "cpu"):
        self.config = config
        agent = config.agent
        self.learner = Learner(agent, device=device, seed=config.seed, compile_step=config.actors.learner_compile)
        network = agent.network
        self.replay = TaskReplay(agent.replay_capacity, max_tasks=network.max_tasks, frame_shape=network.frame_shape,
                                 stack=network.frame_stack, seed=config.seed)
        self.fmn = ForgetMeNot.from_config(config.fmn, network.frame_shape) if config.task_inference == "fmn" else None
        self.confusion: dict[str, dict[int, int]] = {}
        self.task_updates: dict[int, int] = {}  # updates trained per task
        self._penalty_reported = -float("inf")  # perf_counter time the EWC penalty's value was last computed

    def add(self, task: int, chunks: list[tuple[tuple, TransitionChunk]], game: str = "") -> dict[str, Any]:
        """Store an actor's chunks in their task's buffer; returns the task, its buffer size and readiness.

        With forget-me-not task inference the task comes from the frames (the majority id over
        the chunks' frames), not from `task`; `game`, the true game, only feeds the confusion counts.
        """
        if self.fmn is not None:
            ids = np.concatenate([self.fmn.observe_batch(chunk.frames) for _, chunk in chunks])
            votes = np.bincount(ids)
            task = int(votes.argmax())
            for inferred in np.flatnonzero(votes):
                row = self.confusion.setdefault(game, {})
                row[int(inferred)] = row.get(int(inferred), 0) + int(votes[inferred])
            if task >= self.config.agent.network.max_tasks:
                raise UsageError(
                    f"forget-me-not found {task + 1} tasks, more than agent.network.max_tasks "
                    f"({self.config.agent.network.max_tasks}): raise it (games with several scenes count several times)"
                )
        transitions = 0
        for source, chunk in chunks:
            buffer = self.replay.buffer(task)
            if not chunk.episode_starts[0] and not buffer.has_open_episode(source):
                chunk = _as_episode_start(chunk)  # its episode began in another task's buffer
                if chunk is None:
                    continue
            buffer.add_chunk(chunk, source)
            transitions += chunk.num_transitions
        return {"task": task, "replay_size": self.replay.num_transitions(task), "transitions": transitions,
                "ready": self.ready(task)}

    def ready(self, task: int) -> bool:
        """Whether `task`'s buffer may be trained on (`agents.replay.FrameReplay.ready`)."""
        agent = self.config.agent
        return self.replay.ready(task, agent.learning_starts, agent.batch_size)

    def train(self, task: int, num_updates: int) -> dict[str, float]:
        """`num_updates` minibatch updates on `task`'s buffer; returns the metrics averaged.

        "train_s" is the wall time spent here and "train_cpu_s" this process's CPU time meanwhile: how
        busy the learner is, and whether it got its cores (a benchmark reads them; the driver ignores them).
        """
        if num_updates and not self.ready(task):
            agent = self.config.agent
            raise UsageError(
                f"asked to train task {task}, whose buffer holds {self.replay.num_transitions(task)} transitions "
                f"(agent.learning_starts {agent.learning_starts}): updates must wait until it is ready"
            )
        started, cpu_started = time.perf_counter(), time.process_time()
        sums: dict[str, float] = {}
        # The penalty's value is for logging and costs about two updates' worth of EWC passes: compute it
        # on the slice's last update, at most every PENALTY_REPORT_S (the driver logs far less often).
        report = started - self._penalty_reported >= PENALTY_REPORT_S
        if report and num_updates:
            self._penalty_reported = started
        for i in range(num_updates):
            batch = self.replay.sample(task, self.config.agent.batch_size)
            metrics = self.learner.update(batch, task, report_penalty=report and i == num_updates - 1)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        self.task_updates[task] = self.task_updates.get(task, 0) + num_updates
        averaged = {key: value / max(num_updates, 1) for key, value in sums.items()}
        averaged["updates"] = self.learner.num_updates
        averaged["nonfinite_in_a_row"] = self.learner.nonfinite_in_a_row
        averaged["weights_nonfinite"] = sums.get("weights_nonfinite", 0.0) > 0
        if num_updates:
            averaged["ewc_penalty"] = metrics["ewc_penalty"]  # the latest value computed (see above)
        if report and num_updates and self.learner.ewc_active():
            averaged["ewc_grad_ratio"] = dict(self.learner.last_ewc_grad_ratios)
        averaged["skipped_nonfinite"] = sums.get("skipped_nonfinite", 0.0)
        averaged["train_s"] = time.perf_counter() - started
        averaged["train_cpu_s"] = time.process_time() - cpu_started
        return averaged

    def weights(self) -> dict[str, Tensor]:
        return self.learner.weights()

    def consolidation_inputs(self, task: int) -> dict[str, Any]:
        """What the consolidation actor needs for `task`: weights and a sample of its buffer."""
        batch = fisher_batch(self.replay.buffer(task), self.config.agent)
        return {
            "task": task,
            "online": self.learner.weights(),
            "target": {n: t.detach().cpu().clone() for n, t in self.learner.target.state_dict().items()},
            "batch": batch,
        }

    def set_anchors(self, anchors: Mapping[str, Any]) -> int:
        self.learner.set_anchors(anchors["ewc"], anchors["tasks"])
        self._penalty_reported = -float("inf")  # report the new penalty's value on the next slice
        return len(anchors["tasks"])

    def updates_per_task(self) -> dict[int, int]:
        return dict(self.task_updates)

    def replay_sizes(self) -> dict[int, int]:
        return {task: self.replay.num_transitions(task) for task in self.replay.tasks}

    def fmn_confusion(self) -> dict[str, dict[int, int]]:
        """Frames per (true game, inferred task) so far; empty without forget-me-not."""
        return {game: dict(row) for game, row in self.confusion.items()}

    def state_dict(self, include_replay: bool = False) -> dict[str, Any]:
        state = {"learner": self.learner.state_dict(), "confusion": self.fmn_confusion(),
                 "updates_per_task": self.updates_per_task()}
        if self.fmn is not None:
            state["fmn"] = self.fmn.state_dict()
        if include_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.confusion = {game: dict(row) for game, row in state.get("confusion", {}).items()}
        self.task_updates = {int(t): int(n) for t, n in state.get("updates_per_task", {}).items()}
        if self.fmn is not None:
            if "fmn" not in state:
                raise UsageError("the checkpoint has no forget-me-not state: it was trained with task_inference: schedule")
            self.fmn.load_state_dict(state["fmn"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])


def _as_episode_start(chunk: TransitionChunk) -> TransitionChunk | None:
    """The chunk with its first frame turned into an episode start (its transition is lost), or None if empty."""
    starts, ends = chunk.episode_starts.copy(), chunk.episode_ends
    if ends[0]:  # the first slot ends the episode it continued: drop it, the next slot starts one
        if len(chunk) == 1:
            return None
        return dataclasses.replace(chunk, **{f.name: getattr(chunk, f.name)[1:] for f in dataclasses.fields(chunk)})
    starts[0] = True
    return dataclasses.replace(chunk, episode_starts=starts)


class ConsolidationService:
    def __init__(self, config: RunConfig, device: str = "cpu"):
        agent = config.agent
        self.config = config
        self.device = torch.device(device)
        self.online = QNetwork(agent.network).to(self.device)
        self.target = QNetwork(agent.network).to(self.device)
        self.shared_names = shared_parameter_names(self.online)
        self.terms: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}  # task -> (fisher, anchors)
        self.online_penalty = self._new_penalty()  # used by online EWC only
        self.generator = torch.Generator().manual_seed(config.seed)

    def _new_penalty(self) -> EWCPenalty:
        agent = self.config.agent
        return EWCPenalty(
            agent.ewc_lambda, online=agent.ewc_online, gamma=agent.ewc_online_gamma, include=self.shared_names
        )

    def consolidate(
        self, inputs: Mapping[str, Any], current_task: int, frames_per_task: Mapping[int, int]
    ) -> dict[str, Any]:
        """Fisher of the finished task from `inputs` (see LearnerService.consolidation_inputs).

        `frames_per_task`: frames played on each task so far; a task counts in the penalty once
        it reaches `agent.ewc_min_frames`.

        Returns the merged anchors for the learner: {"ewc": EWCPenalty state, "tasks": [...],
        "fisher_task": the task just consolidated, "fisher_mean": mean Fisher (for logging)}.
        """
        task = int(inputs["task"])
        self.online.load_state_dict(inputs["online"])
        self.target.load_state_dict(inputs["target"])
        computed = q_network_fisher(
            self.online, self.target, inputs["batch"], task, kind=self.config.agent.fisher_kind,
            gamma=self.config.agent.gamma, generator=self.generator,
        )
        fisher = normalized(computed, self.config.agent.fisher_normalization)
        anchors = {n: inputs["online"][n].to(self.device) for n in self.shared_names}
        min_frames = self.config.agent.ewc_min_frames
        eligible = {int(t) for t, n in frames_per_task.items() if n >= min_frames}
        if self.config.agent.ewc_online:
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
        return {"ewc": state, "tasks": tasks, "fisher_task": task, "fisher_mean": fisher_mean}

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
