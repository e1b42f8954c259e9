"""A single-process DQN loop over our own pieces: the yardstick for the distributed trainer.

The CleanRL shape: one process acts with the learner's own network, steps the environment,
stores the transition, samples a minibatch and takes one update, in turn. It uses the same
environment, replay buffer, learner (network, Double-DQN loss, RMSProp, clipping) and epsilon
schedule as `training.loop.Trainer`, so the difference between the two is the system: actors
and learner on separate cores, chunks and weights through Ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.dqn.learning import Learner
from agents.epsilon import TaskEpsilon
from agents.replay import FrameReplay, FrameStack
from envs.games import make_env
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
    """Act, step, store, sample, update: one agent step at a time on `config.games[0]`."""

    def __init__(self, config: RunConfig, seed: int = 0):
        agent, network = config.agent, config.agent.network
        self.config = config
        self.game = config.games[0]
        self.learner = Learner(agent, seed=seed)
        self.replay = FrameReplay(agent.replay_capacity, network.frame_shape, network.frame_stack, seed=seed)
        self.env = make_env(self.game, seed=seed, settings=config.env)
        self.stack = FrameStack(network.frame_stack, network.frame_shape)
        self.epsilon = TaskEpsilon(config.epsilon)
        self.rng = np.random.default_rng(seed)
        frame, _ = self.env.reset(seed=seed)
        self.state = self.stack.reset(frame)
        self.replay.start_episode(frame)
        self.steps = 0

    @torch.no_grad()
    def act(self, state: np.ndarray, epsilon: float) -> int:
        if self.rng.random() < epsilon:
            return int(self.rng.integers(0, self.config.agent.network.num_actions))
        return int(self.learner.online(torch.from_numpy(state[None]), 0).argmax(1))

    def step(self) -> None:
        agent, settings = self.config.agent, self.config.env
        action = self.act(self.state, self.epsilon.value(0))
        frame, reward, terminated, truncated, info = self.env.step(action)
        terminal = terminated or (settings.terminal_on_life_loss and info["life_lost"])
        episode_end = terminated or truncated
        self.replay.add(action, reward, terminal, frame, episode_end)
        if episode_end:
            frame, _ = self.env.reset()
            self.state = self.stack.reset(frame)
            self.replay.start_episode(frame)
        else:
            self.state = self.stack.push(frame)
        self.steps += 1
        self.epsilon.advance(0, 1)
        if self.steps % agent.update_period == 0 and self.replay.ready(agent.learning_starts, agent.batch_size):
            self.learner.update(self.replay.sample(agent.batch_size), 0, report_penalty=False)

    def evaluate(self, episodes: int) -> float:
        """Mean raw score of `episodes` episodes with the evaluation epsilon (a separate environment)."""
        cfg = self.config
        env = make_env(self.game, seed=int(self.rng.integers(0, 2**31 - 1)), settings=cfg.env)
        stack, scores = FrameStack(cfg.agent.network.frame_stack, cfg.agent.network.frame_shape), []
        for _ in range(episodes):
            frame, _ = env.reset()
            state, score, done, frames = stack.reset(frame), 0.0, False, 0
            while not done and frames < cfg.eval.max_episode_frames:
                frame, _, terminated, truncated, info = env.step(self.act(state, cfg.epsilon.evaluation))
                score += info["raw_reward"]
                done, frames = terminated or truncated, frames + cfg.env.frame_skip
                state = stack.push(frame)
            scores.append(score)
        return sum(scores) / len(scores)

    def run(self, *, steps: int | None = None, seconds: float | None = None, eval_every: int = 0,
            eval_episodes: int = 5, threshold: float | None = None) -> LoopResult:
        """Run until `steps` steps, `seconds` of wall time, or an evaluation reaching `threshold`."""
        started = time.perf_counter()
        result = LoopResult(steps=0, updates=0, seconds=0.0)
        start_steps, start_updates = self.steps, self.learner.num_updates
        while (steps is None or self.steps - start_steps < steps) and (
                seconds is None or time.perf_counter() - started < seconds):
            self.step()
            if eval_every and self.steps % eval_every == 0:
                score = self.evaluate(eval_episodes)
                elapsed = time.perf_counter() - started
                result.evaluations.append((elapsed, self.steps, score))
                if threshold is not None and score >= threshold:
                    result.reached_s = elapsed
                    break
        result.steps, result.updates = self.steps - start_steps, self.learner.num_updates - start_updates
        result.seconds = time.perf_counter() - started
        return result
