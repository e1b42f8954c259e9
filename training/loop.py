"""The driver: runs a schedule of games on Ray actors and writes everything a user watches.

Env actors play the current game and ship chunks of single frames to the learner actor
(through the object store: the driver only sees episode statistics). The driver keeps the
paper's replay ratio (one update per `agent.update_period` agent steps once a task's buffer
is ready) by submitting slices of updates to the learner and holding actors back when they
run ahead. At each task switch it asks the consolidation actor for the finished task's
Fisher and routes the merged anchors to the learner. Every game of the schedule is
evaluated periodically, so forgetting shows up as curves.

Where the task id comes from is `training.task_ids` (schedule labels or forget-me-not); what
the run writes is `training.records`; extensions plug in through `training.hooks`.
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

import ray
import yaml

from agents.epsilon import TaskEpsilon
from common.errors import RunAborted, UsageError
from envs import scores
from training import checkpoint, records
from training.actors import ConsolidationActor, EnvActor, LearnerActor
from training.config import RunConfig, config_to_dict
from training.hooks import TrainerHook
from training.schedule import Schedule, Visit
from training.task_ids import make_task_ids

MAX_TRAIN_CALLS_IN_FLIGHT = 2  # keeps the learner busy while the driver handles the previous slice
UPDATES_PER_SLICE = 16
NEVER = 2**62  # a frame count no run reaches
LEARNER_NODE, ENV_NODE = "learner_node", "env_node"  # custom resources of the node types in deploy/
NODE_SHARE = 0.001  # what an actor asks of such a resource: any number of actors fit on one node
ACTOR_START_TIMEOUT_S = 300  # actors not placed by then will not be: say so rather than wait forever


@dataclass
class Counters:
    """The driver's counters; saved in checkpoints so a resumed run continues them."""

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
    steps_per_actor: dict[int, int] = field(default_factory=dict)  # a dead actor that never came back shows here
    lost_chunks: int = 0  # chunks lost with env actors that died
    resumes: int = 0


@dataclass
class Interval:
    """What happened since the last log line."""

    start: float = field(default_factory=time.monotonic)
    steps: int = 0
    updates: int = 0
    returns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    train: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ewc_grad_ratio: dict[str, float] | None = None  # the latest per-layer EWC / TD gradient norms


@dataclass
class PendingEval:
    """An evaluation round in progress: every game on one snapshot of the weights."""

    kind: str  # "initial", "periodic", "visit_end" or "final" (see records.EvalRound)
    frames: int
    visit_index: int
    pending: dict[Any, str]  # ref -> game
    scores: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class InFlight:
    """Calls to the actors whose results the driver has not handled yet."""

    collects: dict[Any, tuple[int, Any]] = field(default_factory=dict)  # stats ref -> (actor index, add ref)
    adds: dict[Any, int] = field(default_factory=dict)  # learner.add ref -> agent steps in it
    trains: list[Any] = field(default_factory=list)
    consolidations: list[Any] = field(default_factory=list)
    eval_round: PendingEval | None = None
    idle: set[int] = field(default_factory=set)  # env actors with no chunk to play

    def refs(self) -> list[Any]:
        evals = self.eval_round.pending if self.eval_round else {}
        return [*self.collects, *self.adds, *self.trains, *evals, *self.consolidations]


def learner_device(requested: str, cluster_has_gpu: bool) -> str:
    """The learner's device for the config's `device` ("auto", "cpu" or "cuda") on a cluster with or without a GPU."""
    return {"auto": "cuda" if cluster_has_gpu else "cpu", "cpu": "cpu", "cuda": "cuda"}[requested]


def in_placement_group() -> bool:
    from ray.util import get_current_placement_group

    return get_current_placement_group() is not None


