"""Named extension points of the trainer (Avalanche-style plugins).

A hook sees the trainer at fixed points of its loop and may ask it to stop cleanly; the
continual-learning strategy is one (`training.strategies`: EWC consolidates at task switches),
the benchmark measures the trainer through one (`perf/ours.py`), the wall-time budget of
`run.py train --stop-after-s` is one. A hook reads the run's state from `trainer.progress`. Override what you need; every method is a no-op here.

    after_start(trainer)                   actors are up, the run (or its resumed state) is loaded
    after_collect(trainer, result)         an env actor's chunk arrived (`agents.dqn.actor.CollectResult`)
    after_train(trainer, result)           a slice of learner updates came back (`training.services.TrainResult`)
    after_eval(trainer, evaluation)        an evaluation round was recorded (`training.records.EvalRound`)
    at_task_switch(trainer, old, new)      the trained task changes (`new` is None at the schedule's end)
    should_stop(trainer) -> str | None     a reason to stop now (checkpoint and summary are still written)

`run.py train` always installs `StopOnSignal` and, with --stop-after-s, `TimeLimit`.
"""
from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.dqn.actor import CollectResult
    from training.loop import Trainer
    from training.records import EvalRound
    from training.services import TrainResult


class TrainerHook:
    def after_start(self, trainer: Trainer) -> None:
        pass

    def after_collect(self, trainer: Trainer, result: CollectResult) -> None:
        pass

    def after_train(self, trainer: Trainer, result: TrainResult) -> None:
        pass

    def after_eval(self, trainer: Trainer, evaluation: EvalRound) -> None:
        pass

    def at_task_switch(self, trainer: Trainer, old: int, new: int | None) -> None:
        pass

    def should_stop(self, trainer: Trainer) -> str | None:
        return None


class TimeLimit(TrainerHook):
    """Stop after `seconds` of wall time from the trainer's start."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def should_stop(self, trainer: Trainer) -> str | None:
        if time.monotonic() - trainer.progress.started >= self.seconds:
            return f"time limit of {self.seconds:g} s reached"
        return None


class StopOnSignal(TrainerHook):
    """SIGTERM (what `ray job stop` sends) or a first Ctrl-C stops the run cleanly: the chunks in flight are
    stored, the checkpoint and summary written, so `--resume` continues. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        signal.signal(signal.SIGTERM, self._receive)
        signal.signal(signal.SIGINT, self._receive)

    def _receive(self, number: int, frame: Any) -> None:
        self.received = signal.Signals(number).name
        if number == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C raises KeyboardInterrupt

    def should_stop(self, trainer: Trainer) -> str | None:
        return None if self.received is None else f"{self.received} received"
