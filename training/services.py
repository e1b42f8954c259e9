"""What the learner actor does, as a plain class (the Ray actor only wraps it).

`LearnerService`: per-task replay + the Double-DQN `Learner` + forget-me-not when the run infers
its tasks. Chunks from env actors go in (`AddResult` back), slices of minibatch updates come out
(`TrainResult`), weights are published for actors, and at a task switch it hands the finished
task's weights and a sample of its buffer to consolidation (`agents.dqn.consolidation`).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.dqn.consolidation import Anchors, ConsolidationInputs
from agents.dqn.fisher import fisher_batch
from agents.dqn.learning import Learner
from agents.replay import Batch, TaskReplay, TransitionChunk
from common.errors import UsageError
from fmn import ForgetMeNot
from training.config import RunConfig
from training.replay_files import ReplayExport, export_all

PENALTY_REPORT_S = 5.0  # seconds between computations of the EWC penalty's value (a logged metric)


@dataclass(frozen=True)
class AddResult:
    """The learner stored a collect's chunks: under which task (inferred with forget-me-not), and the buffer's state."""

    task: int
    replay_size: int
    transitions: int
    ready: bool  # the task's buffer may be trained on
    inferred_frames: dict[int, int] = field(default_factory=dict)  # forget-me-not: frames per inferred id


@dataclass(frozen=True)
class TrainResult:
    """A slice of updates: its metrics averaged over the slice, and the learner's health."""

    updates: int  # the learner's total optimizer steps so far
    means: dict[str, float] = field(default_factory=dict)  # loss, td_error_abs_mean, q_mean, grad_norm
    ewc_penalty: float = 0.0  # the latest value computed (it is computed only now and then)
    ewc_grad_ratio: dict[str, float] | None = None  # per layer, when measured in this slice
    skipped_nonfinite: int = 0  # updates of the slice skipped for a NaN/inf loss or gradient
    nonfinite_in_a_row: int = 0
    weights_nonfinite: bool = False
    train_s: float = 0.0  # wall time inside `train`
    train_cpu_s: float = 0.0  # this process's CPU time meanwhile (a benchmark reads both)
    replay_bytes: int = 0  # what the replay buffers hold in memory now

    def divergence(self, max_nonfinite_in_a_row: int) -> str | None:
        """Why training cannot go on (NaN/inf weights, or too many NaN/inf updates in a row), if it cannot."""
        if self.weights_nonfinite:
            return "the network's weights became NaN/inf: training has diverged."
        if self.nonfinite_in_a_row >= max_nonfinite_in_a_row:
            return (f"{self.nonfinite_in_a_row} updates in a row had a NaN/inf loss or gradient "
                    f"(agent.max_nonfinite_in_a_row = {max_nonfinite_in_a_row}): training has diverged "
                    "(e.g. agent.learning_rate too high).")
        return None


