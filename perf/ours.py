"""Our trainer in a measurement harness: the real `training.loop.Trainer` on Ray, timed after learning starts.

`bench_run_config` derives the benchmark's run config from `configs/paper.yaml` (one game,
small `learning_starts`, no evaluation rounds), and `measure_ours` runs the trainer until
`seconds` of steady-state training have been observed, watching it through a trainer hook
(`Measurement`).

Rates are least-squares slopes of the cumulative counts at their real arrivals (chunks of env
steps at the driver, slices of updates back from the learner), not differences between log
lines: no partially counted chunk, and the actors' lead over the learner, which oscillates by
a chunk or two, averages out.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.dqn.learning import synthetic_anchors
from common.errors import UsageError
from perf.measure import rate, steady_rate
from training.config import RunConfig, config_from_dict, load_yaml
from training.hooks import TrainerHook
from training.loop import Trainer
from training.services import TrainResult

ROOT = Path(__file__).resolve().parents[1]
TINY_NETWORK = {"channels": [16, 32, 32], "hidden": 128}  # configs/smoke.yaml's network, for tests


def bench_run_config(
    *,
    game: str,
    learning_starts: int,
    learner_threads: int,
    tiny: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
) -> RunConfig:
    """configs/paper.yaml narrowed to one long visit of `game`, learning after `learning_starts` transitions,
    with the learner on `device`."""
    data = load_yaml(ROOT / "configs" / "paper.yaml")
    data["run_name"] = "bench"
    data["device"] = device
    data["games"] = [game]
    data["schedule"].update(order="fixed", repeats=1, frames_per_visit=10**12)  # never switches
    data["agent"].update(learning_starts=learning_starts, ewc_min_frames=0)  # anchors count at once
    data["eval"].update(every_frames=0, at_visit_end=False)
    data["logging"].update(log_every_s=5.0, checkpoint_every_s=1e9, keep_checkpoints=1)
    data["actors"]["learner_threads"] = learner_threads
    if tiny:
        data["agent"]["network"].update(TINY_NETWORK)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    config = config_from_dict(data)
    if config.agent.network.max_tasks < 2:
        raise UsageError("the benchmark anchors a second task: agent.network.max_tasks must be >= 2")
    return config


class Measurement(TrainerHook):
    """Records the trainer's arrivals and stops it once the measurement window is complete.

    The window opens `warmup_s` after the pipeline is in its steady state: learning has started
    and the backlog that the actors built up before it (while nothing held them back) is trained
    away, i.e. the actors' lead over the learner is back within the driver's bound. So that the
    system pays for EWC as it does in continual training, the learner gets a merged penalty
    anchoring `ewc_tasks` other tasks before its first update.
    """

    def __init__(self, config: RunConfig, *, seconds: float, warmup_s: float, ewc_tasks: int = 1,
                 max_wait_s: float = 900.0):
        self.window_s = seconds
        self.warmup_s = warmup_s
        self.ewc_tasks = ewc_tasks
        self.max_wait_s = max_wait_s
        self.step_events: list[tuple[float, float]] = []  # (time, env steps so far) at each chunk's arrival
        self.update_events: list[tuple[float, float]] = []  # (time, updates so far) at each slice's return
        self.busy_events: list[tuple[float, float, float]] = []  # (time, learner wall s, CPU s inside train), cumulative
        self.learning_since: float | None = None
        self.steady_since: float | None = None
        self._busy = self._cpu = 0.0
        self._started = 0.0

    def after_start(self, trainer: Trainer) -> None:
        import ray

        from agents.dqn.consolidation import Anchors
        from agents.dqn.networks import QNetwork

        self._started = trainer.progress.started
        if self.ewc_tasks:
            # A merged penalty anchoring other tasks, as after a task switch (set before any update).
            agent = trainer.config.agent
            penalty = synthetic_anchors(QNetwork(agent.network), self.ewc_tasks, agent.ewc_lambda)
            tasks = list(range(1, 1 + self.ewc_tasks))
            ray.get(trainer.actors.learner.set_anchors.remote(Anchors(penalty.state_dict(), tasks)))

    def after_collect(self, trainer: Trainer, result) -> None:
        now = time.monotonic()
        self.step_events.append((now, trainer.progress.counters.steps))
        self._check_window(trainer, now)

    def after_train(self, trainer: Trainer, result: TrainResult) -> None:
        self._busy += result.train_s
        self._cpu += result.train_cpu_s
        now = time.monotonic()
        if self.learning_since is None:
            self.learning_since = now
            trainer.say("learning started")
        self.update_events.append((now, result.updates))
        self.busy_events.append((now, self._busy, self._cpu))
        self._check_window(trainer, now)

    def should_stop(self, trainer: Trainer) -> str | None:
        if self.steady_since is not None and time.monotonic() - self.steady_since >= self.warmup_s + self.window_s:
            return "measurement window complete"
        return None

    def _check_window(self, trainer: Trainer, now: float) -> None:
        if self.steady_since is not None:
            return
        if now - self._started > self.max_wait_s:
            raise RuntimeError(f"training did not reach a steady state within {self.max_wait_s:g} s")
        pacing = trainer.progress.pacing
        if self.learning_since is not None and pacing.lead() <= pacing.max_lead:
            self.steady_since = now
            trainer.say(f"steady state after {now - self._started:.0f} s; measuring for {self.window_s:g} s")

    def results(self) -> dict[str, float]:
        if self.steady_since is None:
            raise RuntimeError("the trainer stopped before its steady state")
        start = self.steady_since + self.warmup_s
        steps_per_s, steps_window = steady_rate(self.step_events, start)
        updates_per_s, _ = steady_rate(self.update_events, start)
        busy = [(t, b, c) for t, b, c in self.busy_events if t >= start]
        (t0, b0, c0), (t1, b1, c1) = busy[0], busy[-1]
        return {
            "env_steps_per_s": steps_per_s,
            "updates_per_s": updates_per_s,
            "env_steps_per_update": steps_per_s / updates_per_s if updates_per_s else float("nan"),
            "learner_busy_fraction": rate(b1 - b0, t1 - t0),  # wall time inside LearnerService.train / wall time
            "learner_cpu_per_busy_s": rate(c1 - c0, b1 - b0),  # CPU s per busy s: < threads means it waited for a core
            "measured_s": steps_window,
            "learning_started_s": self.learning_since - self._started,
            "steady_after_s": self.steady_since - self._started,
        }


def measure_ours(config: RunConfig, run_dir: Path, *, seconds: float, warmup_s: float, quiet: bool,
                 ewc_tasks: int = 1, hooks: Sequence[TrainerHook] = ()) -> dict[str, Any]:
    """Run our trainer (needs `ray.init`) and return its steady-state rates (see `Measurement`);
    `hooks` watch the same run (e.g. `perf.phases.ProfileWindow`)."""
    measurement = Measurement(config, seconds=seconds, warmup_s=warmup_s, ewc_tasks=ewc_tasks)
    trainer = Trainer(config, run_dir, quiet=quiet, hooks=[measurement, *hooks])
    trainer.say(f"run directory {run_dir}")
    trainer.run()
    result = measurement.results()
    result["learner_threads"] = config.actors.learner_threads
    result["config"] = {"actors": dataclasses.asdict(config.actors)}
    return result
