"""Where a run is and what it has done, without Ray: what a checkpoint saves and a log line reports.

`RunProgress` holds the counters, the replay ratio (`Pacing`), the per-task ε timers, the task-id
source and the position (visit, task, the task's buffer), and it does the bookkeeping for what
comes back from the actors. The trainer wires it to the actors; tests drive it directly.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.dqn.actor import CollectResult
from agents.epsilon import TaskEpsilon
from training.config import RunConfig
from training.pacing import Pacing
from training.run_writer import Interval
from training.schedule import Schedule, Visit
from training.services import AddResult, TrainResult
from training.task_ids import make_task_ids

NEVER = 2**62  # a frame count no run reaches


@dataclass
class Counters:
    """The driver's counters; saved in checkpoints (with `Pacing`'s) so a resumed run continues them."""

    frames: int = 0  # emulator frames played, all games
    steps: int = 0  # agent steps, all games
    episodes: int = 0
    visit_index: int = 0
    visit_start_frame: int = 0  # a visit lasts frames_per_visit frames from here, however late it began
    frames_per_task: dict[int, int] = field(default_factory=dict)  # frames played per task (EWC's ewc_min_frames)
    next_eval_frame: int = 0
    consolidations: int = 0
    steps_per_actor: dict[int, int] = field(default_factory=dict)  # a dead actor that never came back shows here
    lost_chunks: int = 0  # chunks lost with env actors that died
    resumes: int = 0


class RunProgress:
    def __init__(self, config: RunConfig):
        self.config = config
        self.schedule = Schedule(config.games, config.schedule)
        self.task_ids = make_task_ids(config.task_inference, [v.game for v in self.schedule.visits],
                                      config.agent.network.max_tasks)
        self.epsilon = TaskEpsilon(config.epsilon)
        self.counters = Counters(next_eval_frame=0 if config.eval.every_frames else NEVER)
        actors = config.actors
        self.pacing = Pacing.for_run(config.agent.update_period, actors.chunk_steps * actors.envs_per_actor,
                                     actors.num_env_actors)
        self.interval = Interval()  # since the last log line
        self.started = time.monotonic()
        self.visit: Visit = self.schedule.visits[0]
        self.task = 0  # the task the agent trains now: the schedule's label, or forget-me-not's inferred id
        self.replay_size, self.replay_ready = 0, False  # what the learner last said about the task's buffer

    # ---- the schedule -----------------------------------------------------------------------

    def next_visit(self) -> Visit | None:
        """The current visit until it has played `frames_per_visit` frames, then the next (None at the end)."""
        if self.counters.frames - self.counters.visit_start_frame < self.config.schedule.frames_per_visit:
            return self.visit
        following = self.visit.index + 1
        return self.schedule.visits[following] if following < len(self.schedule.visits) else None

    def begin_visit(self, visit: Visit) -> None:
        self.visit = visit
        self.counters.visit_index, self.counters.visit_start_frame = visit.index, self.counters.frames

    def train_task(self, task: int) -> None:
        if task != self.task:
            self.task, self.replay_size, self.replay_ready = task, 0, False

    # ---- what came back from the actors -----------------------------------------------------

    def collected(self, result: CollectResult, actor_index: int) -> None:
        counters = self.counters
        counters.steps += result.steps
        counters.steps_per_actor[actor_index] = counters.steps_per_actor.get(actor_index, 0) + result.steps
        counters.frames += result.steps * self.config.env.frame_skip
        counters.episodes += len(result.episode_returns)
        self.epsilon.advance(result.task, result.steps)
        self.interval.add_returns(result.game, result.steps, result.episode_returns)

    def stored(self, added: AddResult, steps: int) -> None:
        """The learner stored a collect of `steps` agent steps under `added.task`."""
        counters, task = self.counters, added.task
        counters.frames_per_task[task] = counters.frames_per_task.get(task, 0) + steps * self.config.env.frame_skip
        self.task_ids.note_added(self.visit.game, task, added.transitions, added.inferred_frames)
        if task == self.task:
            self.replay_size, self.replay_ready = added.replay_size, added.ready
        self.pacing.collect_stored(steps, task, added.transitions, added.ready)

    def trained(self, result: TrainResult) -> None:
        self.interval.add_train(result, self.pacing.trained(result.updates))

    def log_fields(self) -> dict[str, Any]:
        """What a metrics line reports besides the interval (`RunWriter.metrics`)."""
        counters = self.counters
        return dict(elapsed_s=time.monotonic() - self.started, frames=counters.frames,
                    total_frames=self.schedule.total_frames, env_steps=counters.steps,
                    updates=self.pacing.updates_done, episodes=counters.episodes, task=self.task,
                    game=self.visit.game, epsilon=self.epsilon.value(self.task), replay_size=self.replay_size,
                    replay_capacity=self.config.agent.replay_capacity,
                    extra_scalars=self.task_ids.scalars(self.task, self.visit.game))

    def summary(self, **extra: Any) -> dict[str, Any]:
        """summary.json: what the run did, with `extra` (the run directory, the last evaluation, ...)."""
        counters, elapsed = self.counters, time.monotonic() - self.started
        return {**extra, "frames": counters.frames, "env_steps": counters.steps, "updates": self.pacing.updates_done,
                "wall_s": round(elapsed, 1), "env_steps_per_s": counters.steps / max(elapsed, 1e-9),
                "consolidations": counters.consolidations, "frames_per_task": counters.frames_per_task,
                "steps_per_actor": counters.steps_per_actor, "lost_chunks": counters.lost_chunks,
                "resumes": counters.resumes}

    # ---- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's `counters`, `epsilon`, `task_ids` and `current_task`."""
        return {"counters": {**dataclasses.asdict(self.counters), **self.pacing.state_dict()},
                "epsilon": self.epsilon.state_dict(), "task_ids": self.task_ids.state_dict(),
                "current_task": self.task}

    def load_state_dict(self, state: Mapping[str, Any], learner_updates: int) -> None:
        """Continue from a checkpoint whose learner had taken `learner_updates` updates."""
        saved = state["counters"]
        self.counters = Counters(**{f.name: saved[f.name] for f in dataclasses.fields(Counters) if f.name in saved})
        self.pacing.load_state_dict(saved)
        self.pacing.resume_at(learner_updates)  # it includes updates the driver had not counted yet
        self.epsilon.load_state_dict(state["epsilon"])
        self.task_ids.load_state_dict(state["task_ids"])
        self.task = int(state["current_task"])
        self.visit = self.schedule.visits[self.counters.visit_index]
        self.counters.resumes += 1
