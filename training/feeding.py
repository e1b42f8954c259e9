"""The data path: env actors play chunks that go straight into the learner's replay, and the learner
trains slices of updates at the replay ratio (`Pacing`).

`Feeder` launches those calls, keeps what is in flight, and hands what comes back to the trainer's
handlers. An env actor that dies mid-chunk loses that chunk only: Ray restarts it, and it is
given the game and the weights again.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import ray

from agents.dqn.actor import CollectResult
from training.placement import Actors
from training.progress import RunProgress
from training.run_writer import RunWriter
from training.services import AddResult, TrainResult

MAX_TRAIN_CALLS_IN_FLIGHT = 2  # keeps the learner busy while the driver handles the previous slice
UPDATES_PER_SLICE = 16


class Feeder:
    def __init__(self, actors: Actors, progress: RunProgress, writer: RunWriter, *,
                 on_collect: Callable[[CollectResult, int], None], on_add: Callable[[AddResult, int], None],
                 on_train: Callable[[TrainResult], None]):
        self.actors, self.progress, self.writer = actors, progress, writer
        self.on_collect, self.on_add, self.on_train = on_collect, on_add, on_train
        self.collects: dict[Any, tuple[int, Any]] = {}  # stats ref -> (actor index, add ref)
        self.adds: dict[Any, int] = {}  # learner.add ref -> agent steps in it
        self.trains: list[Any] = []
        self.idle: set[int] = set(range(len(actors.env)))  # env actors with no chunk to play
        self.weights = None  # the latest weights' object ref

    def refs(self) -> list[Any]:
        return [*self.collects, *self.adds, *self.trains]

    def drained(self) -> bool:
        """Every chunk played is stored and every update it is owed has been sent."""
        return not self.collects and not self.adds and self.progress.pacing.owed_updates() == 0

    def sync_weights(self, actor_indices: Iterable[int] | None = None, *, send_game: bool = False) -> None:
        progress = self.progress
        self.weights = self.actors.learner.weights.remote()
        for i in range(len(self.actors.env)) if actor_indices is None else actor_indices:
            self.actors.env[i].set_weights.remote(self.weights)
            if send_game:
                self.actors.env[i].set_game.remote(progress.visit.game, progress.task)

    def set_game(self) -> None:
        for actor in self.actors.env:
            actor.set_game.remote(self.progress.visit.game, self.progress.task)

    def launch(self, *, collect: bool) -> None:
        if collect:
            self._launch_collects()
        self._send_updates(max_in_flight=MAX_TRAIN_CALLS_IN_FLIGHT)

    def send_owed_updates(self) -> None:
        """Send every update owed so far for the task being trained, whatever is in flight: before a switch that
        forget-me-not reports mid-visit, so the finished task gets them all (its buffer was ready when its steps
        earned them) and none is asked of the next task, whose buffer may not be ready yet."""
        self._send_updates(max_in_flight=None)

    def _send_updates(self, max_in_flight: int | None) -> None:
        """Slices of the owed updates for the task being trained, until none is owed or `max_in_flight` are out."""
        pacing, trains = self.progress.pacing, self.trains
        while (max_in_flight is None or len(trains) < max_in_flight) and (n := pacing.next_slice(UPDATES_PER_SLICE)):
            trains.append(self.actors.learner.train.remote(self.progress.task, n))

    def _launch_collects(self) -> None:
        """Give idle actors a chunk to play, unless they would run ahead of the learner's replay ratio."""
        progress, config = self.progress, self.progress.config
        steps_per_collect = config.actors.chunk_steps * config.actors.envs_per_actor
        task, game = progress.task, progress.visit.game
        label = task if progress.task_ids.told_at_switches else None  # forget-me-not: the learner is told nothing
        for i in sorted(self.idle):
            if not progress.pacing.may_collect(progress.replay_ready):
                break
            stats_ref, chunks_ref = self.actors.env[i].collect_split.remote(
                config.actors.chunk_steps, progress.epsilon.value(task), game, task)
            add_ref = self.actors.learner.add.remote(label, chunks_ref)  # actor -> learner directly
            self.collects[stats_ref] = (i, add_ref)
            self.adds[add_ref] = steps_per_collect
            progress.pacing.collect_started(steps_per_collect)
            self.idle.discard(i)

    def handle(self, ref) -> bool:
        """Hand `ref`'s result to its handler; False if it is not one of the feeder's calls."""
        if ref in self.collects:
            i, add_ref = self.collects.pop(ref)
            self.idle.add(i)
            self._collected(ref, i, add_ref)
        elif ref in self.adds:
            steps = self.adds.pop(ref)
            try:
                added = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                if not isinstance(err.cause, ray.exceptions.RayActorError):
                    raise
                # The env actor died before its chunk reached the learner; the add can come back before
                # the collect does. The chunk is lost: the collect's own failure reports it.
                self.progress.pacing.collect_lost(steps)
                return True
            self.on_add(added, steps)
        elif ref in self.trains:
            self.trains.remove(ref)
            self.on_train(ray.get(ref))
        else:
            return False
        return True

    def finish_trains(self) -> None:
        while self.trains:
            self.on_train(ray.get(self.trains.pop(0)))

    def _collected(self, ref, actor_index: int, add_ref) -> None:
        counters = self.progress.counters
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            # The actor died mid-chunk. Ray restarts it (max_restarts); the chunk it was playing is lost
            # (and so is the learner's add of it), nothing else: give the new actor the game and weights.
            self.progress.pacing.collect_lost(self.adds.pop(add_ref, 0))
            counters.lost_chunks += 1
            self.writer.say(f"env actor {actor_index} died ({type(err).__name__}); its in-flight chunk is lost "
                            f"({counters.lost_chunks} so far); Ray restarts it")
            self.writer.scalar("faults/lost_chunks", counters.lost_chunks, counters.frames)
            self.sync_weights([actor_index], send_game=True)
            return
        if result.fresh_actor:  # Ray restarted this actor between two chunks: it plays with initial weights
            self.writer.say(f"env actor {actor_index} was restarted by Ray; sending it the current weights")
            self.actors.env[actor_index].set_weights.remote(self.weights)
        self.on_collect(result, actor_index)
