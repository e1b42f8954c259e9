"""The driver: runs a schedule of games on Ray actors and writes everything a user watches.

Env actors play the current game and ship chunks of single frames to the learner actor
(through the object store: the driver only sees episode statistics). The driver keeps the
paper's replay ratio (one update per `agent.update_period` agent steps once a task's buffer
holds `agent.learning_starts` transitions) by submitting slices of updates to the learner and
holding actors back when they run ahead. At each game switch it asks the consolidation actor
for the finished task's Fisher and routes the merged anchors to the learner. Every game of
the schedule is evaluated periodically, so forgetting shows up as curves.

Outputs in the run directory: `config.yaml` (resolved), `metrics.jsonl` (one JSON object per
log interval), `eval.jsonl` (one per evaluation round), TensorBoard event files,
`checkpoints/`, `actors.json` (where each actor runs) and `summary.json` at the end.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.epsilon import TaskEpsilon
from common.errors import RunAborted, UsageError
from envs.scores import capped_sum, human_normalized
from training import checkpoint
from training.config import RunConfig, config_to_dict
from training.schedule import Schedule, ScheduleTaskIds, Visit

MAX_TRAIN_CALLS_IN_FLIGHT = 2  # keeps the learner busy while the driver handles the previous slice
UPDATES_PER_SLICE = 16
NEVER = 2**62  # a frame count no run reaches


@dataclass
class Progress:
    """Driver-side counters; saved in checkpoints so a resumed run continues them."""

    frames: int = 0  # emulator frames played, all games
    steps: int = 0  # agent steps, all games
    episodes: int = 0
    visit_index: int = 0
    visit_start_frame: int = 0  # a visit lasts frames_per_visit frames from here, however late it began
    frames_per_task: dict[int, int] = field(default_factory=dict)  # frames played per task (EWC's ewc_min_frames)
    trainable_steps: int = 0  # agent steps added while their task's buffer was ready for training
    trainable_steps_per_task: dict[int, int] = field(default_factory=dict)
    updates_submitted: int = 0
    updates_done: int = 0
    next_eval_frame: int = 0
    consolidations: int = 0
    lost_chunks: int = 0  # chunks lost with env actors that died
    resumes: int = 0


@dataclass
class _Interval:
    """What happened since the last log line."""

    start: float = field(default_factory=time.monotonic)
    steps: int = 0
    updates: int = 0
    returns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    train: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ewc_grad_ratio: dict[str, float] | None = None  # the latest per-layer EWC / TD gradient norms


@dataclass
class _EvalRound:
    """One evaluation of every game on one snapshot of the weights."""

    kind: str  # "initial" (before training), "periodic", "visit_end" (the visit's final weights), "final"
    frames: int
    visit_index: int
    pending: dict[Any, str]  # ref -> game
    scores: dict[str, list[float]] = field(default_factory=dict)


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, *, quiet: bool = False, stop_after_s: float | None = None):
        self.config = config
        self.stop_after_s = stop_after_s  # wall-clock budget: stop cleanly (checkpoint, summary) when spent
        self.stop_reason: str | None = None  # said when stopping early; default: the time limit
        self.run_dir = run_dir
        self.quiet = quiet
        self.schedule = Schedule(config.games, config.schedule)
        self.task_ids = ScheduleTaskIds([v.game for v in self.schedule.visits])
        self.epsilon = TaskEpsilon(config.epsilon)
        self.progress = Progress(next_eval_frame=0 if config.eval.every_frames else NEVER)
        self.interval = _Interval()
        self.last_metrics: dict[str, float] = {}
        self.last_eval: dict[str, Any] | None = None
        self.eval_round: _EvalRound | None = None
        self.task = 0  # the task the agent trains now: the schedule's label, or forget-me-not's inferred id
        # forget-me-not only: agent steps per (true game, inferred task), as the learner reported them
        self.fmn_votes: dict[str, dict[int, int]] | None = {} if config.task_inference == "fmn" else None
        self.started = time.monotonic()

    # ---- output ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.config.run_name}] {message}", file=sys.stderr, flush=True)

    def _open_outputs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        self.eval_file = open(self.run_dir / "eval.jsonl", "a")

    def _close_outputs(self) -> None:
        self.writer.close()
        self.metrics_file.close()
        self.eval_file.close()

    # ---- Ray set-up -----------------------------------------------------------------------

    def _start_actors(self) -> None:
        import ray

        from training.actors import ConsolidationActor, EnvActor, LearnerActor

        cfg = self.config
        resources = ray.cluster_resources()
        has_gpu = resources.get("GPU", 0) >= 1
        device = {"auto": "cuda" if has_gpu else "cpu", "cpu": "cpu", "cuda": "cuda"}[cfg.device]
        if device == "cuda" and not has_gpu:
            raise UsageError("device: cuda, but the Ray cluster has no GPU")
        needed = cfg.actors.learner_cpus + cfg.actors.num_env_actors * cfg.actors.cpus_per_actor
        if needed > resources.get("CPU", 0) + 1e-9:
            raise UsageError(
                f"the run needs {needed:g} CPUs (learner {cfg.actors.learner_cpus:g} + {cfg.actors.num_env_actors} env actors x "
                f"{cfg.actors.cpus_per_actor:g}) but the Ray cluster has {resources.get('CPU', 0):g}: lower "
                "actors.num_env_actors or actors.cpus_per_actor, or add nodes"
            )
        self.device = device
        self.learner = LearnerActor.options(
            num_cpus=cfg.actors.learner_cpus, num_gpus=1 if device == "cuda" else 0
        ).remote(cfg, device, cfg.actors.learner_threads)
        self.consolidator = ConsolidationActor.options(num_cpus=0).remote(cfg, "cpu")
        strategy = "SPREAD" if cfg.actors.placement == "spread" else "DEFAULT"
        self.actors = [
            EnvActor.options(num_cpus=cfg.actors.cpus_per_actor, scheduling_strategy=strategy).remote(
                i, cfg.actors.envs_per_actor, cfg.agent.network, cfg.env, seed=cfg.seed
            )
            for i in range(cfg.actors.num_env_actors)
        ]
        # Evaluation runs rarely and must not take a core from the actors: no CPU reserved.
        self.evaluator = EnvActor.options(num_cpus=0).remote(len(self.actors), 1, cfg.agent.network, cfg.env, seed=cfg.seed)
        where = {
            "learner": self.learner.where.remote(),
            "consolidation": self.consolidator.where.remote(),
            **{f"env_actor_{i}": a.where.remote() for i, a in enumerate(self.actors)},
        }
        placement = {name: ray.get(ref) for name, ref in where.items()}
        (self.run_dir / "actors.json").write_text(json.dumps(placement, indent=2))
        nodes = len({p["node_id"] for p in placement.values()})
        self.say(f"actors started on {nodes} node(s); learner on {device}")

    # ---- the loop -------------------------------------------------------------------------

    def run(self, resume_state: dict | None = None) -> dict[str, Any]:
        import ray

        self._open_outputs()
        try:
            self._start_actors()
            if resume_state is not None:
                self._restore(resume_state)
            return self._loop(ray)
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, UsageError):  # e.g. a checkpoint that does not fit the network
                raise err.cause from None
            raise RunAborted(f"an actor failed: {err}\n{self._resume_hint()}") from None
        except ray.exceptions.RayActorError as err:
            raise RunAborted(f"a Ray actor died ({type(err).__name__}): {str(err).splitlines()[0]}\n"
                             f"{self._resume_hint()}") from None
        finally:
            self._close_outputs()

    def _resume_hint(self) -> str:
        files = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        if not files:
            return "no checkpoint was written yet"
        return f"last good checkpoint: {files[-1]}; continue with: python run.py train --resume {self.run_dir}"

    def _loop(self, ray) -> dict[str, Any]:
        cfg = self.config
        self.weights = self.learner.weights.remote()
        self.visit = self.schedule.visits[self.progress.visit_index]
        if self.fmn_votes is None:
            self.task = self.task_ids.task_for(self.visit.game)
        self._send_game_and_weights(range(len(self.actors)))
        self.say(f"visit {self.visit.index + 1}/{len(self.schedule.visits)}: {self.visit.game} (task {self.task})")
        if cfg.eval.every_frames and self.progress.frames == 0:
            self._start_eval("initial")  # the untrained network's scores: the baseline of forward transfer
            self.progress.next_eval_frame = cfg.eval.every_frames

        self.collects: dict[Any, tuple[int, int, Any]] = {}  # stats ref -> (actor index, steps, add ref)
        self.adds: dict[Any, int] = {}  # learner.add ref -> agent steps in it
        self.trains: list[Any] = []
        self.consolidations: list[Any] = []
        self.replay_size = 0  # of the current task's buffer, as the learner last reported it
        self.replay_ready = False  # whether the learner reported the current task's buffer ready to train on
        self.idle = set(range(len(self.actors)))
        last_sync = self.progress.updates_done
        last_log = last_checkpoint = time.monotonic()
        switching = stopping = False

        while True:
            if self.stop_after_s is not None and time.monotonic() - self.started >= self.stop_after_s:
                stopping = True
            # Every chunk of the visit is stored and every update it is owed has been sent, so the
            # finished task gets them all, before its Fisher is taken and under its own task id.
            drained = not self.collects and not self.adds and self._owed_updates() == 0
            if stopping and drained:
                self.say(f"{self.stop_reason or f'time limit of {self.stop_after_s:g} s reached'}: stopping")
                break
            next_visit = self._next_visit()
            switching = switching or next_visit is not self.visit
            if switching and drained:
                self._end_visit(ray, next_visit)
                if next_visit is None:
                    break
                self._begin_visit(next_visit)
                switching = False
                last_checkpoint = time.monotonic()

            if not (switching or stopping):
                self._launch_collects()
            self._launch_trains()
            evals = self.eval_round.pending if self.eval_round else {}
            pending = [*self.collects, *self.adds, *self.trains, *evals, *self.consolidations]
            ready, _ = ray.wait(pending, num_returns=1, timeout=0.5) if pending else ([], [])
            for ref in ready:
                self._handle(ray, ref)

            if self.progress.updates_done - last_sync >= cfg.actors.weight_sync_updates:
                self.weights = self.learner.weights.remote()
                for actor in self.actors:
                    actor.set_weights.remote(self.weights)
                last_sync = self.progress.updates_done
            if self.progress.frames >= self.progress.next_eval_frame and self.eval_round is None and not switching:
                self._start_eval("periodic")
                self.progress.next_eval_frame = self.progress.frames + cfg.eval.every_frames
            now = time.monotonic()
            if now - last_log >= cfg.logging.log_every_s:
                self._log()
                last_log = now
            if now - last_checkpoint >= cfg.logging.checkpoint_every_s:
                self._checkpoint()
                last_checkpoint = now

        for ref in self.trains:
            self._on_train(ray.get(ref))
        for ref in self.consolidations:
            self._on_consolidation(ray.get(ref))
        self._finish_eval(ray)
        if cfg.eval.every_frames and not cfg.eval.at_visit_end:  # the last visit_end round already scored these weights
            self._start_eval("final")
            self._finish_eval(ray)
        self._log()
        path = self._checkpoint()
        if self.fmn_votes is not None:
            self._write_confusion(ray)
        elapsed = time.monotonic() - self.started
        summary = {
            "run_dir": str(self.run_dir),
            "completed": not stopping,
            "checkpoint": str(path),
            "frames": self.progress.frames,
            "env_steps": self.progress.steps,
            "updates": self.progress.updates_done,
            "wall_s": round(elapsed, 1),
            "env_steps_per_s": self.progress.steps / max(elapsed, 1e-9),
            "consolidations": self.progress.consolidations,
            "frames_per_task": self.progress.frames_per_task,
            "updates_per_task": ray.get(self.learner.updates_per_task.remote()),
            "lost_chunks": self.progress.lost_chunks,
            "resumes": self.progress.resumes,
            "final_eval": self.last_eval,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.say(f"done: {self.progress.frames:,} frames, {self.progress.updates_done:,} updates in {summary['wall_s']} s")
        return summary

    # ---- steps of the loop ----------------------------------------------------------------

    def _next_visit(self) -> Visit | None:
        """The current visit until it has played `frames_per_visit` frames, then the next (None at the end)."""
        played = self.progress.frames - self.progress.visit_start_frame
        if played < self.config.schedule.frames_per_visit:
            return self.visit
        following = self.visit.index + 1
        return self.schedule.visits[following] if following < len(self.schedule.visits) else None

    def _owed_updates(self) -> int:
        """Updates the replay ratio asks for that have not been sent to the learner yet."""
        return self.progress.trainable_steps // self.config.agent.update_period - self.progress.updates_submitted

    def _send_game_and_weights(self, actor_indices) -> None:
        for i in actor_indices:
            self.actors[i].set_weights.remote(self.weights)
            self.actors[i].set_game.remote(self.visit.game, self.task)

    def _end_visit(self, ray, next_visit: Visit | None) -> None:
        """Score the visit's final weights and consolidate its task (the Fisher is computed off the learner)."""
        cfg = self.config
        if cfg.eval.at_visit_end:
            self._finish_eval(ray)
            self._start_eval("visit_end")
            if cfg.eval.every_frames:  # this round also serves as the periodic one due about now
                self.progress.next_eval_frame = max(self.progress.next_eval_frame, self.progress.frames + cfg.eval.every_frames)
        if next_visit is None:
            self._consolidate(upcoming=-1)
        elif self.fmn_votes is None:  # true task labels: the schedule says the task changes here
            self._consolidate(upcoming=self.task_ids.task_for(next_visit.game))
        # with forget-me-not the agent is not told: it consolidates when FMN reports a new task id

    def _consolidate(self, upcoming: int) -> None:
        """Fisher of the current task (off the learner, on the consolidation actor); anchors go to the learner."""
        if self.config.agent.ewc_enabled and self.replay_size >= self.config.agent.batch_size:
            inputs = self.learner.consolidation_inputs.remote(self.task)
            anchors = self.consolidator.consolidate.remote(inputs, upcoming, dict(self.progress.frames_per_task))
            self.learner.set_anchors.remote(anchors)
            self.consolidations.append(anchors)

    def _on_inferred_switch(self, new_task: int) -> None:
        self.say(f"forget-me-not: task {self.task} -> {new_task} (true game {self.visit.game})")
        self.writer.add_scalar("fmn/switches", 1, self.progress.frames)
        self._consolidate(upcoming=new_task)
        self.task, self.replay_size, self.replay_ready = new_task, 0, False

    def _begin_visit(self, visit: Visit) -> None:
        self.visit = visit
        if self.fmn_votes is None:
            self.task, self.replay_size, self.replay_ready = self.task_ids.task_for(visit.game), 0, False
        # with forget-me-not the actors go on with the current task id until FMN reports a change
        for actor in self.actors:
            actor.set_game.remote(visit.game, self.task)
        self.progress.visit_index = visit.index
        self.progress.visit_start_frame = self.progress.frames
        self.say(f"visit {visit.index + 1}/{len(self.schedule.visits)}: {visit.game} (task {self.task})")
        self._checkpoint()

    def _learning(self) -> bool:
        return self.replay_ready

    def _launch_collects(self) -> None:
        """Give idle actors a chunk to play, unless they would run ahead of the learner's replay ratio."""
        cfg = self.config
        steps_per_collect = cfg.actors.chunk_steps * cfg.actors.envs_per_actor
        max_lag = 2 * steps_per_collect * cfg.actors.num_env_actors
        # On their way to the replay: chunks being played *and* chunks whose add has not returned yet (adds
        # queue behind train slices on the learner); leaving the latter out let actors run far ahead.
        in_flight = sum(self.adds.values())
        lag = self.progress.trainable_steps - self.progress.updates_done * cfg.agent.update_period
        for i in sorted(self.idle):
            if self._learning() and lag + in_flight >= max_lag:
                break
            stats_ref, chunks_ref = self.actors[i].collect_split.remote(
                cfg.actors.chunk_steps, self.epsilon.value(self.task), self.visit.game, self.task
            )
            add_ref = self.learner.add.remote(self.task, chunks_ref, self.visit.game)  # actor -> learner directly
            self.collects[stats_ref] = (i, steps_per_collect, add_ref)
            self.adds[add_ref] = steps_per_collect
            in_flight += steps_per_collect
            self.idle.discard(i)

    def _launch_trains(self) -> None:
        """Keep the learner busy with slices of updates, one per `update_period` trainable agent steps."""
        while len(self.trains) < MAX_TRAIN_CALLS_IN_FLIGHT and self._owed_updates() > 0:
            n = min(UPDATES_PER_SLICE, self._owed_updates())
            self.trains.append(self.learner.train.remote(self.task, n))
            self.progress.updates_submitted += n

    def _handle(self, ray, ref) -> None:
        if ref in self.collects:
            i, _, add_ref = self.collects.pop(ref)
            self.idle.add(i)
            self._on_collect(ray, ref, i, add_ref)
        elif ref in self.adds:
            steps = self.adds.pop(ref)
            added = ray.get(ref)
            frames = self.progress.frames_per_task
            frames[added["task"]] = frames.get(added["task"], 0) + steps * self.config.env.frame_skip
            if self.fmn_votes is not None:
                votes = self.fmn_votes.setdefault(self.visit.game, {})
                votes[added["task"]] = votes.get(added["task"], 0) + added["transitions"]
                if added["task"] != self.task:
                    self._on_inferred_switch(added["task"])
            if added["task"] == self.task:
                self.replay_size, self.replay_ready = added["replay_size"], added["ready"]
                if self._learning():
                    self.progress.trainable_steps += added["transitions"]
                    per_task = self.progress.trainable_steps_per_task
                    per_task[self.task] = per_task.get(self.task, 0) + added["transitions"]
        elif ref in self.trains:
            self.trains.remove(ref)
            self._on_train(ray.get(ref))
        elif self.eval_round and ref in self.eval_round.pending:
            game = self.eval_round.pending.pop(ref)
            try:
                self.eval_round.scores[game] = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.say(f"the evaluator died while playing {game}; this evaluation round is dropped")
                self.eval_round = None
                return
            if not self.eval_round.pending:
                self._on_eval(self.eval_round)
                self.eval_round = None
        else:
            self.consolidations.remove(ref)
            self._on_consolidation(ray.get(ref))

    # ---- event handlers -------------------------------------------------------------------

    def _on_collect(self, ray, ref, actor_index: int, add_ref) -> None:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            # The actor died mid-chunk. Ray restarts it (max_restarts); the chunk it was playing is lost
            # (and so is the learner's add of it), nothing else: give the new actor the game and weights.
            self.adds.pop(add_ref, None)
            self.progress.lost_chunks += 1
            self.say(f"env actor {actor_index} died ({type(err).__name__}); its in-flight chunk is lost "
                     f"({self.progress.lost_chunks} so far); Ray restarts it")
            self.writer.add_scalar("faults/lost_chunks", self.progress.lost_chunks, self.progress.frames)
            self._send_game_and_weights([actor_index])
            return
        if result.fresh_actor:  # Ray restarted this actor between two chunks: it plays with initial weights
            self.say(f"env actor {actor_index} was restarted by Ray; sending it the current weights")
            self.actors[actor_index].set_weights.remote(self.weights)
        self.progress.steps += result.steps
        self.progress.frames += result.steps * self.config.env.frame_skip
        self.progress.episodes += len(result.episode_returns)
        self.epsilon.advance(result.task, result.steps)
        self.interval.steps += result.steps
        self.interval.returns[result.game].extend(result.episode_returns)

    def _on_train(self, metrics: dict[str, float]) -> None:
        done = int(metrics.pop("updates")) - self.progress.updates_done
        self.progress.updates_done += done
        self.interval.updates += done
        in_a_row = int(metrics.pop("nonfinite_in_a_row"))
        if "ewc_grad_ratio" in metrics:
            self.interval.ewc_grad_ratio = metrics.pop("ewc_grad_ratio")
        if metrics.pop("weights_nonfinite"):
            raise RunAborted(f"the network's weights became NaN/inf: training has diverged. {self._resume_hint()}")
        for key, value in metrics.items():
            self.interval.train[key].append(value)
        if metrics["skipped_nonfinite"]:
            self.say(f"skipped {int(metrics['skipped_nonfinite'])} update(s) with a NaN/inf loss or gradient "
                     f"({in_a_row} in a row)")
        limit = self.config.agent.max_nonfinite_in_a_row
        if in_a_row >= limit:
            raise RunAborted(
                f"{in_a_row} updates in a row had a NaN/inf loss or gradient (agent.max_nonfinite_in_a_row = {limit}): "
                f"training has diverged (e.g. agent.learning_rate too high). {self._resume_hint()}"
            )

    def _on_consolidation(self, anchors: dict[str, Any]) -> None:
        self.progress.consolidations += 1
        task = anchors["fisher_task"]
        self.writer.add_scalar("ewc/fisher_mean", anchors["fisher_mean"], self.progress.frames)
        self.writer.add_scalar("ewc/anchored_tasks", len(anchors["tasks"]), self.progress.frames)
        self.say(f"consolidated task {task}: mean Fisher {anchors['fisher_mean']:.3g}; penalty now anchors tasks {anchors['tasks']}")

    def _start_eval(self, kind: str) -> None:
        """Snapshot the learner's weights (after its queued updates) and play every game of the schedule."""
        cfg = self.config
        self.evaluator.set_weights.remote(self.learner.weights.remote())
        pending = {
            self.evaluator.evaluate.remote(
                game, self._task_of(game), cfg.eval.episodes, cfg.epsilon.evaluation, cfg.eval.max_episode_frames
            ): game
            for game in self.schedule.games()
        }
        self.eval_round = _EvalRound(kind, self.progress.frames, self.progress.visit_index, pending)

    def _task_of(self, game: str) -> int:
        """The task id whose gains and biases play `game`: the label, or FMN's most frequent id for it."""
        if self.fmn_votes is None:
            return self.task_ids.task_for(game)
        votes = self.fmn_votes.get(game)
        if votes:
            return max(votes, key=votes.get)
        used = {t for row in self.fmn_votes.values() for t in row}
        return min(set(range(self.config.agent.network.max_tasks)) - used, default=0)  # an unseen game: fresh parameters

    def _finish_eval(self, ray) -> None:
        """Wait for the evaluation round in progress, if any, and record it."""
        if self.eval_round is None:
            return
        for ref, game in self.eval_round.pending.items():
            self.eval_round.scores[game] = ray.get(ref)
        self._on_eval(self.eval_round)
        self.eval_round = None

    def _on_eval(self, round_: _EvalRound) -> None:
        frame = round_.frames
        record: dict[str, Any] = {"kind": round_.kind, "frames": frame, "visit_index": round_.visit_index, "games": {}}
        normalized = {}
        for game, values in round_.scores.items():
            mean = sum(values) / len(values)
            normalized[game] = human_normalized(game, mean)
            record["games"][game] = {"score": mean, "human_normalized": normalized[game], "episodes": values}
            self.writer.add_scalar(f"eval/{game}/score", mean, frame)
            if normalized[game] is not None:
                self.writer.add_scalar(f"eval/{game}/human_normalized", normalized[game], frame)
        record["capped_sum"] = capped_sum(normalized)
        self.writer.add_scalar("eval/capped_human_normalized_sum", record["capped_sum"], frame)
        self.eval_file.write(json.dumps(record) + "\n")
        self.eval_file.flush()
        self.last_eval = record
        summary = ", ".join(f"{g} {v['score']:.1f}" for g, v in record["games"].items())
        self.say(f"eval ({round_.kind}) at {frame:,} frames: {summary} (capped normalised sum {record['capped_sum']:.2f})")

    def _log(self) -> None:
        task, game, replay_size = self.task, self.visit.game, self.replay_size
        interval, now = self.interval, time.monotonic()
        seconds = max(now - interval.start, 1e-9)
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        train = {key: mean(values) for key, values in interval.train.items()}
        returns = {g: mean(v) for g, v in interval.returns.items() if v}
        record = {
            "time_s": round(now - self.started, 2),
            "frames": self.progress.frames,
            "env_steps": self.progress.steps,
            "env_steps_per_s": interval.steps / seconds,
            "updates": self.progress.updates_done,
            "updates_per_s": interval.updates / seconds,
            "task": task,
            "game": game,
            "epsilon": self.epsilon.value(task),
            "replay_size": replay_size,
            "episodes": self.progress.episodes,
            "episode_return": returns.get(game),
            "loss": train.get("loss"),
            "td_error": train.get("td_error_abs_mean"),
            "ewc_penalty": train.get("ewc_penalty", 0.0),
            "q_mean": train.get("q_mean"),
            "skipped_nonfinite": sum(interval.train.get("skipped_nonfinite", [])),
            "ewc_grad_ratio": interval.ewc_grad_ratio,
        }
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        step, w = self.progress.frames, self.writer
        for g, value in returns.items():
            w.add_scalar(f"episode_return/{g}", value, step)
            normalized = human_normalized(g, value)
            if normalized is not None:
                w.add_scalar(f"human_normalized/{g}", normalized, step)
        for key in ("loss", "td_error", "ewc_penalty", "q_mean"):
            if record[key] is not None:
                w.add_scalar(f"train/{key}", record[key], step)
        for layer, ratio in (interval.ewc_grad_ratio or {}).items():
            w.add_scalar(f"ewc/grad_ratio/{layer}", ratio, step)
        w.add_scalar("train/epsilon", record["epsilon"], step)
        w.add_scalar("train/task", task, step)
        if self.fmn_votes is not None:
            w.add_scalar("fmn/inferred_task", task, step)
            w.add_scalar("fmn/true_game", list(self.config.games).index(game), step)
        w.add_scalar("replay/fill", replay_size / self.config.agent.replay_capacity, step)
        w.add_scalar("perf/env_steps_per_s", record["env_steps_per_s"], step)
        w.add_scalar("perf/updates_per_s", record["updates_per_s"], step)
        w.flush()
        ret = f"{record['episode_return']:.1f}" if record["episode_return"] is not None else "-"
        loss = f"{record['loss']:.4f}" if record["loss"] is not None else "-"
        self.say(
            f"{game} (task {task}) frames {self.progress.frames:,}/{self.schedule.total_frames:,} | "
            f"{record['env_steps_per_s']:.0f} steps/s | updates {self.progress.updates_done:,} "
            f"({record['updates_per_s']:.1f}/s) | return {ret} | loss {loss} | ewc {record['ewc_penalty']:.3g} | "
            f"eps {record['epsilon']:.2f}"
        )
        self.interval = _Interval()

    def _write_confusion(self, ray) -> None:
        """Frames per true game and inferred task: fmn_confusion.json and a TensorBoard text table."""
        confusion = ray.get(self.learner.fmn_confusion.remote())
        tasks = sorted({t for row in confusion.values() for t in row})
        (self.run_dir / "fmn_confusion.json").write_text(json.dumps(
            {"tasks": tasks, "frames": {g: {str(t): n for t, n in row.items()} for g, row in confusion.items()}}, indent=2))
        header = "| game | " + " | ".join(f"task {t}" for t in tasks) + " |"
        rows = [f"| {g} | " + " | ".join(str(row.get(t, 0)) for t in tasks) + " |" for g, row in confusion.items()]
        table = "\n".join([header, "|---" * (len(tasks) + 1) + "|", *rows])
        self.writer.add_text("fmn/confusion", table, self.progress.frames)
        self.say("forget-me-not confusion (frames per true game x inferred task):\n" + table)

    # ---- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self) -> Path:
        import ray

        cfg = self.config
        state = {
            "config": config_to_dict(cfg),
            "progress": dataclasses.asdict(self.progress),
            "epsilon": self.epsilon.state_dict(),
            "task_ids": self.task_ids.state_dict(),
            "fmn_votes": self.fmn_votes,
            "current_task": self.task,
            "learner": ray.get(self.learner.state_dict.remote(cfg.logging.checkpoint_replay)),
            "consolidation": ray.get(self.consolidator.state_dict.remote()),
        }
        return checkpoint.save(self.run_dir / "checkpoints", state, self.progress.frames, keep=cfg.logging.keep_checkpoints)

    def _restore(self, state: dict) -> None:
        """Continue a run from a checkpoint: counters, schedule position, epsilon timers, learner, anchors."""
        import ray

        self.progress = Progress(**state["progress"])
        self.epsilon.load_state_dict(state["epsilon"])
        self.task_ids.load_state_dict(state["task_ids"])
        if self.fmn_votes is not None:
            self.fmn_votes = {g: {int(t): n for t, n in row.items()} for g, row in (state.get("fmn_votes") or {}).items()}
            self.task = int(state.get("current_task", 0))
        ray.get([self.learner.load_state_dict.remote(state["learner"]),
                 self.consolidator.load_state_dict.remote(state["consolidation"])])
        # The checkpoint's learner state includes updates the driver had not counted yet.
        self.progress.updates_done = self.progress.updates_submitted = state["learner"]["learner"]["num_updates"]
        self.progress.resumes += 1
        for i, actor in enumerate(self.actors):  # fresh exploration streams, not a replay of the first run's
            actor.reseed.remote(self.config.seed, self.progress.resumes)
        visit = self.schedule.visits[self.progress.visit_index]
        where = f"visit {visit.index + 1} ({visit.game})"
        self.say(f"resumed from {self.progress.frames:,} frames, {self.progress.updates_done:,} updates, at {where}")
        if "replay" not in state["learner"]:
            self.say("the replay buffers were not saved with the checkpoint (logging.checkpoint_replay: false): "
                     "refilling them; learning resumes once the current task's buffer holds agent.learning_starts transitions")