class LearnerService:
    def __init__(self, config: RunConfig, device: str = "cpu"):
        self.config = config
        agent = config.agent
        self.learner = Learner(agent, device=device, seed=config.seed, compile_step=config.actors.learner_compile)
        network = agent.network
        self.replay = TaskReplay(agent.replay_capacity, max_tasks=network.max_tasks, frame_shape=network.frame_shape,
                                 stack=network.frame_stack, seed=config.seed, n_step=agent.n_step, gamma=agent.gamma,
                                 compression=agent.replay_compression)
        self.fmn = ForgetMeNot.from_config(config.fmn, network.frame_shape) if config.task_inference == "fmn" else None
        self.task_updates: dict[int, int] = {}  # updates trained per task
        self._penalty_reported = -float("inf")  # perf_counter time the EWC penalty's value was last computed
        self._rehearsal_rng = np.random.default_rng([config.seed, 1])

    def add(self, task: int | None, chunks: list[tuple[tuple, TransitionChunk]]) -> AddResult:
        """Store an actor's chunks in their task's buffer; returns the task, its buffer size and readiness.

        With forget-me-not task inference the learner is told nothing (`task` None): the task is the
        majority id over the chunks' frames, and `inferred_frames` says how many frames got each id.
        """
        inferred_frames: dict[int, int] = {}
        if (task is None) != (self.fmn is not None):
            raise ValueError(f"add(task={task}) to a learner with task_inference: {self.config.task_inference}: "
                             "forget-me-not infers every task, and a schedule-labelled run gives every one")
        if self.fmn is not None:
            ids = np.concatenate([self.fmn.observe_batch(chunk.frames) for _, chunk in chunks])
            votes = np.bincount(ids)
            task = int(votes.argmax())
            inferred_frames = {int(inferred): int(votes[inferred]) for inferred in np.flatnonzero(votes)}
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
        return AddResult(task, self.replay.num_transitions(task), transitions, self.ready(task), inferred_frames)

    def ready(self, task: int) -> bool:
        """Whether `task`'s buffer may be trained on (`agents.replay.FrameReplay.ready`)."""
        agent = self.config.agent
        return self.replay.ready(task, agent.learning_starts, agent.batch_size)

    def train(self, task: int, num_updates: int) -> TrainResult:
        """`num_updates` minibatch updates on `task`'s buffer."""
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
        report = bool(num_updates) and started - self._penalty_reported >= PENALTY_REPORT_S
        if report:
            self._penalty_reported = started
        metrics: dict[str, float] = {}
        for i in range(num_updates):
            batch, tasks = self.minibatch(task)
            cloned = tasks != task if isinstance(tasks, Tensor) and self.config.agent.rehearsal_bc else None
            metrics = self.learner.update(batch, tasks, report_penalty=report and i == num_updates - 1, cloned=cloned)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        self.task_updates[task] = self.task_updates.get(task, 0) + num_updates
        health = ("ewc_penalty", "skipped_nonfinite", "weights_nonfinite", "updates")
        return TrainResult(
            updates=self.learner.num_updates,
            means={key: value / num_updates for key, value in sums.items() if key not in health},
            ewc_penalty=metrics.get("ewc_penalty", 0.0),
            ewc_grad_ratio=dict(self.learner.last_ewc_grad_ratios) if report and self.learner.ewc_active() else None,
            skipped_nonfinite=int(sums.get("skipped_nonfinite", 0)),
            nonfinite_in_a_row=self.learner.nonfinite_in_a_row,
            weights_nonfinite=sums.get("weights_nonfinite", 0.0) > 0,
            train_s=time.perf_counter() - started,
            replay_bytes=self.replay.nbytes,
            train_cpu_s=time.process_time() - cpu_started,
        )

    def minibatch(self, task: int) -> tuple[Batch, int | Tensor]:
        """A minibatch for an update on `task`, and the task id of its samples (one, or one per sample).

        With `agent.rehearsal_share` (CLEAR-style rehearsal) that share of it is drawn from the earlier
        tasks' buffers, the task of each sample uniformly among those that are ready; each sample is
        trained with its own task's gains and biases.
        """
        agent = self.config.agent
        earlier = [t for t in self.replay.tasks if t != task and self.replay.ready(t, agent.learning_starts, 1)]
        rehearsed = round(agent.rehearsal_share * agent.batch_size) if earlier else 0
        if not rehearsed:
            return self.replay.sample(task, agent.batch_size), task
        picks = self._rehearsal_rng.choice(earlier, size=rehearsed)
        parts, ids = [self.replay.sample(task, agent.batch_size - rehearsed)], [task] * (agent.batch_size - rehearsed)
        for old in sorted(set(picks.tolist())):
            count = int((picks == old).sum())
            parts.append(self.replay.sample(old, count))
            ids += [old] * count
        return Batch.concatenate(parts), torch.as_tensor(ids, device=self.learner.device)

    def weights(self) -> dict[str, Tensor]:
        return self.learner.weights()

    def reset_weights(self, seed: int) -> None:
        """Fresh weights, target and optimizer state (the reset strategy at a task switch); the update
        counters and the replay buffers are kept."""
        old = self.learner
        self.learner = Learner(self.config.agent, device=old.device, seed=seed,
                               compile_step=self.config.actors.learner_compile)
        self.learner.num_updates, self.learner.num_skipped = old.num_updates, old.num_skipped

    def consolidation_inputs(self, task: int) -> ConsolidationInputs:
        """What consolidation needs for `task`: weights and a sample of its buffer."""
        return ConsolidationInputs(
            task=task,
            online=self.learner.weights(),
            target={n: t.detach().cpu().clone() for n, t in self.learner.target.state_dict().items()},
            batch=fisher_batch(self.replay.buffer(task), self.config.agent),
        )

    def set_anchors(self, anchors: Anchors) -> int:
        self.learner.set_anchors(anchors.penalty, anchors.tasks)
        self._penalty_reported = -float("inf")  # report the new penalty's value on the next slice
        return len(anchors.tasks)

    def updates_per_task(self) -> dict[int, int]:
        return dict(self.task_updates)

    def replay_sizes(self) -> dict[int, int]:
        return {task: self.replay.num_transitions(task) for task in self.replay.tasks}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the replay, which checkpoints save apart (`replay_export`)."""
        state = {"learner": self.learner.state_dict(), "updates_per_task": self.updates_per_task()}
        if self.fmn is not None:
            state["fmn"] = self.fmn.state_dict()
        return state

    def replay_export(self, saved_upto: Mapping[int, int], chunk_slots: int,
                      with_tail: bool = True) -> dict[int, ReplayExport]:
        """What the replay adds to its files (`training.replay_files.export_all`)."""
        return export_all(self.replay, saved_upto, chunk_slots, with_tail)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
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
