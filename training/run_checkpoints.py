"""A run's checkpoints seen from the driver: what goes into one (the driver's progress, the learner's
state and what its replay added, the strategy's state) and how a run continues from one.

The files and their layout are `training.checkpoint`'s, the replay files `training.replay_files`'.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import ray

from common.errors import disk_full_aborts
from training import checkpoint, records, replay_files
from training.config import config_to_dict

if TYPE_CHECKING:
    from training.loop import Trainer


class RunCheckpoints:
    """Writes a run's checkpoints (`save`) and continues a run from one (`restore`)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.directory = trainer.run_dir / records.CHECKPOINT_DIR
        self.replay, line = replay_files.for_run(trainer.config, self.directory)
        trainer.say(line)

    def resume_hint(self) -> str:
        return checkpoint.resume_hint(self.directory, self.trainer.run_dir)

    def save(self) -> Path:
        """Write a checkpoint; TensorBoard's checkpoint/ tags say what it cost (seconds, MB of replay files)."""
        trainer, files, started = self.trainer, self.replay, time.monotonic()
        learner, frames = trainer.actors.learner, trainer.progress.counters.frames
        replay = (files, ray.get(learner.replay_export.remote(files.saved_upto, files.chunk_slots))) if files.enabled else None
        state = checkpoint.make_state(config=config_to_dict(trainer.config), **trainer.progress.state_dict(),
                                      learner=ray.get(learner.state_dict.remote()),
                                      consolidation=trainer.strategy.state_dict())
        path = checkpoint.save(self.directory, state, frames, keep=trainer.config.logging.keep_checkpoints, replay=replay)
        seconds, replay_mb = time.monotonic() - started, files.bytes_written / 2**20 if replay else 0.0
        trainer.writer.scalar("checkpoint/seconds", seconds, frames)
        trainer.writer.scalar("checkpoint/replay_mb", replay_mb, frames)
        if replay:
            trainer.say(f"checkpoint at {frames:,} frames: {replay_mb:.1f} MB of replay files written, {seconds:.1f} s")
        return path

    def save_replay_chunks(self) -> None:
        """Write the replay chunks completed since the last call: a lost run then loses at most one per task."""
        files = self.replay
        if not files.enabled:
            return
        exports = ray.get(self.trainer.actors.learner.replay_export.remote(files.saved_upto, files.chunk_slots, False))
        with disk_full_aborts(files.directory / "task*.npz", "replay chunks", checkpoint.full_disk_hint(self.directory)):
            files.write_chunks(exports)

    def restore(self, state: dict) -> None:
        """Counters, schedule position, epsilon timers, learner, replay and strategy from `state`."""
        trainer = self.trainer
        learner, progress = trainer.actors.learner, trainer.progress
        state["learner"].pop("replay", None)  # an older version's replay layout, which this one does not read
        if checkpoint.has_replay(state):
            state["learner"]["replay"] = self.replay.read(state["replay"], progress.task_ids.fixed_tasks())
        ray.get(learner.load_state_dict.remote(state["learner"]))
        trainer.strategy.load_state_dict(state["consolidation"])
        progress.load_state_dict(state, checkpoint.num_updates(state))
        counters = progress.counters
        for actor in trainer.actors.env:  # fresh exploration streams, not a replay of the first run's
            actor.reseed.remote(trainer.config.seed, counters.resumes)
        trainer.say(f"resumed from {counters.frames:,} frames, {progress.pacing.updates_done:,} updates, "
                    f"at visit {counters.visit_index + 1} ({progress.visit.game})")
        if checkpoint.has_replay(state):
            trainer.say(f"replay restored: {ray.get(learner.replay_sizes.remote())} transitions per task")
        else:
            trainer.say("the checkpoint holds no replay buffers: refilling them; learning resumes once the current "
                        "task's buffer holds agent.learning_starts transitions")
