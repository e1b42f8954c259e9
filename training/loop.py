"""The driver: runs a schedule of games on Ray actors, wiring the parts that each do one job.

Env actors play the current game and ship chunks of single frames straight to the learner
actor (through the object store: the driver only sees episode statistics). `Pacing` keeps the
replay ratio (updates owed, whether actors may collect); the continual-learning strategy
(`training.strategies`, e.g. EWC's consolidation) acts at task switches; `EvalRounds` scores
every game periodically, so forgetting shows up as curves; `RunWriter` writes what the user
reads; `placement` starts the actors. Task ids come from `training.task_ids` (schedule labels
or forget-me-not); extensions plug in through `training.hooks`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from agents.dqn.actor import CollectResult
from common.errors import RunAborted
from training import records
from training.config import RunConfig, replay_memory_line
from training.evaluation import EvalRounds
from training.feeding import Feeder
from training.hooks import TrainerHook
from training.placement import Actors, actor_failures_abort_the_run, start_actors
from training.progress import RunProgress
from training.run_checkpoints import RunCheckpoints
from training.run_writer import Interval, RunWriter
from training.schedule import Visit
from training.services import AddResult, TrainResult
from training.strategies import make_strategy


class Trainer:
    """One continual training run (`run()`)."""

    def __init__(self, config: RunConfig, run_dir: Path, *, quiet: bool = False, hooks: list[TrainerHook] = ()):
        self.config, self.run_dir = config, run_dir
        self.writer = RunWriter(run_dir, config.run_name, quiet=quiet)
        self.strategy = make_strategy(config)
        self.hooks = [self.strategy, *hooks]
        self.progress = RunProgress(config)
        self.callbacks: dict[Any, Callable[[Any], None]] = {}  # other actor calls: what to do with each result
        self.last_eval: records.EvalRound | None = None
        self.actors: Actors | None = None  # set by `run`, with the data path, the evaluation rounds, the checkpoints
        self.checkpoints: RunCheckpoints | None = None
        self.feeder: Feeder | None = None
        self.evals: EvalRounds | None = None

    def say(self, message: str) -> None:
        self.writer.say(message)

    def when_done(self, ref, callback: Callable[[Any], None]) -> None:
        """Call `callback` with the result of an actor call (a strategy's, say) once it arrives."""
        self.callbacks[ref] = callback

    def run(self, resume_state: dict | None = None) -> dict[str, Any]:
        self.writer.open(self.config)
        self.checkpoints = RunCheckpoints(self)
        try:
            with actor_failures_abort_the_run(self.checkpoints.resume_hint):
                self.actors = start_actors(self.config, self.strategy.actors(self.config))
                self.writer.placement(self.actors.where)
                self.say(f"actors started on {len({p['node_id'] for p in self.actors.where.values()})} node(s); "
                         f"learner on {self.actors.device}; {replay_memory_line(self.config)}")
                self.feeder = Feeder(self.actors, self.progress, self.writer, on_collect=self._on_collect,
                                     on_add=self._on_add, on_train=self._on_train)
                self.evals = EvalRounds(self.config, self.actors, self.progress, self.say)
                if resume_state is not None:
                    self.checkpoints.restore(resume_state)
                for hook in self.hooks:
                    hook.after_start(self)
                return self._loop()
        finally:
            self.writer.close()
            if self.actors is not None:
                self.actors.stop()

    def _loop(self) -> dict[str, Any]:
        cfg, progress, feeder = self.config, self.progress, self.feeder
        counters, pacing = progress.counters, progress.pacing
        progress.train_task(progress.task_ids.visit_task(progress.visit.game, progress.task))
        feeder.sync_weights(send_game=True)
        self._announce_visit()
        if cfg.eval.every_frames and counters.frames == 0:
            self.evals.start("initial")  # the untrained network's scores: the baseline of forward transfer
            counters.next_eval_frame = cfg.eval.every_frames
        last_sync, last_log = pacing.updates_done, time.monotonic()
        last_checkpoint, switching, stop_reason = last_log, False, None
        while True:
            stop_reason = stop_reason or next(filter(None, (hook.should_stop(self) for hook in self.hooks)), None)
            # Every chunk of the visit is stored and every update it is owed has been sent, so the
            # finished task gets them all, before its Fisher is taken and under its own task id.
            drained = feeder.drained()
            if stop_reason and drained:
                self.say(f"{stop_reason}: stopping")
                break
            next_visit = progress.next_visit()
            switching = switching or next_visit is not progress.visit
            if switching and drained:
                self._end_visit(next_visit)
                if next_visit is None:
                    break
                self._begin_visit(next_visit)
                switching, last_checkpoint = False, time.monotonic()
            feeder.launch(collect=not (switching or stop_reason))
            pending = [*feeder.refs(), *self.callbacks, *self.evals.refs()]
            for ref in ray.wait(pending, num_returns=1, timeout=0.5)[0] if pending else []:
                self._handle(ref)
            if pacing.updates_done - last_sync >= cfg.actors.weight_sync_updates:
                feeder.sync_weights()
                last_sync = pacing.updates_done
            # A visit that has played its frames is scored by its visit-end round: no periodic one as well.
            visit_done = cfg.eval.at_visit_end and progress.next_visit() is not progress.visit
            if counters.frames >= counters.next_eval_frame and not self.evals.running and not (switching or visit_done):
                self.evals.start("periodic")
                counters.next_eval_frame = counters.frames + cfg.eval.every_frames
            now = time.monotonic()
            if now - last_log >= cfg.logging.log_every_s:
                self._log()
                self.checkpoints.save_replay_chunks()
                last_log = now
            if now - last_checkpoint >= cfg.logging.checkpoint_every_s:
                self.checkpoints.save()
                last_checkpoint = now
        return self._finish(completed=stop_reason is None)

    def _finish(self, completed: bool) -> dict[str, Any]:
        """Collect what is still on its way, score the final weights, write the checkpoint and the summary."""
        counters, learner = self.progress.counters, self.actors.learner
        self.feeder.finish_trains()
        for ref, callback in self.callbacks.items():
            callback(ray.get(ref))
        self._on_eval(self.evals.finish())
        if self.config.eval.every_frames and not self.config.eval.at_visit_end:  # else visit_end scored these weights
            self.evals.start("final")
            self._on_eval(self.evals.finish())
        self._log()
        path = self.checkpoints.save()
        self.progress.task_ids.finish(self.run_dir, lambda tag, text: self.writer.text(tag, text, counters.frames),
                                      self.say)
        summary = self.progress.summary(
            run_dir=str(self.run_dir), completed=completed, checkpoint=str(path), strategy=self.strategy.name,
            updates_per_task=ray.get(learner.updates_per_task.remote()),
            final_eval=self.last_eval.to_json() if self.last_eval else None)
        self.writer.summary(summary)
        self.say(f"done: {counters.frames:,} frames, {summary['updates']:,} updates in {summary['wall_s']} s")
        return summary

    # ---- the schedule -----------------------------------------------------------------------

    def _announce_visit(self) -> None:
        visit = self.progress.visit
        self.say(f"visit {visit.index + 1}/{len(self.progress.schedule.visits)}: {visit.game} (task {self.progress.task})")

    def _end_visit(self, next_visit: Visit | None) -> None:
        """Score the visit's final weights; switch the task if the agent is told about switches."""
        cfg, counters, task_ids = self.config, self.progress.counters, self.progress.task_ids
        if cfg.eval.at_visit_end:
            self._on_eval(self.evals.finish())
            self.evals.start("visit_end")
            if cfg.eval.every_frames:  # this round also serves as the periodic one due about now
                counters.next_eval_frame = max(counters.next_eval_frame, counters.frames + cfg.eval.every_frames)
        if next_visit is None:
            self._switch_task(None)
        elif task_ids.told_at_switches:
            self._switch_task(task_ids.visit_task(next_visit.game, self.progress.task))
        # otherwise the agent is not told: it switches when the learner's task inference reports a new id

    def _switch_task(self, new_task: int | None) -> None:
        """Let the hooks (the strategy among them) act on the finished task, then train `new_task`."""
        for hook in self.hooks:
            hook.at_task_switch(self, self.progress.task, new_task)
        if new_task is not None:
            self.progress.train_task(new_task)

    def _begin_visit(self, visit: Visit) -> None:
        self.progress.begin_visit(visit)
        self.feeder.set_game()
        self._announce_visit()
        self.checkpoints.save()

    # ---- what comes back ---------------------------------------------------------------------

    def _handle(self, ref) -> None:
        if self.feeder.handle(ref):
            return
        if ref in self.callbacks:
            self.callbacks.pop(ref)(ray.get(ref))
        else:
            self._on_eval(self.evals.handle(ref))

    def _on_collect(self, result: CollectResult, actor_index: int) -> None:
        self.progress.collected(result, actor_index)
        for hook in self.hooks:
            hook.after_collect(self, result)

    def _on_add(self, added: AddResult, steps: int) -> None:
        """The learner stored a collect's chunks under `added.task` (its inferred id with forget-me-not)."""
        if added.task != self.progress.task:  # only task inference reports another id: the frames say the game changed
            self.say(f"forget-me-not: task {self.progress.task} -> {added.task} (true game {self.progress.visit.game})")
            self.writer.scalar("fmn/switches", 1, self.progress.counters.frames)
            self.feeder.send_owed_updates()  # before the finished task's Fisher is asked for
            self._switch_task(added.task)
        self.progress.stored(added, steps)

    def _on_train(self, result: TrainResult) -> None:
        for hook in self.hooks:
            hook.after_train(self, result)
        self.progress.trained(result)
        if result.skipped_nonfinite:
            self.say(f"skipped {result.skipped_nonfinite} update(s) with a NaN/inf loss or gradient "
                     f"({result.nonfinite_in_a_row} in a row)")
        diverged = result.divergence(self.config.agent.max_nonfinite_in_a_row)
        if diverged:
            raise RunAborted(f"{diverged} {self.checkpoints.resume_hint()}")

    def _on_eval(self, evaluation: records.EvalRound | None) -> None:
        if evaluation is None:  # the round is still running, or there was none
            return
        self.writer.evaluation(evaluation)
        self.last_eval = evaluation
        for hook in self.hooks:
            hook.after_eval(self, evaluation)

    def _log(self) -> None:
        self.writer.metrics(self.progress.interval, **self.progress.log_fields())
        self.progress.interval = Interval()