class Trainer:
    """One continual training run (`run()`); its state is the dataclasses above plus the fields below."""

    def __init__(self, config: RunConfig, run_dir: Path, *, quiet: bool = False, hooks: list[TrainerHook] = ()):
        self.config = config
        self.run_dir = run_dir
        self.quiet = quiet
        self.hooks = list(hooks)
        self.schedule = Schedule(config.games, config.schedule)
        self.task_ids = make_task_ids(config.task_inference, [v.game for v in self.schedule.visits],
                                      config.agent.network.max_tasks)
        self.epsilon = TaskEpsilon(config.epsilon)
        self.counters = Counters(next_eval_frame=0 if config.eval.every_frames else NEVER)
        self.interval = Interval()
        self.inflight = InFlight()
        self.started = time.monotonic()
        # The position in the schedule, and what the learner last said about the task's buffer.
        self.visit: Visit = self.schedule.visits[0]
        self.task = 0  # the task the agent trains now: the schedule's label, or forget-me-not's inferred id
        self.replay_size = 0
        self.replay_ready = False
        self.last_eval: records.EvalRound | None = None
        # Set by `run`: the actors, the latest weights' object ref, the outputs.
        self.learner = self.consolidator = self.evaluator = self.weights = None
        self.actors: list = []
        self.device = "cpu"
        self.writer = self.metrics_file = self.eval_file = None

    # ---- output ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.config.run_name}] {message}", file=sys.stderr, flush=True)

    def _open_outputs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / records.CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        self.writer = SummaryWriter(str(self.run_dir / records.TENSORBOARD_DIR))
        self.metrics_file = open(self.run_dir / records.METRICS_FILE, "a")
        self.eval_file = open(self.run_dir / records.EVAL_FILE, "a")

    def _close_outputs(self) -> None:
        for output in (self.writer, self.metrics_file, self.eval_file):
            if output is not None:
                output.close()

    # ---- Ray set-up -----------------------------------------------------------------------

    def _start_actors(self) -> None:
        cfg = self.config
        resources = ray.cluster_resources()
        has_gpu = resources.get("GPU", 0) >= 1
        device = learner_device(cfg.device, has_gpu)
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
        # Node types made for a role (deploy/: custom resources `learner_node`, `env_node`) get it.
        learner_node = {LEARNER_NODE: NODE_SHARE} if resources.get(LEARNER_NODE) else {}
        env_node = {ENV_NODE: NODE_SHARE} if resources.get(ENV_NODE) else {}
        self.learner = LearnerActor.options(
            num_cpus=cfg.actors.learner_cpus, num_gpus=1 if device == "cuda" else 0, resources=learner_node
        ).remote(cfg, device, cfg.actors.learner_threads)
        self.consolidator = ConsolidationActor.options(num_cpus=0).remote(cfg, "cpu")
        # Spread over nodes when asked; otherwise Ray's default, which inside a placement group (a sweep's
        # trial) keeps the actors in it: naming "DEFAULT" explicitly would take them out.
        spread = {"scheduling_strategy": "SPREAD"} if cfg.actors.placement == "spread" and not in_placement_group() else {}
        self.actors = [
            EnvActor.options(num_cpus=cfg.actors.cpus_per_actor, resources=env_node, **spread).remote(
                i, cfg.actors.envs_per_actor, cfg.agent.network, cfg.env, seed=cfg.seed
            )
            for i in range(cfg.actors.num_env_actors)
        ]
        # Evaluation runs rarely and must not take a core from the actors: no CPU reserved.
        self.evaluator = EnvActor.options(num_cpus=0).remote(len(self.actors), 1, cfg.agent.network, cfg.env, seed=cfg.seed)
        where = {
            "learner": self.learner.where.remote(),
            "evaluator": self.evaluator.where.remote(),
            "consolidation": self.consolidator.where.remote(),
            **{f"env_actor_{i}": a.where.remote() for i, a in enumerate(self.actors)},
        }
        try:
            placement = dict(zip(where, ray.get(list(where.values()), timeout=ACTOR_START_TIMEOUT_S)))
        except ray.exceptions.GetTimeoutError:
            raise RunAborted(
                f"the actors were not all placed within {ACTOR_START_TIMEOUT_S} s: the cluster lacks the CPUs, GPU or "
                f"custom resources they ask for (available now: {ray.available_resources()})"
            ) from None
        (self.run_dir / records.ACTORS_FILE).write_text(json.dumps(placement, indent=2))
        nodes = len({p["node_id"] for p in placement.values()})
        self.say(f"actors started on {nodes} node(s); learner on {device}")

    # ---- the loop -------------------------------------------------------------------------

    def run(self, resume_state: dict | None = None) -> dict[str, Any]:
        self._open_outputs()
        try:
            self._start_actors()
            if resume_state is not None:
                self._restore(resume_state)
            for hook in self.hooks:
                hook.after_start(self)
            return self._loop()
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
        files = checkpoint.list_checkpoints(self.run_dir / records.CHECKPOINT_DIR)
        if not files:
            return "no checkpoint was written yet"
        return f"last good checkpoint: {files[-1]}; continue with: python run.py train --resume {self.run_dir}"

    def _loop(self) -> dict[str, Any]:
        cfg, counters, inflight = self.config, self.counters, self.inflight
        self.weights = self.learner.weights.remote()
        self.visit = self.schedule.visits[counters.visit_index]
        self.task = self.task_ids.visit_task(self.visit.game, self.task)
        self._send_game_and_weights(range(len(self.actors)))
        self.say(f"visit {self.visit.index + 1}/{len(self.schedule.visits)}: {self.visit.game} (task {self.task})")
        if cfg.eval.every_frames and counters.frames == 0:
            self._start_eval("initial")  # the untrained network's scores: the baseline of forward transfer
            counters.next_eval_frame = cfg.eval.every_frames

        inflight.idle = set(range(len(self.actors)))
        last_sync = counters.updates_done
        last_log = last_checkpoint = time.monotonic()
        switching = False
        stop_reason: str | None = None

        while True:
            stop_reason = stop_reason or next(filter(None, (hook.should_stop(self) for hook in self.hooks)), None)
            # Every chunk of the visit is stored and every update it is owed has been sent, so the
            # finished task gets them all, before its Fisher is taken and under its own task id.
            drained = not inflight.collects and not inflight.adds and self._owed_updates() == 0
            if stop_reason and drained:
                self.say(f"{stop_reason}: stopping")
                break
            next_visit = self._next_visit()
            switching = switching or next_visit is not self.visit
            if switching and drained:
                self._end_visit(next_visit)
                if next_visit is None:
                    break
                self._begin_visit(next_visit)
                switching = False
                last_checkpoint = time.monotonic()

            if not (switching or stop_reason):
                self._launch_collects()
            self._launch_trains()
            pending = inflight.refs()
            ready, _ = ray.wait(pending, num_returns=1, timeout=0.5) if pending else ([], [])
            for ref in ready:
                self._handle(ref)

            if counters.updates_done - last_sync >= cfg.actors.weight_sync_updates:
                self.weights = self.learner.weights.remote()
                for actor in self.actors:
                    actor.set_weights.remote(self.weights)
                last_sync = counters.updates_done
            if counters.frames >= counters.next_eval_frame and inflight.eval_round is None and not switching:
                self._start_eval("periodic")
                counters.next_eval_frame = counters.frames + cfg.eval.every_frames
            now = time.monotonic()
            if now - last_log >= cfg.logging.log_every_s:
                self._log()
                last_log = now
            if now - last_checkpoint >= cfg.logging.checkpoint_every_s:
                self._checkpoint()
                last_checkpoint = now

        for ref in inflight.trains:
            self._on_train(ray.get(ref))
        for ref in inflight.consolidations:
            self._on_consolidation(ray.get(ref))
        self._finish_eval()
        if cfg.eval.every_frames and not cfg.eval.at_visit_end:  # the last visit_end round already scored these weights
            self._start_eval("final")
            self._finish_eval()
        self._log()
        path = self._checkpoint()
        self.task_ids.finish(ray.get(self.learner.fmn_confusion.remote()), self.run_dir,
                             lambda tag, text: self.writer.add_text(tag, text, counters.frames), self.say)
        elapsed = time.monotonic() - self.started
        summary = {
            "run_dir": str(self.run_dir),
            "completed": stop_reason is None,
            "checkpoint": str(path),
            "frames": counters.frames,
            "env_steps": counters.steps,
            "updates": counters.updates_done,
            "wall_s": round(elapsed, 1),
            "env_steps_per_s": counters.steps / max(elapsed, 1e-9),
            "consolidations": counters.consolidations,
            "frames_per_task": counters.frames_per_task,
            "updates_per_task": ray.get(self.learner.updates_per_task.remote()),
            "steps_per_actor": counters.steps_per_actor,
            "lost_chunks": counters.lost_chunks,
            "resumes": counters.resumes,
            "final_eval": self.last_eval.to_json() if self.last_eval else None,
        }
        (self.run_dir / records.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        self.say(f"done: {counters.frames:,} frames, {counters.updates_done:,} updates in {summary['wall_s']} s")
        return summary

    # ---- steps of the loop ----------------------------------------------------------------

    def _next_visit(self) -> Visit | None:
        """The current visit until it has played `frames_per_visit` frames, then the next (None at the end)."""
        played = self.counters.frames - self.counters.visit_start_frame
        if played < self.config.schedule.frames_per_visit:
            return self.visit
        following = self.visit.index + 1
        return self.schedule.visits[following] if following < len(self.schedule.visits) else None

    def _owed_updates(self) -> int:
        """Updates the replay ratio asks for that have not been sent to the learner yet."""
        return self.counters.trainable_steps // self.config.agent.update_period - self.counters.updates_submitted

    def _send_game_and_weights(self, actor_indices) -> None:
        for i in actor_indices:
            self.actors[i].set_weights.remote(self.weights)
            self.actors[i].set_game.remote(self.visit.game, self.task)

    def _end_visit(self, next_visit: Visit | None) -> None:
        """Score the visit's final weights; consolidate its task if the agent is told about switches."""
        cfg = self.config
        if cfg.eval.at_visit_end:
            self._finish_eval()
            self._start_eval("visit_end")
            if cfg.eval.every_frames:  # this round also serves as the periodic one due about now
                self.counters.next_eval_frame = max(self.counters.next_eval_frame,
                                                    self.counters.frames + cfg.eval.every_frames)
        if next_visit is None:
            self._switch_task(None)
        elif self.task_ids.told_at_switches:
            self._switch_task(self.task_ids.visit_task(next_visit.game, self.task))
        # otherwise the agent is not told: it switches when the learner's task inference reports a new id

    def _switch_task(self, new_task: int | None) -> None:
        """Consolidate the finished task (off the learner, on the consolidation actor) and train `new_task` next."""
        for hook in self.hooks:
            hook.at_task_switch(self, self.task, new_task)
        if self.config.agent.ewc_enabled and self.replay_size >= self.config.agent.batch_size:
            inputs = self.learner.consolidation_inputs.remote(self.task)
            upcoming = -1 if new_task is None else new_task
            anchors = self.consolidator.consolidate.remote(inputs, upcoming, dict(self.counters.frames_per_task))
            self.learner.set_anchors.remote(anchors)
            self.inflight.consolidations.append(anchors)
        if new_task is not None and new_task != self.task:
            self.task, self.replay_size, self.replay_ready = new_task, 0, False

    def _begin_visit(self, visit: Visit) -> None:
        self.visit = visit
        for actor in self.actors:
            actor.set_game.remote(visit.game, self.task)
        self.counters.visit_index = visit.index
        self.counters.visit_start_frame = self.counters.frames
        self.say(f"visit {visit.index + 1}/{len(self.schedule.visits)}: {visit.game} (task {self.task})")
        self._checkpoint()

    def _launch_collects(self) -> None:
        """Give idle actors a chunk to play, unless they would run ahead of the learner's replay ratio."""
        cfg, inflight = self.config, self.inflight
        steps_per_collect = cfg.actors.chunk_steps * cfg.actors.envs_per_actor
        max_lag = 2 * steps_per_collect * cfg.actors.num_env_actors
        # On their way to the replay: chunks being played *and* chunks whose add has not returned yet (adds
        # queue behind train slices on the learner); leaving the latter out let actors run far ahead.
        in_flight = sum(inflight.adds.values())
        lag = self.counters.trainable_steps - self.counters.updates_done * cfg.agent.update_period
        for i in sorted(inflight.idle):
            if self.replay_ready and lag + in_flight >= max_lag:
                break
            stats_ref, chunks_ref = self.actors[i].collect_split.remote(
                cfg.actors.chunk_steps, self.epsilon.value(self.task), self.visit.game, self.task
            )
            add_ref = self.learner.add.remote(self.task, chunks_ref, self.visit.game)  # actor -> learner directly
            inflight.collects[stats_ref] = (i, add_ref)
            inflight.adds[add_ref] = steps_per_collect
            in_flight += steps_per_collect
            inflight.idle.discard(i)

    def _launch_trains(self) -> None:
        """Keep the learner busy with slices of updates, one per `update_period` trainable agent steps."""
        while len(self.inflight.trains) < MAX_TRAIN_CALLS_IN_FLIGHT and self._owed_updates() > 0:
            n = min(UPDATES_PER_SLICE, self._owed_updates())
            self.inflight.trains.append(self.learner.train.remote(self.task, n))
            self.counters.updates_submitted += n

    def _handle(self, ref) -> None:
        inflight = self.inflight
        if ref in inflight.collects:
            i, add_ref = inflight.collects.pop(ref)
            inflight.idle.add(i)
            self._on_collect(ref, i, add_ref)
        elif ref in inflight.adds:
            self._on_add(ray.get(ref), inflight.adds.pop(ref))
        elif ref in inflight.trains:
            inflight.trains.remove(ref)
            self._on_train(ray.get(ref))
        elif inflight.eval_round and ref in inflight.eval_round.pending:
            game = inflight.eval_round.pending.pop(ref)
            try:
                inflight.eval_round.scores[game] = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.say(f"the evaluator died while playing {game}; this evaluation round is dropped")
                inflight.eval_round = None
                return
            if not inflight.eval_round.pending:
                self._on_eval(inflight.eval_round)
                inflight.eval_round = None
        else:
            inflight.consolidations.remove(ref)
            self._on_consolidation(ray.get(ref))

    # ---- event handlers -------------------------------------------------------------------

    def _on_collect(self, ref, actor_index: int, add_ref) -> None:
        counters = self.counters
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            # The actor died mid-chunk. Ray restarts it (max_restarts); the chunk it was playing is lost
            # (and so is the learner's add of it), nothing else: give the new actor the game and weights.
            self.inflight.adds.pop(add_ref, None)
            counters.lost_chunks += 1
            self.say(f"env actor {actor_index} died ({type(err).__name__}); its in-flight chunk is lost "
                     f"({counters.lost_chunks} so far); Ray restarts it")
            self.writer.add_scalar("faults/lost_chunks", counters.lost_chunks, counters.frames)
            self._send_game_and_weights([actor_index])
            return
        if result.fresh_actor:  # Ray restarted this actor between two chunks: it plays with initial weights
            self.say(f"env actor {actor_index} was restarted by Ray; sending it the current weights")
            self.actors[actor_index].set_weights.remote(self.weights)
        counters.steps += result.steps
        counters.steps_per_actor[actor_index] = counters.steps_per_actor.get(actor_index, 0) + result.steps
        counters.frames += result.steps * self.config.env.frame_skip
        counters.episodes += len(result.episode_returns)
        self.epsilon.advance(result.task, result.steps)
        self.interval.steps += result.steps
        self.interval.returns[result.game].extend(result.episode_returns)
        for hook in self.hooks:
            hook.after_collect(self, result)

    def _on_add(self, added: dict[str, Any], steps: int) -> None:
        """The learner stored a collect's chunks under `added["task"]` (its inferred id with forget-me-not)."""
        counters, task = self.counters, added["task"]
        counters.frames_per_task[task] = counters.frames_per_task.get(task, 0) + steps * self.config.env.frame_skip
        self.task_ids.note_added(self.visit.game, task, added["transitions"])
        if task != self.task:  # only task inference reports another id: the frames say the game changed
            self.say(f"forget-me-not: task {self.task} -> {task} (true game {self.visit.game})")
            self.writer.add_scalar("fmn/switches", 1, counters.frames)
            self._switch_task(task)
        self.replay_size, self.replay_ready = added["replay_size"], added["ready"]
        if self.replay_ready:
            counters.trainable_steps += added["transitions"]
            per_task = counters.trainable_steps_per_task
            per_task[task] = per_task.get(task, 0) + added["transitions"]

    def _on_train(self, metrics: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.after_train(self, metrics)
        done = int(metrics.pop("updates")) - self.counters.updates_done
        self.counters.updates_done += done
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
        self.counters.consolidations += 1
        task, frames = anchors["fisher_task"], self.counters.frames
        self.writer.add_scalar("ewc/fisher_mean", anchors["fisher_mean"], frames)
        self.writer.add_scalar("ewc/anchored_tasks", len(anchors["tasks"]), frames)
        self.say(f"consolidated task {task}: mean Fisher {anchors['fisher_mean']:.3g}; penalty now anchors tasks {anchors['tasks']}")

    def _start_eval(self, kind: str) -> None:
        """Snapshot the learner's weights (after its queued updates) and play every game of the schedule."""
        cfg = self.config
        self.evaluator.set_weights.remote(self.learner.weights.remote())
        pending = {
            self.evaluator.evaluate.remote(
                game, self.task_ids.eval_task(game), cfg.eval.episodes, cfg.epsilon.evaluation, cfg.eval.max_episode_frames
            ): game
            for game in self.schedule.games()
        }
        self.inflight.eval_round = PendingEval(kind, self.counters.frames, self.counters.visit_index, pending)

    def _finish_eval(self) -> None:
        """Wait for the evaluation round in progress, if any, and record it."""
        round_ = self.inflight.eval_round
        if round_ is None:
            return
        for ref, game in round_.pending.items():
            round_.scores[game] = ray.get(ref)
        self._on_eval(round_)
        self.inflight.eval_round = None

    def _on_eval(self, pending: PendingEval) -> None:
        frame = pending.frames
        means = {game: sum(values) / len(values) for game, values in pending.scores.items()}
        normalized = {game: scores.normalized(game, score) for game, score in means.items()}
        evaluation = records.EvalRound(pending.kind, frame, pending.visit_index, means, normalized,
                                       scores.capped_sum(normalized), episodes=pending.scores)
        for game, score in means.items():
            self.writer.add_scalar(f"eval/{game}/score", score, frame)
            if normalized[game] is not None:
                self.writer.add_scalar(f"eval/{game}/normalized", normalized[game], frame)
        self.writer.add_scalar("eval/capped_normalized_sum", evaluation.capped_sum, frame)
        self.eval_file.write(json.dumps(evaluation.to_json()) + "\n")
        self.eval_file.flush()
        self.last_eval = evaluation
        for hook in self.hooks:
            hook.after_eval(self, evaluation)
        summary = ", ".join(f"{g} {v:.1f}" for g, v in means.items())
        self.say(f"eval ({pending.kind}) at {frame:,} frames: {summary} "
                 f"(capped normalised sum {evaluation.capped_sum:.2f})")

    def _log(self) -> None:
        task, game = self.task, self.visit.game
        interval, now = self.interval, time.monotonic()
        seconds = max(now - interval.start, 1e-9)
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        train = {key: mean(values) for key, values in interval.train.items()}
        returns = {g: mean(v) for g, v in interval.returns.items() if v}
        line = records.MetricsLine(
            time_s=round(now - self.started, 2),
            frames=self.counters.frames,
            env_steps=self.counters.steps,
            env_steps_per_s=interval.steps / seconds,
            updates=self.counters.updates_done,
            updates_per_s=interval.updates / seconds,
            task=task,
            game=game,
            epsilon=self.epsilon.value(task),
            replay_size=self.replay_size,
            episodes=self.counters.episodes,
            episode_return=returns.get(game),
            loss=train.get("loss"),
            td_error=train.get("td_error_abs_mean"),
            ewc_penalty=train.get("ewc_penalty", 0.0),
            q_mean=train.get("q_mean"),
            skipped_nonfinite=sum(interval.train.get("skipped_nonfinite", [])),
            ewc_grad_ratio=interval.ewc_grad_ratio,
        )
        self.metrics_file.write(json.dumps(line.to_json()) + "\n")
        self.metrics_file.flush()
        step, w = self.counters.frames, self.writer
        for g, value in returns.items():
            w.add_scalar(f"episode_return/{g}", value, step)
            normalized = scores.normalized(g, value)
            if normalized is not None:
                w.add_scalar(f"normalized/{g}", normalized, step)
        for key in ("loss", "td_error", "ewc_penalty", "q_mean"):
            if getattr(line, key) is not None:
                w.add_scalar(f"train/{key}", getattr(line, key), step)
        for layer, ratio in (line.ewc_grad_ratio or {}).items():
            w.add_scalar(f"ewc/grad_ratio/{layer}", ratio, step)
        w.add_scalar("train/epsilon", line.epsilon, step)
        w.add_scalar("train/task", task, step)
        for tag, value in self.task_ids.scalars(task, game).items():
            w.add_scalar(tag, value, step)
        w.add_scalar("replay/fill", line.replay_size / self.config.agent.replay_capacity, step)
        w.add_scalar("perf/env_steps_per_s", line.env_steps_per_s, step)
        w.add_scalar("perf/updates_per_s", line.updates_per_s, step)
        w.flush()
        ret = f"{line.episode_return:.1f}" if line.episode_return is not None else "-"
        loss = f"{line.loss:.4f}" if line.loss is not None else "-"
        self.say(
            f"{game} (task {task}) frames {self.counters.frames:,}/{self.schedule.total_frames:,} | "
            f"{line.env_steps_per_s:.0f} steps/s | updates {self.counters.updates_done:,} "
            f"({line.updates_per_s:.1f}/s) | return {ret} | loss {loss} | ewc {line.ewc_penalty:.3g} | "
            f"eps {line.epsilon:.2f}"
        )
        self.interval = Interval()

    # ---- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self) -> Path:
        cfg = self.config
        state = checkpoint.make_state(
            config=config_to_dict(cfg),
            counters=dataclasses.asdict(self.counters),
            epsilon=self.epsilon.state_dict(),
            task_ids=self.task_ids.state_dict(),
            current_task=self.task,
            learner=ray.get(self.learner.state_dict.remote(cfg.logging.checkpoint_replay)),
            consolidation=ray.get(self.consolidator.state_dict.remote()),
        )
        return checkpoint.save(self.run_dir / records.CHECKPOINT_DIR, state, self.counters.frames,
                               keep=cfg.logging.keep_checkpoints)

    def _restore(self, state: dict) -> None:
        """Continue a run from a checkpoint: counters, schedule position, epsilon timers, learner, anchors."""
        self.counters = Counters(**state["counters"])
        self.epsilon.load_state_dict(state["epsilon"])
        self.task_ids.load_state_dict(state["task_ids"])
        self.task = int(state["current_task"])
        ray.get([self.learner.load_state_dict.remote(state["learner"]),
                 self.consolidator.load_state_dict.remote(state["consolidation"])])
        # The checkpoint's learner state includes updates the driver had not counted yet; updates that were
        # owed but not taken are dropped with the transitions they would have sampled (the replay is refilled).
        self.counters.updates_done = self.counters.updates_submitted = checkpoint.num_updates(state)
        self.counters.trainable_steps = self.counters.updates_done * self.config.agent.update_period
        self.counters.resumes += 1
        for actor in self.actors:  # fresh exploration streams, not a replay of the first run's
            actor.reseed.remote(self.config.seed, self.counters.resumes)
        visit = self.schedule.visits[self.counters.visit_index]
        self.say(f"resumed from {self.counters.frames:,} frames, {self.counters.updates_done:,} updates, "
                 f"at visit {visit.index + 1} ({visit.game})")
        if not checkpoint.has_replay(state):
            self.say("the replay buffers were not saved with the checkpoint (logging.checkpoint_replay: false): "
                     "refilling them; learning resumes once the current task's buffer holds agent.learning_starts transitions")
