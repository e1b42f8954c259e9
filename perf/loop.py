"""A single-process DQN loop over our own pieces: the yardstick for the distributed trainer.

The CleanRL shape: one process acts with the learner's own network, steps the environment,
stores the transitions, samples a minibatch and takes one update, in turn. It uses the same
env runner (acting, the lost-life rule, evaluation), replay buffer, learner (network,
Double-DQN loss, RMSProp, clipping) and epsilon schedule as `training.loop.Trainer`, so the
difference between the two is the system: actors and learner on separate cores, chunks and
weights through Ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from agents.dqn.actor import EnvRunner
from agents.dqn.learning import Learner
from agents.epsilon import TaskEpsilon
from agents.replay import FrameReplay
from training.config import RunConfig


@dataclass
class LoopResult:
    steps: int
    updates: int
    seconds: float  # wall time of the loop (evaluations included)
    evaluations: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, steps, mean score)
    reached_s: float | None = None  # when an evaluation first reached the threshold

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


class SingleProcessLoop:
    """Collect `update_period` agent steps, store them, sample and update, in turn, on `config.games[0]`."""

    def __init__(self, config: RunConfig, seed: int = 0):
        agent, network = config.agent, config.agent.network
        self.config = config
        self.game = config.games[0]
        self.learner = Learner(agent, seed=seed)
        self.replay = FrameReplay(agent.replay_capacity, network.frame_shape, network.frame_stack, seed=seed,
                                  n_step=agent.n_step, gamma=agent.gamma, compression=agent.replay_compression)
        self.runner = EnvRunner(0, 1, network, config.env, seed=seed, net=self.learner.online)
        self.runner.set_game(self.game, task=0)
        self.epsilon = TaskEpsilon(config.epsilon)
        self.steps = 0

    def step(self) -> None:
        """`update_period` agent steps into the replay, then one update once the replay is ready."""
        agent = self.config.agent
        collected = self.runner.collect(agent.update_period, self.epsilon.value(0))
        for source, chunk in collected.chunks:
            self.replay.add_chunk(chunk, source)
        self.steps += collected.steps
        self.epsilon.advance(0, collected.steps)
        if self.replay.ready(agent.learning_starts, agent.batch_size):
            self.learner.update(self.replay.sample(agent.batch_size), 0, report_penalty=False)

    def evaluate(self, episodes: int) -> float:
        """Mean raw score of `episodes` episodes with the evaluation epsilon (a separate environment)."""
        cfg = self.config
        scores = self.runner.evaluate(self.game, 0, episodes, cfg.epsilon.evaluation, cfg.eval.max_episode_frames)
        return sum(scores) / len(scores)

    def run(self, *, steps: int | None = None, seconds: float | None = None, eval_every: int = 0,
            eval_episodes: int = 5, threshold: float | None = None) -> LoopResult:
        """Run until `steps` steps, `seconds` of wall time, or an evaluation reaching `threshold`."""
        started = time.perf_counter()
        result = LoopResult(steps=0, updates=0, seconds=0.0)
        start_steps, start_updates = self.steps, self.learner.num_updates
        while (steps is None or self.steps - start_steps < steps) and (
                seconds is None or time.perf_counter() - started < seconds):
            before = self.steps
            self.step()
            if eval_every and self.steps // eval_every > before // eval_every:
                score = self.evaluate(eval_episodes)
                elapsed = time.perf_counter() - started
                result.evaluations.append((elapsed, self.steps, score))
                if threshold is not None and score >= threshold:
                    result.reached_s = elapsed
                    break
        result.steps, result.updates = self.steps - start_steps, self.learner.num_updates - start_updates
        result.seconds = time.perf_counter() - started
        return result
